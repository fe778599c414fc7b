"""Multi-label data with the head objective and the answer objective's yes/no questions (vlmcls/multi_label.py,
and its path through the scripts): learning coloured markers through generate_train_json.py, fine_tune.py and
vlm_benchmark_test_dataset.py, soft weights reaching the loss, the yes/no probability, the per-class thresholds, the
measures against hand-computed values, and the refusals."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, report_in, run_script


def marker_images(folder, count=72, size=(64, 48), seed=0, side=16):
    """`count` grey noisy images, each with 1 or 2 of COLOURS' markers (`side`-pixel squares) at random places, and
    labels.csv naming the colours each shows; the first image of every sixth weighs its first label 0.6 (soft)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    names = list(COLOURS)
    for i in range(count):
        pixels = np.clip(120 + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255)
        shown = sorted(rng.choice(len(names), size=rng.integers(1, 3), replace=False))
        for j in shown:
            x, y = rng.integers(0, size[0] - side), rng.integers(0, size[1] - side)
            pixels[y:y + side, x:x + side] = COLOURS[names[j]]
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"m{i:03d}.png")
        labels = [names[j] for j in shown]
        rows.append((f"m{i:03d}.png", ";".join(f"{n}:0.6" if i % 6 == 0 and k == 0 else n
                                                for k, n in enumerate(labels))))
    (folder / "labels.csv").write_text("image,labels\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return folder / "labels.csv"


TRAIN = ["--objective=head", "--max_steps=40", "--eval_steps=20", "--learning_rate=3e-3",
         "--per_device_train_batch_size=4", "--gradient_accumulation_steps=1", "--warmup_steps=3",
         "--logging_steps=20", "--num_workers=0", "--min_validation_images=1", "--class_balance=weighted"]


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory, tiny_smolvlm):
    """Marker images split, a head fine-tuned on them and evaluated, by the scripts as processes."""
    work = tmp_path_factory.mktemp("multi-label")
    marker_images(work / "markers")
    out = {"work": work}
    out["split"] = run_script("generate_train_json.py", "--labels_csv=markers/labels.csv", "--train_ratio=0.6",
                              "--val_ratio=0.2", cwd=work).stdout
    out["train"] = run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", "--output_dir=ml", *TRAIN,
                              cwd=work).stdout
    out["test"] = run_script("vlm_benchmark_test_dataset.py", "--model_path=ml", "--num_workers=0",
                             cwd=work).stdout
    return out


@pytest.mark.slow  # about 70-90 s on one shared core
def test_a_head_learns_the_markers_through_the_scripts(multi_label_run):
    work = multi_label_run["work"]
    saved = json.loads((work / "ml" / "classes.json").read_text())
    assert saved["multi_label"] is True and saved["objective"] == "head"
    assert set(saved["thresholds"]) == set(COLOURS) and "validation images" in saved["thresholds_chosen"]
    report = report_in(work / "ml" / "reports" / "test_set")
    test = json.loads((work / "solar_panel_test_dataset.json").read_text())
    frequency = {c: np.mean([c in s["labels"] for s in test["samples"]]) for c in test["classes"]}
    # a tiny model's numbers: stand-ins; chance's AP is about each label's frequency (0.4-0.6 here), its mAP about
    # their mean (0.76 against 0.49 when written)
    chance = np.mean(list(frequency.values()))
    assert report["mean_average_precision"] > max(chance + 0.2, *frequency.values()), (report, frequency)
    for key in ("micro_f1", "macro_f1", "exact_set_accuracy", "hamming_loss"):
        assert 0 <= report[key] <= 1
    assert set(report["per_class"]["red"]) == {"precision", "recall", "f1", "average_precision", "support"}
    assert (work / "ml" / "reports" / "test_set" / "pr_curves.png").is_file()
    assert f"mAP {report['mean_average_precision']:.4f}" in multi_label_run["test"]
    with open(work / "ml" / "reports" / "test_set" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test["samples"])
    for row in rows:
        probs = {c: float(row[f"probability_{c}"]) for c in test["classes"]}
        assert row["predicted_labels"] == ";".join(c for c in test["classes"]
                                                   if probs[c] >= saved["thresholds"][c])
        assert row["predicted_class"] == row["predicted_labels"]


