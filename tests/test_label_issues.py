"""Suspected label errors: planted flipped labels found by confident learning on out-of-sample probabilities (copies
kept in one fold), the files written, the refusals, the training images an evaluation run leaves out, and the
scripts that write them (fine_tune.py's k-fold, an evaluation run)."""
import csv
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_colour_images, report_in, run_script
from vlmcls.cli import UserError
from vlmcls.images import pixel_hash
from vlmcls.label_issues import ISSUE_HEADER, SHEET_COUNT, TRAINING_IMAGES, check_folds, contact_sheet, fold_groups, \
    hash_training_images, label_issues_of_run, out_of_sample_probabilities, ranked_issues, training_hashes, \
    write_label_issues
from vlmcls.report import PREDICTION_HEADER

CLASSES = ["a", "b", "c"]


def planted(seed=0, per_class=40, dims=200, spread=0.45, flips=12):
    """Features of three separable classes (more dimensions than images: a classifier fitted on every image can
    memorise any labelling), and labels with `flips` (10%) moved to another class. Returns (features, given labels,
    the flipped indices)."""
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(len(CLASSES)), per_class)
    features = rng.normal(0, spread, (len(CLASSES), dims))[true] + rng.normal(0, 1, (len(true), dims))
    flipped = rng.choice(len(true), flips, replace=False)
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, len(CLASSES), flips)) % len(CLASSES)
    return features, [CLASSES[i] for i in given], set(flipped.tolist())


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def recall_precision(found, flipped):
    hits = len(found & flipped)
    return hits / len(flipped), hits / len(found) if found else 0.0


def test_planted_flipped_labels_are_found_and_correct_labels_mostly_not():
    features, given, flipped = planted()
    probs = out_of_sample_probabilities(features, given, CLASSES, folds=5, seed=0)
    issues = ranked_issues(given, probs, CLASSES)
    found = {i for i, _ in issues}
    recall, precision = recall_precision(found, flipped)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)
    assert len(found - flipped) <= 0.05 * (len(given) - len(flipped))  # correct labels flagged
    qualities = [q for _, q in issues]
    assert qualities == sorted(qualities)  # worst first: the given class's probability rises down the list
    assert all(q == pytest.approx(probs[i][CLASSES.index(given[i])]) for i, q in issues)


