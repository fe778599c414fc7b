"""generate_train_json.py: nothing lost, bad files listed with the reason, the split by image, stratified, seeded."""
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import awkward_images, make_colour_images, run_script
from vlmcls.images import (detail_view, load_image, look, lookalike_groups, lookalike_pairs, read_dataset_json,
                           refuse_overlap)
from vlmcls.prompt import multi_label_question

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import copy_guard  # noqa: E402
import generate_train_json  # noqa: E402


BAD = {"red/empty.jpg": "empty file", "red/notes.txt": "not an image", "green/corrupt.png": "corrupt",
       "green/truncated.png": "corrupt or truncated", "blue/bomb.png": "decompression bomb"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    work = tmp_path_factory.mktemp("awkward")
    awkward_images(work / "images")
    out = run_script("generate_train_json.py", "--dataset_dir=images", "--max_image_pixels=2000000",
                     "--train_ratio=0.5", cwd=work).stdout
    return work, out


def test_bad_files_are_listed_with_their_reasons(generated):
    work, out = generated
    rows = list(csv.DictReader(open(work / "skipped.csv")))
    listed = {r["path"].split("images/")[1]: r["reason"] for r in rows}
    assert set(listed) == set(BAD)
    for name, reason in BAD.items():
        assert reason in listed[name], (name, listed[name])
        assert name.split("/")[1] in out
    assert f"skipped {len(BAD)} file(s)" in out


def test_every_other_file_is_in_exactly_one_split(generated):
    work, _ = generated
    files = {str(p.relative_to(work)) for p in (work / "images").rglob("*") if p.is_file()}
    used = []
    for name in ("solar_panel_train_dataset.json", "solar_panel_val_dataset.json", "solar_panel_test_dataset.json"):
        used += [s["image"] for s in json.loads((work / name).read_text())["samples"]]
    assert len(used) == len(set(used))
    assert set(used) == files - {f"images/{b}" for b in BAD}


def test_duplicates_stay_on_one_side_and_conflicts_are_reported(generated):
    work, out = generated
    for part in ("test", "val"):
        held_out = {s["image"] for s in json.loads((work / f"solar_panel_{part}_dataset.json").read_text())["samples"]}
        for pair in (("images/red/red_00.png", "images/green/same_as_red_00.bmp"),
                     ("images/red/red_01.png", "images/red/red_01_copy.png")):
            assert (pair[0] in held_out) == (pair[1] in held_out), (part, pair)
    assert "label conflict" in out and "same_as_red_00.bmp [green]" in out and "red_00.png [red]" in out
    assert "red_01_copy" not in out.split("label conflict")[-1]


def split(work, *args):
    """(train, validation, test) data of a generate_train_json.py run in `work`."""
    run_script("generate_train_json.py", "--dataset_dir=images", *args, cwd=work)
    load = lambda part: json.loads((work / f"solar_panel_{part}_dataset.json").read_text())
    return load("train"), load("val"), load("test")


def images_of(data):
    return [s["image"] for s in data["samples"]]


def test_no_image_in_two_files_and_every_class_in_each(tmp_path):
    make_colour_images(tmp_path / "images", per_class=7)
    train, val, test = split(tmp_path, "--val_ratio=0.1")
    assert not set(images_of(train)) & set(images_of(test))
    assert len(images_of(train)) + len(images_of(val)) + len(images_of(test)) == 21
    for data in (train, val, test):
        assert {s["label"] for s in data["samples"]} == {"red", "green", "blue"}
    assert train["counts"]["test"] == {"blue": 1, "green": 1, "red": 1}
    assert train["counts"]["val"] == {"blue": 1, "green": 1, "red": 1}
    assert train["counts"]["train"] == {"blue": 5, "green": 5, "red": 5}


def test_two_images_per_class_still_give_one_test_image_each(tmp_path):
    make_colour_images(tmp_path / "images", per_class=2)
    train, _, test = split(tmp_path, "--train_ratio=0.9")
    assert sorted(s["label"] for s in test["samples"]) == ["blue", "green", "red"]
    assert sorted(s["label"] for s in train["samples"]) == ["blue", "green", "red"]


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    make_colour_images(tmp_path / "images", per_class=10)
    split(tmp_path)
    first = (tmp_path / "solar_panel_test_dataset.json").read_bytes()
    split(tmp_path)
    assert (tmp_path / "solar_panel_test_dataset.json").read_bytes() == first
    _, _, other = split(tmp_path, "--seed=7")
    assert json.dumps(other).encode() != first and set(images_of(other)) != set(images_of(json.loads(first)))


def test_question_uses_folder_names_as_spelled_and_paths_resolve_anywhere(tmp_path):
    make_colour_images(tmp_path / "images", per_class=3)
    (tmp_path / "images" / "red").rename(tmp_path / "images" / "Bird-drop")
    (tmp_path / "out").mkdir()
    run_script("generate_train_json.py", f"--dataset_dir={tmp_path / 'images'}", "--train_json=out/tr.json",
               "--test_json=out/te.json", "--question_templates=[]", cwd=tmp_path)
    data = json.loads((tmp_path / "out" / "tr.json").read_text())
    assert data["classes"] == ["Bird-drop", "blue", "green"]
    assert "Bird-drop, blue, green" in data["question"]
    assert all(s["qa"] == [{"question": data["question"], "answer": s["label"]}] for s in data["samples"])
    for sample in read_dataset_json(tmp_path / "out" / "tr.json")["samples"]:
        assert (tmp_path / "out" / sample["image"]).is_file()


def labels_of(data):
    return sorted(s["label"] for s in data["samples"])


def test_validation_images_come_from_the_training_side_stratified_and_seeded(tmp_path):
    make_colour_images(tmp_path / "images", per_class=20)
    Image.open(tmp_path / "images" / "red" / "red_03.png").save(tmp_path / "images" / "red" / "red_03_again.bmp")
    train, val, test = split(tmp_path, "--val_ratio=0.2")
    parts = [set(images_of(d)) for d in (train, val, test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(map(len, parts)) == 61
    # 20% of each class's images in all, as the test set takes its 20%; the copy of red_03 stays with it.
    assert labels_of(test) == ["blue"] * 4 + ["green"] * 4 + ["red"] * 4
    assert labels_of(val) in (["blue"] * 4 + ["green"] * 4 + ["red"] * 4, ["blue"] * 4 + ["green"] * 4 + ["red"] * 5)
    together = [i for i, p in enumerate(parts) if "images/red/red_03.png" in p]
    assert together == [i for i, p in enumerate(parts) if "images/red/red_03_again.bmp" in p]
    assert val["classes"] == train["classes"] and val["question"] == train["question"]
    assert val["max_image_pixels"] == train["max_image_pixels"] and val["samples"][0]["qa"]
    # The test split is the one a run without validation makes; the same seed gives the same validation set.
    _, none, test_without = split(tmp_path, "--val_ratio=0")
    assert test_without["samples"] == test["samples"] and none["samples"] == []
    assert split(tmp_path, "--val_ratio=0.2")[1]["samples"] == val["samples"]
    assert set(images_of(split(tmp_path, "--val_ratio=0.2", "--seed=7")[1])) != set(images_of(val))


def test_validation_json_can_be_left_out_and_must_be_its_own_file(tmp_path):
    make_colour_images(tmp_path / "images", per_class=5)
    run_script("generate_train_json.py", "--dataset_dir=images", "--val_json=", cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["solar_panel_test_dataset.json",
                                                               "solar_panel_train_dataset.json"]
    same = run_script("generate_train_json.py", "--dataset_dir=images", "--val_json=solar_panel_test_dataset.json",
                      cwd=tmp_path, check=False)
    assert same.returncode == 1 and "must be different files" in same.stderr
    too_big = run_script("generate_train_json.py", "--dataset_dir=images", "--val_ratio=0.8", cwd=tmp_path,
                         check=False)
    assert too_big.returncode == 1 and "val_ratio must be" in too_big.stderr


def random_picture(rng, size=64):
    """A stripe, grid or checkerboard layout in a random colour pair (and the layout in its twin colours: the same
    mean colour and grey levels), at periods of 4 to 64 px (4 and 8: finer than the 16x16 thumbnail shows), or
    random blobs on a gradient."""
    if rng.random() < 0.6:
        period = int(rng.choice([4, 8, 16, 32, 64]))
        mask = copy_guard.layout(str(rng.choice(copy_guard.LAYOUTS)), period, size)[..., None]
        a, b, c, d = copy_guard.colour_pair_and_twin(rng)
        paint = lambda one, two: Image.fromarray(np.where(mask, np.array(two, np.uint8), np.array(one, np.uint8)))
        return paint(a, b), paint(c, d)
    y, x = np.mgrid[:size, :size]
    pixels = np.stack([x * rng.integers(1, 4), y * rng.integers(1, 4), x + y], -1) % 256
    for _ in range(3):
        top, left = rng.integers(0, size - 16, 2)
        pixels[top:top + 16, left:left + 16] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels.astype(np.uint8)), None


def random_data_set(folder, rng):
    """Two or three class folders of random pictures, with planted copies (the same file, resized 0.5-1.5x,
    re-encoded as JPEG at quality 30-95, or both) and colour twins, in the original's class or another."""
    classes = ["a", "b", "c"][:rng.integers(2, 4)]
    made = []
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(rng.integers(2, 6)):
            image, twin = random_picture(rng)
            made.append(folder / name / f"{i}.png")
            image.save(made[-1])
            if twin is not None and rng.random() < 0.5:
                twin.save(folder / name / f"{i}_twin.png")
    for k in range(rng.integers(2, 8)):
        original = made[rng.integers(len(made))]
        copy = folder / (original.parent.name if rng.random() < 0.7 else str(rng.choice(classes))) / f"copy{k}"
        kind = rng.integers(4)
        if kind == 0:
            shutil.copy(original, copy.with_suffix(".png"))
            continue
        with Image.open(original) as image:
            if kind in (1, 3):
                image = copy_guard.scaled(image, rng.uniform(0.5, 1.5))
            if kind in (2, 3):
                image.save(copy.with_suffix(".jpg"), quality=int(rng.integers(30, 96)))
            else:
                image.save(copy.with_suffix(".png"))


def test_fine_tune_never_refuses_the_splits_generate_train_json_writes(tmp_path, monkeypatch, capsys):
    # A property over 40 seeded random data sets (about 600 images), whatever the ratios and the seed: the splits
    # keep every look-alike group whole, so the copy guard of fine_tune.py finds nothing to refuse.
    rng = np.random.default_rng(0)
    together = told_apart = 0
    for n in range(40):
        work = tmp_path / str(n)
        random_data_set(work / "images", rng)
        for name, value in {"DATASET_DIR": work / "images", "TRAIN_JSON": work / "train.json",
                            "VAL_JSON": work / "val.json", "TEST_JSON": work / "test.json",
                            "TRAIN_RATIO": float(rng.choice([0.5, 0.7, 0.8])),
                            "VAL_RATIO": float(rng.choice([0.0, 0.1, 0.25])), "SEED": int(rng.integers(100))}.items():
            monkeypatch.setattr(generate_train_json, name, value)
        generate_train_json.main()
        refuse_overlap(read_dataset_json(work / "train.json"),
                       {"validation": read_dataset_json(work / "val.json"),
                        "test": read_dataset_json(work / "test.json")}, progress=False)
        paths = sorted((work / "images").rglob("*.*"))
        together += sum(len(g) > 1 for g in lookalike_groups(paths, 10**7, False))
        pictures = [load_image(p, 10**7) for p in paths]
        looks = [look(picture) for picture in pictures]
        told_apart += len(lookalike_pairs(looks)) - len(lookalike_pairs(looks, views=list(map(detail_view, pictures))))
    capsys.readouterr()
    assert together > 50  # the planted copies are look-alikes: the property is not vacuous
    assert told_apart >= 5  # and fine layouts that share a thumbnail were told apart by their detail (8 pairs)


def write_labels_csv(path, rows):
    path.write_text("image,labels\n" + "".join(f"{image},{labels}\n" for image, labels in rows))


def test_a_csv_of_one_label_per_image_writes_what_the_folders_write(tmp_path):
    make_colour_images(tmp_path / "images", per_class=10)
    Image.open(tmp_path / "images" / "red" / "red_03.png").save(tmp_path / "images" / "red" / "red_03_again.bmp")
    files = sorted(p.relative_to(tmp_path / "images") for p in (tmp_path / "images").rglob("*.*"))
    write_labels_csv(tmp_path / "images" / "labels.csv", [(p, p.parent.name) for p in reversed(files)])
    names = [f"solar_panel_{part}_dataset.json" for part in ("train", "val", "test")]
    split(tmp_path, "--val_ratio=0.2", "--seed=3")
    written = [(tmp_path / name).read_bytes() for name in names]
    run_script("generate_train_json.py", "--labels_csv=images/labels.csv", "--val_ratio=0.2", "--seed=3",
               cwd=tmp_path)
    assert [(tmp_path / name).read_bytes() for name in names] == written
    assert "multi_label" not in json.loads(written[0]) and json.loads(written[2])["samples"][0]["label"] == "blue"


def test_a_multi_label_csv_is_split_with_its_weights_and_refused_where_it_cannot_be_trained_or_scored(
        tmp_path):
    make_colour_images(tmp_path / "images", per_class=8)
    images = tmp_path / "images"
    copies = [f"{c}/{c}_{i:02d}" for c in ("red", "green", "blue") for i in (3, 6)]
    for name in copies:  # each a look-alike of its original, listed with another weight
        Image.open(images / f"{name}.png").save(images / f"{name}_again.bmp")
    (images / "broken.png").write_bytes((images / "red" / "red_00.png").read_bytes()[:100])
    rows = [(f"{c}/{c}_{i:02d}.png", c if i % 2 else f"{c};green:0.4" if c != "green" else "green;blue")
            for c in ("red", "green", "blue") for i in range(8)]
    rows += [(f"{name}_again.bmp", f"{name.split('/')[0]}:0.9") for name in copies] + [("broken.png", "red")]
    write_labels_csv(images / "labels.csv", rows)
    out = run_script("generate_train_json.py", "--labels_csv=images/labels.csv", "--val_ratio=0.2", cwd=tmp_path)
    assert "images/broken.png: corrupt or truncated image" in out.stdout and "(images/labels.csv line 32)" in out.stdout
    assert "label conflict" in out.stdout and "images/red/red_03_again.bmp [red:0.9]" in out.stdout
    parts = [json.loads((tmp_path / f"solar_panel_{p}_dataset.json").read_text()) for p in ("train", "val", "test")]
    weights = {s["image"]: s["labels"] for data in parts for s in data["samples"]}
    assert len(weights) == 30 and weights["images/red/red_00.png"] == {"green": 0.4, "red": 1.0}
    assert weights["images/green/green_00.png"] == {"blue": 1.0, "green": 1.0}
    assert weights["images/red/red_03_again.bmp"] == {"red": 0.9}
    for data in parts:
        assert data["multi_label"] is True and data["soft_labels"] is True and data["classes"] == ["blue", "green",
                                                                                                   "red"]
        assert data["question"] == multi_label_question(data["classes"])
        assert all(set(s) == {"image", "labels"} for s in data["samples"])
        assert data["counts"]["train"]["green"] == sum("green" in weights[s["image"]] for s in parts[0]["samples"])
        held = {s["image"] for s in data["samples"]}
        for name in copies:
            assert (f"images/{name}.png" in held) == (f"images/{name}_again.bmp" in held), name
        assert all(any(c in s["labels"] for s in data["samples"]) for c in data["classes"])  # every label in each
    # never trained or scored as single-label data
    refused = run_script("fine_tune.py", "--objective=answer", "--class_balance=oversample", cwd=tmp_path,
                         check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
        "error: class_balance=oversample repeats each class's images, which multi-label images (several classes each) "
        "cannot be: use class_balance=weighted (per-class weights of the yes answers)")
    refused = run_script("vlm_benchmark_test_dataset.py", "--model_path=nowhere", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
        "error: nowhere: a single-label model, and these labels are multi-label: evaluate it on a single-label test "
        "JSON (generate_train_json.py)")
    folders = run_script("generate_train_json.py", "--dataset_dir=images", "--classes=red", cwd=tmp_path,
                         check=False)
    assert folders.returncode == 1 and "classes is for --labels_csv" in folders.stderr


def test_multi_label_without_weights_is_not_soft(tmp_path, monkeypatch, capsys):
    make_colour_images(tmp_path / "images", per_class=4)
    write_labels_csv(tmp_path / "labels.csv", [(f"images/{c}/{c}_{i:02d}.png", f"{c};dark" if i < 2 else c)
                                               for c in ("red", "green", "blue") for i in range(4)])
    for name, value in {"LABELS_CSV": str(tmp_path / "labels.csv"), "TRAIN_JSON": tmp_path / "train.json",
                        "VAL_JSON": "", "TEST_JSON": tmp_path / "test.json"}.items():
        monkeypatch.setattr(generate_train_json, name, value)
    generate_train_json.main()
    capsys.readouterr()
    data = json.loads((tmp_path / "train.json").read_text())
    assert data["multi_label"] is True and data["soft_labels"] is False
    assert data["classes"] == ["blue", "dark", "green", "red"]