@pytest.mark.slow
def test_vlm_test_predicts_unlabelled_images_and_refuses_single_label_folders(multi_label_run, tmp_path):
    work = multi_label_run["work"]
    out = run_script("vlm_test.py", f"--model_path={work / 'ml'}", f"--dataset_dir={work / 'markers'}",
                     f"--report_dir={tmp_path / 'p'}", "--num_workers=0", cwd=tmp_path)
    with open(tmp_path / "p" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 72 and all(set(r["predicted_labels"].split(";")) <= set(COLOURS) | {""} for r in rows)
    assert "report written" in out.stdout
    (tmp_path / "folders" / "red").mkdir(parents=True)
    Image.new("RGB", (64, 48), COLOURS["red"]).save(tmp_path / "folders" / "red" / "r.png")
    refused = run_script("vlm_test.py", f"--model_path={work / 'ml'}", f"--dataset_dir={tmp_path / 'folders'}",
                         cwd=tmp_path, check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
        f"error: {work / 'ml'}: a multi-label model, and these labels are single-label: evaluate it on a multi-label "
        "test JSON (generate_train_json.py)")


def test_an_interrupted_multi_label_campaign_continues_to_the_files_of_an_uninterrupted_one(multi_label_run, tmp_path):
    """vlm_test.py's resumable prediction with a multi-label model: from the state a kill leaves after three batches
    (progress.json counting 12 files, labels.csv skipped and 11 images predicted, and the files' lengths then; the
    rest of the rows lost), it predicts the other images only and ends with the uninterrupted run's files, byte for
    byte."""
    work = multi_label_run["work"]

    def predict(report):
        return run_script("vlm_test.py", f"--model_path={work / 'ml'}", f"--dataset_dir={work / 'markers'}",
                          f"--report_dir={report}", "--num_workers=0", "--batch_size=4", cwd=tmp_path).stdout
    predict(tmp_path / "whole")
    whole = {p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir() if p.name != "progress.json"}
    cut = tmp_path / "cut"
    cut.mkdir()
    rows = whole["predictions.csv"].splitlines(keepends=True)
    (cut / "predictions.csv").write_bytes(b"".join(rows[:12]) + rows[12][:20])  # and half a line being written
    (cut / "skipped.csv").write_bytes(whole["skipped.csv"])
    progress = json.loads((tmp_path / "whole" / "progress.json").read_text())
    progress.update(done=12, lengths={"predictions": len(b"".join(rows[:12])), "skipped": len(whole["skipped.csv"])})
    (cut / "progress.json").write_text(json.dumps(progress))
    assert "continuing an interrupted run: 12 of 73 images" in predict(cut)
    assert {p.name: p.read_bytes() for p in cut.iterdir() if p.name != "progress.json"} == whole
    assert "predicted_labels" in rows[0].decode()


@pytest.mark.slow
def test_what_does_not_take_a_multi_label_model_refuses_it_naming_the_folder(multi_label_run, tmp_path):
    from vlmcls.cli import UserError
    from vlmcls.evaluation import check_multi_label
    from vlmcls.export import export_model
    from vlmcls.saved import open_classifier
    folder = multi_label_run["work"] / "ml"
    saved = open_classifier(str(folder))
    assert saved.multi_label and set(saved.thresholds) == set(COLOURS)
    with pytest.raises(UserError, match=f"^{folder}: a multi-label model, which export_model.py --quantize=int8 "):
        export_model(saved, tmp_path / "exported", quantize="int8")
    assert not (tmp_path / "exported").exists()
    for setting in ("min_confidence", "target_accuracy", "explain"):
        with pytest.raises(UserError, match=f"^{setting}=0.9: {folder} is a multi-label model, which {setting} "):
            check_multi_label([saved], ["red"], True, *[0.9 if s == setting else 0 for s in
                                                        ("min_confidence", "target_accuracy", "explain")])
    single = open_classifier(str(tmp_path))  # a folder without classes.json: an answer model, single-label
    with pytest.raises(UserError, match="a single-label model, compared with a multi-label one"):
        check_multi_label([saved, single], None, False, 0, 0, False)
    refused = run_script("vlm_app.py", f"--model_path={folder}", "--min_confidence=0.9", cwd=tmp_path, check=False)
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: min_confidence=0.9: {folder} is a multi-label model, which min_confidence does not take yet (issue 44)")


def test_a_saved_multi_label_record_is_checked(tmp_path):
    from vlmcls.cli import UserError
    from vlmcls.saved import open_classifier
    record = {"classes": ["a", "b"], "objective": "head", "multi_label": True, "thresholds": {"a": 0.3, "b": 0.7}}
    (tmp_path / "classes.json").write_text(json.dumps(record))
    assert open_classifier(str(tmp_path)).thresholds == {"a": 0.3, "b": 0.7}
    for bad in ({"thresholds": {"a": 0.3}}, {"thresholds": {"a": 0.3, "b": 1.5}}, {"multi_label": "yes"}):
        (tmp_path / "classes.json").write_text(json.dumps({**record, **bad}))
        with pytest.raises(UserError, match="\"multi_label\" must be true with \"thresholds\""):
            open_classifier(str(tmp_path))


def test_thresholds_are_each_classes_best_f1_ties_to_the_largest():
    from vlmcls.multi_label import chosen_thresholds, fit_thresholds
    probs = [{"a": 0.9, "b": 0.9, "c": 0.2}, {"a": 0.8, "b": 0.8, "c": 0.3}, {"a": 0.6, "b": 0.7, "c": 0.4},
             {"a": 0.4, "b": 0.6, "c": 0.1}, {"a": 0.3, "b": 0.05, "c": 0.9}]
    labels = [{"a": 1, "b": 1}, {"a": 1}, {}, {"a": 0.8, "b": 1.0}, {"c": 0.3}]
    # a: F1 at 0.9 .5, 0.8 .8, 0.6 .667, 0.4 .857 (best), 0.3 .75; b: 0.9 and 0.6 both .667, the largest taken;
    # c: no image carries it (its weight 0.3 is under labels.PRESENT)
    assert fit_thresholds(probs, labels, ["a", "b", "c"]) == {"a": 0.4, "b": 0.9, "c": 0.5}
    assert chosen_thresholds(None, None, ["a", "b"])["thresholds"] == {"a": 0.5, "b": 0.5}
    chosen = chosen_thresholds([{"probs": p} for p in probs], {"samples": [{"labels": x} for x in labels]},
                               ["a", "b", "c"])  # fine_tune.py's call: validation results and the validation data
    assert chosen["thresholds"] == {"a": 0.4, "b": 0.9, "c": 0.5} and "5 validation images" in chosen["thresholds_chosen"]


def test_measures_equal_hand_computed_values():
    from vlmcls.multi_label import measures
    labels = [{"a": 1}, {"a": 1, "b": 1}, {"b": 0.6}, {"b": 0.4}]  # b's 0.4 counts absent
    probs = [{"a": 0.9, "b": 0.1}, {"a": 0.4, "b": 0.8}, {"a": 0.3, "b": 0.7}, {"a": 0.2, "b": 0.9}]
    found = measures(labels, probs, [["a"], ["b"], ["b"], ["b"]], ["a", "b"])
    assert found["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                       "average_precision": 1.0, "support": 2}
    assert found["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                       "average_precision": pytest.approx(0.5 * 1 / 2 + 0.5 * 2 / 3), "support": 2}
    assert found["mean_average_precision"] == pytest.approx((1 + 7 / 12) / 2)
    assert found["micro_f1"] == pytest.approx(0.75) and found["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert found["exact_set_accuracy"] == 0.5 and found["hamming_loss"] == 0.25 and found["total"] == 4


def head_batch(tiny_smolvlm, samples, classes, class_balance="none"):
    """The head's training set of `samples` from given pooled states (its collated batch of all) and its loss."""
    import torch
    from vlmcls.models import load_processor
    from vlmcls.objectives import head
    torch.manual_seed(0)
    states = {s["image"]: torch.randn(4) for s in samples}
    multi = "labels" in samples[0]
    data = {"samples": samples, "classes": classes, "question": "q", **({"multi_label": True} if multi else {})}
    found = head.training_set(data, encoder=None, processor=load_processor(str(tiny_smolvlm)),
                              class_balance=class_balance, features=states)
    return found["data_collator"]([found["train_dataset"][i] for i in range(len(samples))]), found["loss"]


class Linear:
    """A stand-in model: a fixed linear map from the pooled states to the logits."""

    def __init__(self, classes):
        import torch
        self.weight = torch.arange(4 * len(classes), dtype=torch.float32).reshape(4, len(classes)) / 10 - 0.5

    def __call__(self, pooled):
        from types import SimpleNamespace
        return SimpleNamespace(logits=pooled @ self.weight)


def test_soft_label_weights_reach_the_loss_as_binary_cross_entropy_targets(tiny_smolvlm):
    import torch
    classes = ["a", "b", "c"]
    samples = [{"image": "x", "labels": {"a": 0.7, "c": 1.0}}, {"image": "y", "labels": {"b": 0.3}},
               {"image": "z", "labels": {"a": 1.0}}]
    model = Linear(classes)
    for balance in ("none", "weighted"):
        batch, loss = head_batch(tiny_smolvlm, samples, classes, balance)
        assert batch["labels"].flatten().tolist() == pytest.approx([0.7, 0, 1, 0, 0.3, 0, 1, 0, 0])
        z, t = batch["pooled"] @ model.weight, batch["labels"]
        # negatives over positives per class, the soft weights counted: a 1.7, b 0.3, c 1 of 3 images
        w = torch.tensor([1.3 / 1.7, 2.7 / 0.3, 2.0]) if balance == "weighted" else torch.ones(3)
        by_hand = -(w * t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z))).mean()
        assert loss(model, batch)[0].item() == pytest.approx(by_hand.item(), rel=1e-5)
    changed, loss = head_batch(tiny_smolvlm, [{**samples[0], "labels": {"a": 0.9, "c": 1.0}}] + samples[1:], classes)
    assert loss(model, changed)[0].item() != pytest.approx(loss(model, batch)[0].item(), rel=1e-3)


def test_single_label_loss_is_still_the_cross_entropy_of_the_classes(tiny_smolvlm):
    import torch
    classes = ["a", "b", "c"]
    samples = [{"image": "x", "label": "a"}, {"image": "y", "label": "c"}, {"image": "z", "label": "a"}]
    model = Linear(classes)
    for balance, weight in (("none", None), ("weighted", torch.tensor([3 / 6, 3 / 3, 3 / 3]))):
        batch, loss = head_batch(tiny_smolvlm, samples, classes, balance)
        assert batch["labels"].tolist() == [0, 2, 0] and batch["labels"].dtype == torch.int64
        by_hand = torch.nn.functional.cross_entropy(batch["pooled"] @ model.weight, batch["labels"], weight=weight)
        assert loss(model, batch)[0].item() == by_hand.item()


def test_the_head_objective_refuses_settings_that_mean_nothing_for_multi_label_data():
    from vlmcls.cli import UserError
    from vlmcls.objectives import answer, head
    plain = dict(freeze_backbone=False, use_lora=False, class_balance="none", augment="none", cached=True)
    head.check_settings(**plain, multi_label=True)
    with pytest.raises(UserError, match="^class_balance=oversample repeats each class's images"):
        head.check_settings(**{**plain, "class_balance": "oversample"}, multi_label=True)
    with pytest.raises(UserError, match="^label_smoothing=0.1 is for single-label data"):
        head.check_settings(**plain, label_smoothing=0.1, multi_label=True)
    answer.check_settings(**plain, multi_label=True)
    answer.check_settings(**{**plain, "class_balance": "weighted"}, multi_label=True)
    with pytest.raises(UserError, match="^class_balance=oversample repeats each class's images"):
        answer.check_settings(**{**plain, "class_balance": "oversample"}, multi_label=True)
    with pytest.raises(UserError, match="^freeze_backbone and class_balance=weighted apply to objective=head only"):
        answer.check_settings(**{**plain, "class_balance": "weighted"}, multi_label=False)


def test_the_answer_objective_asks_each_class_yes_or_no_weighted_by_its_label_weight():
    from vlmcls.objectives.answer import weighted_presence_rows
    data = {"classes": ["a", "b", "c"], "multi_label": True,
            "samples": [{"image": "x.png", "labels": {"a": 1.0, "b": 0.7}}, {"image": "y.png", "labels": {"c": 1.0}}]}
    rows, weights = weighted_presence_rows(data)
    expected = [("x.png", "Is there a in this image? Answer yes or no.", "yes", 1.0),
                ("x.png", "Is there b in this image? Answer yes or no.", "yes", 0.7),
                ("x.png", "Is there b in this image? Answer yes or no.", "no", 0.3),
                ("x.png", "Is there c in this image? Answer yes or no.", "no", 1.0),
                ("y.png", "Is there a in this image? Answer yes or no.", "no", 1.0),
                ("y.png", "Is there b in this image? Answer yes or no.", "no", 1.0),
                ("y.png", "Is there c in this image? Answer yes or no.", "yes", 1.0)]
    assert [(image, *pairs[0]) for image, pairs in rows] == [e[:3] for e in expected]
    assert all(len(pairs) == 1 for _, pairs in rows)
    assert weights == pytest.approx([e[3] for e in expected])
    # class balance: each yes row also weighs its class's negatives over positives (a 1/1, b 1.3/0.7, c 1/1)
    _, balanced = weighted_presence_rows(data, "weighted")
    assert balanced == pytest.approx([1.0, 0.7 * 1.3 / 0.7, 0.3, 1.0, 1.0, 1.0, 1.0])


def test_the_answer_loss_weighs_each_rows_tokens_by_its_weight():
    import torch
    from vlmcls.objectives.answer import answer_loss
    torch.manual_seed(0)
    vocab = 7
    logits = torch.randn(2, 5, vocab)

    def model(input_ids, logits_to_keep, **_):
        from types import SimpleNamespace
        return SimpleNamespace(logits=logits[logits_to_keep])
    labels = torch.tensor([[-100, -100, 3, 1, -100], [-100, 4, 2, 6, -100]])  # position i predicts token i + 1
    inputs = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "labels": labels}
    ce = [[torch.nn.functional.cross_entropy(logits[r, i - 1], labels[r, i]) for i in range(5) if labels[r, i] >= 0]
          for r in range(2)]
    weighted = answer_loss(model, {**inputs, "weights": torch.tensor([0.7, 0.3])}, num_items_in_batch=10)[0]
    assert weighted.item() == pytest.approx(((0.7 * sum(ce[0]) + 0.3 * sum(ce[1])) / 10).item(), rel=1e-6)
    plain = answer_loss(model, inputs)[0]
    assert plain.item() == pytest.approx((sum(ce[0]) + sum(ce[1])).item() / 5, rel=1e-6)


def test_a_classs_probability_is_p_yes_over_p_yes_plus_p_no_of_its_question(tiny_smolvlm):
    """The cached, cut prompt of presence_scores gives what one forward pass over each whole yes/no chat gives, and
    score mode's probability is P(yes) / (P(yes) + P(no)), the labels those at or above their thresholds."""
    import math

    import torch
    from conftest import load_tiny, red_image
    from vlmcls.inputs import InputEncoder, PromptBatches
    from vlmcls.models import end_token_ids
    from vlmcls.objectives import answer
    from vlmcls.prompt import multi_label_question, presence_question, render_segments
    processor, model = load_tiny(tiny_smolvlm)
    answer.attach(model, 3, multi_label=True)
    classes, image = list(COLOURS), red_image()
    encoder, end_ids = InputEncoder(processor, 10**6, enlarge=True), end_token_ids(processor, model)
    logp = {}
    for name in classes:
        for reply in ("yes", "no"):
            example = encoder.example(image, render_segments(processor, [(presence_question(name), reply)], end_ids),
                                      end_ids)
            ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"])
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **example["tensors"]).logits[0]
            out = out.log_softmax(-1)
            logp[name, reply] = sum(out[i - 1, t].item() for i, t in enumerate(labels.tolist()) if t != -100)
    question = multi_label_question(classes)
    batch = PromptBatches(processor, question, 10**6, enlarge=True, encoder=encoder)([image, image])
    scores = answer.predict_scores(model, processor, batch, question, classes)
    expected = torch.tensor([[logp[c, "yes"] - logp[c, "no"] for c in classes]] * 2)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    p_yes = {c: math.exp(logp[c, "yes"]) / (math.exp(logp[c, "yes"]) + math.exp(logp[c, "no"])) for c in classes}
    thresholds = {c: p_yes[c] + (0.01 if c == "green" else -0.01) for c in classes}  # green just above its own
    setattr(model, answer.MULTI_LABEL, thresholds)
    result = answer.score_mode(model, processor, batch, question, classes)[0]
    assert result["probs"] == pytest.approx(p_yes, abs=1e-4)
    assert result["labels"] == ["red", "blue"] and result["pred"] == "red;blue"
    with pytest.raises(Exception, match="use --prediction=score"):
        answer.generate_mode(model, processor, batch, question, classes)