def test_the_probabilities_must_be_out_of_sample():
    """The premise of the k-fold: a classifier that trained on an image agrees with its label, flipped or not."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    features, given, flipped = planted()
    seen = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(features, given)
    in_sample = {i for i, _ in ranked_issues(given, seen.predict_proba(features).tolist(), CLASSES)}
    assert recall_precision(in_sample, flipped)[0] <= 0.2


def test_copies_stay_in_one_fold_so_their_shared_wrong_label_is_found():
    """Every image has a near copy with the same label, flipped ones too (a duplicate filed in the same wrong
    folder). A k-fold blind to copies trains on the twin of each held-out image, memorises its wrong label and finds
    few of the flips (recall 0.17 here; 0.08 with the StratifiedKFold used before); with the copies in one group,
    nearly all (0.96)."""
    features, given, flipped = planted()
    n = len(given)
    twins = np.concatenate([features, features + np.random.default_rng(1).normal(0, 0.05, features.shape)])
    both = flipped | {i + n for i in flipped}
    found = {}
    for name, groups in (("grouped", list(range(n)) * 2), ("ungrouped", None)):
        probs = out_of_sample_probabilities(twins, given * 2, CLASSES, folds=5, seed=0, groups=groups)
        found[name] = recall_precision({i for i, _ in ranked_issues(given * 2, probs, CLASSES)}, both)
    assert found["grouped"][0] >= 0.9 and found["grouped"][1] >= 0.8, found
    assert found["ungrouped"][0] <= 0.3, found


def test_out_of_sample_probabilities_are_rows_in_class_order():
    features, given, _ = planted(per_class=10, flips=3)
    probs = np.array(out_of_sample_probabilities(features, given, CLASSES + ["unseen"], folds=3, seed=1))
    assert probs.shape == (30, 4) and np.allclose(probs.sum(1), 1) and not probs[:, 3].any()
    assert probs.argmax(1).tolist().count(0) >= 7  # the first ten images are class a's (bar the flips)


def test_check_folds_refuses_what_a_k_fold_cannot_do():
    labels = ["a"] * 5 + ["b"] * 3
    check_folds(labels, ["a", "b"], 3)
    with pytest.raises(UserError, match=r"class 'b' has only 3 training image\(s\).*at most 3 folds"):
        check_folds(labels, ["a", "b"], 4)
    with pytest.raises(UserError, match="at least 2 folds"):
        check_folds(labels, ["a", "b"], 1)
    with pytest.raises(UserError, match="1 class"):
        check_folds(["a"] * 8, ["a", "b"], 2)
    # copies count once: class a's five images as two pictures allow two folds at most
    check_folds(labels, ["a", "b"], 3, groups=[0, 0, 1, 1, 2, 3, 4, 5])
    with pytest.raises(UserError, match=r"class 'a' has only 2 training image\(s\), copies and look-alikes counted "
                                        r"once.*at most 2 folds"):
        check_folds(labels, ["a", "b"], 3, groups=[0, 0, 0, 1, 1, 2, 3, 4])


def test_fold_groups_join_copies_and_lookalikes(tmp_path):
    """Identical pixels in another format, a resized copy, and a chain through it share a group; distinct pictures
    do not."""
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((128, 96), Image.BICUBIC)
                for _ in range(3)]
    for i, picture in enumerate(pictures):
        picture.save(tmp_path / f"p{i}.png")
    pictures[0].save(tmp_path / "p0_resaved.bmp")
    pictures[1].resize((112, 84), Image.BICUBIC).save(tmp_path / "p1_smaller.png")
    pictures[1].resize((112, 84), Image.BICUBIC).save(tmp_path / "p1_smaller_again.jpg", quality=90)
    names = ["p0.png", "p1_smaller_again.jpg", "p2.png", "p0_resaved.bmp", "p1.png", "p1_smaller.png"]
    groups = fold_groups([{"image": str(tmp_path / name)} for name in names], 10**6, progress=False)
    assert groups[0] == groups[3] and groups[1] == groups[4] == groups[5]
    assert len(set(groups)) == 3




def test_label_issues_csv_and_contact_sheet(tmp_path):
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"img{i:02d}.png")
        Image.new("RGB", (300, 200), (i * 6, 100, 100)).save(paths[-1])
    paths[1] = tmp_path / "gone.png"  # removed since it was predicted: shown as unreadable, not dropped
    given = ["a"] * 20 + ["b"] * 20
    probs = [[0.95, 0.05]] * 20 + [[0.05, 0.95]] * 20
    probs[1], probs[25], probs[30] = [0.02, 0.98], [0.96, 0.04], [0.97, 0.03]  # three confident disagreements
    rows = write_label_issues(tmp_path / "out", paths, given, probs, ["a", "b"])
    with open(tmp_path / "out" / "label_issues.csv", newline="") as f:
        written = list(csv.reader(f))  # as written, header included
    assert written[0] == ISSUE_HEADER and written[1:] == [list(map(str, r)) for r in rows]
    assert [(r[1], r[2], r[3]) for r in rows] == [(str(paths[1]), "a", "b"), (str(paths[30]), "b", "a"),
                                                   (str(paths[25]), "b", "a")]
    assert [r[4:6] for r in rows][0] == ["0.980000", "0.020000"]
    sheet = Image.open(tmp_path / "out" / "label_issues.png")
    assert sheet.width >= 3 * 160 and sheet.height > 200
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["label_issues.csv", "label_issues.png"]


def test_contact_sheet_shows_the_first_ones_only(tmp_path):
    n = SHEET_COUNT + 10
    given = ["a"] * n + ["b"] * n
    probs = [[0.1, 0.9]] * n + [[0.9, 0.1]] * n  # nearly every label doubted
    rows = write_label_issues(tmp_path, [tmp_path / "none.png"] * (2 * n), given, probs, ["a", "b"])
    assert len(rows) > SHEET_COUNT
    first = contact_sheet(rows[:SHEET_COUNT], len(rows), 2 * n, "images")
    assert Image.open(tmp_path / "label_issues.png").size == first.size
    assert contact_sheet(rows, len(rows), 2 * n, "images").height > first.height


def test_a_run_without_class_probabilities_lists_none_and_clears_old_lists(tmp_path, capsys):
    for name in ("label_issues.csv", "label_issues.png"):
        (tmp_path / name).write_text("from an earlier score-mode run")
    rows = [dict(zip(PREDICTION_HEADER, ["x.png", "a", "b", "", "b", "b", ""]))]
    assert label_issues_of_run(tmp_path, rows, ["a", "b"], None, 10**6) is None
    assert not list(tmp_path.iterdir()) and "generate mode" in capsys.readouterr().out


def test_an_evaluation_audit_leaves_out_the_training_images(tmp_path, capsys):
    """Images the model trained on (known by their pixels, here one re-saved as BMP) are left out of the audit and
    counted; a mislabelled image it did not train on is still listed. A model that records no training images
    audits every image and says it cannot tell them."""
    paths, labels, probs = [], [], []
    for i in range(40):
        paths.append(tmp_path / f"img{i:02d}.png")
        Image.new("RGB", (30, 20), (i * 6, 100, 100)).save(paths[-1])
        labels.append("a" if i < 20 else "b")
        probs.append({"a": 0.95, "b": 0.05} if i < 20 else {"a": 0.05, "b": 0.95})
    probs[3], probs[25] = {"a": 0.02, "b": 0.98}, {"a": 0.97, "b": 0.03}  # two confident disagreements
    training = paths[:10] + paths[20:30]
    record = hash_training_images(training, 10**6, progress=False)
    assert record == {"pixel_sha256": sorted(pixel_hash(Image.open(p).convert("RGB")) for p in training)}
    trained = training_hashes({"classes": ["a", "b"], TRAINING_IMAGES: record})
    Image.open(paths[25]).save(tmp_path / "img25.bmp")  # a training image under another name and format
    paths[25] = tmp_path / "img25.bmp"
    rows = [{"path": str(p), "true_class": label, "probabilities": json.dumps(prob)}
            for p, label, prob in zip(paths, labels, probs)]
    summary = label_issues_of_run(tmp_path / "out", rows, ["a", "b"], trained, 10**6, progress=False)
    assert summary == {"audited": 20, "training_images_left_out": 20, "listed": 0}
    assert "0 of 20 images the model did not train on (20 training images left out)" in capsys.readouterr().out
    rows[35]["probabilities"] = json.dumps({"a": 0.96, "b": 0.04})  # an image it did not train on, mislabelled
    assert label_issues_of_run(tmp_path / "out", rows, ["a", "b"], trained, 10**6, progress=False)["listed"] == 1
    assert [r["path"] for r in csv_rows(tmp_path / "out" / "label_issues.csv")] == [str(paths[35])]
    capsys.readouterr()
    assert training_hashes({"classes": ["a", "b"]}) is None and training_hashes(None) is None
    summary = label_issues_of_run(tmp_path / "old", rows, ["a", "b"], None, 10**6, progress=False)
    assert summary == {"audited": 40, "training_images_left_out": None, "listed": 3}
    assert "records no training images" in capsys.readouterr().out
    assert {r["path"] for r in csv_rows(tmp_path / "old" / "label_issues.csv")} == {str(paths[i]) for i in (3, 25, 35)}


def flip_training_labels(train_json, share, seed):
    """`share` of the training JSON's images given another class (their Q&A pairs too). Returns their paths."""
    data = json.loads(train_json.read_text())
    rng = random.Random(seed)
    flipped = rng.sample(range(len(data["samples"])), round(share * len(data["samples"])))
    for i in flipped:
        sample = data["samples"][i]
        sample["label"] = rng.choice([c for c in data["classes"] if c != sample["label"]])
        sample["qa"] = [{"question": data["question"], "answer": sample["label"]}]
    train_json.write_text(json.dumps(data))
    return {data["samples"][i]["image"] for i in flipped}