@pytest.mark.slow  # about 110 s on a shared core (35 s of CPU)
def test_the_answer_objective_learns_the_markers_through_the_scripts(tmp_path, tiny_smolvlm):
    work = tmp_path
    marker_images(work / "markers", count=48)
    run_script("generate_train_json.py", "--labels_csv=markers/labels.csv", "--train_ratio=0.6", "--val_ratio=0.2",
               cwd=work)
    train = [a for a in TRAIN if not a.startswith("--objective")] + ["--objective=answer"]
    trained = run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", "--output_dir=ml", *train, cwd=work).stdout
    assert "test loss (yes/no answers, weighted by the label weights)" in trained
    saved = json.loads((work / "ml" / "classes.json").read_text())
    assert saved["multi_label"] is True and saved["objective"] == "answer" and set(saved["thresholds"]) == set(COLOURS)
    tested = run_script("vlm_benchmark_test_dataset.py", "--model_path=ml", "--num_workers=0", cwd=work).stdout
    report = report_in(work / "ml" / "reports" / "test_set")
    assert f"mAP {report['mean_average_precision']:.4f}" in tested
    # a tiny model's 40 steps: a stand-in number (0.53 when written, chance about 0.51), so only its presence is
    # asserted
    assert 0 <= report["mean_average_precision"] <= 1 and set(report["per_class"]) == set(COLOURS)
    test = json.loads((work / "solar_panel_test_dataset.json").read_text())
    with open(work / "ml" / "reports" / "test_set" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test["samples"])
    for row in rows:
        probs = {c: float(row[f"probability_{c}"]) for c in test["classes"]}
        assert row["predicted_labels"] == ";".join(c for c in test["classes"] if probs[c] >= saved["thresholds"][c])