def test_fine_tune_k_fold_lists_the_planted_training_label_errors(tmp_path, tiny_smolvlm):
    """fine_tune.py's k-fold, from the untrained tiny model's states (which tell the colours apart), finds the
    labels planted wrong among the training images, each of which has a copy re-saved as BMP with the same label
    (flipped too): the k-fold holds the two out together; a k-fold the data cannot fill, copies counted once, is
    refused before anything loads."""
    make_colour_images(tmp_path / "data", per_class=20)
    run_script("generate_train_json.py", "--dataset_dir=data", "--train_ratio=0.8", "--val_ratio=0", cwd=tmp_path)
    train_json = tmp_path / "solar_panel_train_dataset.json"
    flipped = flip_training_labels(train_json, 0.1, seed=0)
    data = json.loads(train_json.read_text())
    rarest = min(Counter(s["label"] for s in data["samples"]).values())
    for sample in list(data["samples"]):
        copy = str(Path(sample["image"]).with_suffix(".bmp"))
        Image.open(tmp_path / sample["image"]).save(tmp_path / copy)
        data["samples"].append({**sample, "image": copy})
    train_json.write_text(json.dumps(data))
    flipped |= {str(Path(p).with_suffix(".bmp")) for p in flipped}
    common = [f"--model_path={tiny_smolvlm}", "--output_dir=model", "--val_json=", "--test_json=", "--max_steps=1",
              "--image_longest_edge=512", "--num_workers=0"]
    refused = run_script("fine_tune.py", *common, f"--label_issue_folds={rarest + 1}", cwd=tmp_path, check=False)
    assert refused.returncode != 0 and f"use at most {rarest} folds" in refused.stderr
    assert not (tmp_path / "model").exists() and "states for label issues" not in refused.stderr  # nothing ran
    run_script("fine_tune.py", *common, "--label_issue_folds=4", cwd=tmp_path)
    issues = csv_rows(tmp_path / "model" / "label_issues.csv")
    found = {str(Path(r["path"]).relative_to(tmp_path)) for r in issues}
    recall, precision = recall_precision(found, flipped)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision, found, flipped)
    # held out together, a picture and its copy got their probabilities from one classifier: the same
    probabilities = {}
    for issue in issues:
        probabilities.setdefault(Path(issue["path"]).stem, set()).add(issue["given_class_probability"])
    assert all(len(p) == 1 for p in probabilities.values()), probabilities
    assert Image.open(tmp_path / "model" / "label_issues.png").width > 0


def test_evaluation_of_class_folders_audits_the_images_the_model_did_not_train_on(tmp_path, fine_tuned_head):
    """vlm_test.py on the class folders the model's splits came from, with one training image and one other image of
    each class planted in the wrong folder: fine_tune.py saved the training images' pixel hashes, so they are left
    out of the audit (wherever they are filed now) and counted, while the misfiled images it did not train on are
    listed, from predictions.csv's class probabilities, which every image still has."""
    shutil.copytree(fine_tuned_head / "data", tmp_path / "data")
    split = json.loads((fine_tuned_head / "solar_panel_train_dataset.json").read_text())
    trained = {s["image"] for s in split["samples"]}
    assert json.loads((fine_tuned_head / "head" / "classes.json").read_text())[TRAINING_IMAGES] == \
        hash_training_images([fine_tuned_head / p for p in trained], split["max_image_pixels"], progress=False)
    misfiled = set()
    for name, wrong in (("red", "green"), ("green", "blue"), ("blue", "red")):
        images = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "data" / name).iterdir())
        for chosen in (next(p for p in images if p in trained), next(p for p in images if p not in trained)):
            (tmp_path / chosen).rename(tmp_path / "data" / wrong / Path(chosen).name)
            misfiled.add((str(Path("data") / wrong / Path(chosen).name), chosen in trained))
    run = run_script("vlm_test.py", f"--model_path={fine_tuned_head / 'head'}", "--dataset_dir=data",
                     "--report_dir=report", "--num_workers=0", cwd=tmp_path)
    predicted = {r["path"]: json.loads(r["probabilities"]) for r in csv_rows(tmp_path / "report" / "predictions.csv")}
    assert len(predicted) == 36
    audit = report_in(tmp_path / "report")["label_issues"]
    assert audit["training_images_left_out"] == len(trained) and audit["audited"] == 36 - len(trained)
    assert f"images the model did not train on ({len(trained)} training images left out)" in run.stdout
    issues = csv_rows(tmp_path / "report" / "label_issues.csv")
    assert audit["listed"] == len(issues)
    listed = {r["path"] for r in issues}
    assert {path for path, was_trained in misfiled if not was_trained} <= listed, (issues, misfiled)
    assert len(listed) <= 5, issues
    assert not listed & {path for path, was_trained in misfiled if was_trained}
    for issue in issues:
        probs = predicted[issue["path"]]
        assert float(issue["given_class_probability"]) == pytest.approx(probs[issue["given_class"]], abs=1e-6)
        assert issue["predicted_class"] == max(probs, key=probs.get)
    assert Image.open(tmp_path / "report" / "label_issues.png").width > 0
