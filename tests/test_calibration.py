"""The class bias: its values, the strength validation picks, its record in classes.json, and the scripts using it."""
import json
import math
import shutil

import pytest

from conftest import report_in, run_script
from vlmcls.calibration import STRENGTHS, fit_class_bias, frequency_bias, saved_class_bias
from vlmcls.objectives import ranked

CLASSES = ["common", "rare"]


def test_the_bias_takes_the_training_class_prior_out_in_proportion_to_its_strength():
    labels = ["common"] * 3 + ["rare"]
    assert frequency_bias(labels, CLASSES, 0.0) == [0.0, 0.0]
    assert frequency_bias(labels, CLASSES, 1.0) == pytest.approx([-math.log(0.75), -math.log(0.25)])
    assert frequency_bias(labels, CLASSES, 0.5) == pytest.approx([-0.5 * math.log(0.75), -0.5 * math.log(0.25)])
    # a class the training data never showed is treated as seen once, not as infinitely rare
    assert math.isfinite(frequency_bias(["common"], CLASSES, 1.0)[1])


def validation(rare_probability_of):
    """Validation data of 8 common and 2 rare images, and score-mode results giving each image the rare class with
    the probability rare_probability_of(its label)."""
    labels = ["common"] * 8 + ["rare"] * 2
    data = {"classes": CLASSES, "samples": [{"image": f"{i}.png", "label": label} for i, label in enumerate(labels)]}
    results = [ranked(CLASSES, [1 - rare_probability_of(label), rare_probability_of(label)]) for label in labels]
    return data, results


def test_validation_picks_the_weakest_strength_that_finds_a_rare_class_the_scores_rank_down():
    # The rare images get p(rare) = 0.3, the common ones 0.1: raw scores call everything common.
    data, results = validation(lambda label: 0.3 if label == "rare" else 0.1)
    train_labels = ["common"] * 90 + ["rare"] * 10
    fitted = fit_class_bias(results, data, train_labels, "macro_f1")
    assert fitted["validation_before"] == pytest.approx(8 / 9 / 2)  # common's F1 8/9, rare's 0
    assert fitted["validation_after"] == 1.0
    # ln(0.3/0.7) + s ln(9) > 0 > ln(0.1/0.9) + s ln(9) from s = 0.39 on: 0.4 is the weakest in STRENGTHS
    assert fitted["strength"] == 0.4 and fitted["validation_images"] == 10
    assert [fitted["bias"][c] for c in CLASSES] == pytest.approx(frequency_bias(train_labels, CLASSES, 0.4))


def test_a_stronger_bias_that_scores_better_only_within_one_standard_error_is_not_taken():
    # 14 common images with p(rare) 0.01, two more at 0.35 and 0.2; rare images at 0.45, 0.3, 0.05, 0.05. With a
    # training prior of 9:1, an image turns rare from strength -logit(p) / ln 9: 0.45 from 0.1, the common 0.35
    # from 0.3, the rare 0.3 from 0.4, the common 0.2 from 0.7. Macro-F1 by strength: 0 0.444; 0.1 0.657
    # (rare F1 2/5, common 32/35); 0.3 0.608; 0.4 0.740 (rare 4/7, common 30/33), the best; 0.7 0.688.
    probabilities = [0.01] * 14 + [0.35, 0.2] + [0.45, 0.3, 0.05, 0.05]
    labels = ["common"] * 16 + ["rare"] * 4
    data = {"classes": CLASSES, "samples": [{"image": f"{i}.png", "label": x} for i, x in enumerate(labels)]}
    results = [ranked(CLASSES, [1 - p, p]) for p in probabilities]
    fitted = fit_class_bias(results, data, ["common"] * 90 + ["rare"] * 10, "macro_f1")
    assert fitted["validation_best"] == pytest.approx(0.5 * (4 / 7 + 30 / 33))  # at strength 0.4
    assert fitted["validation_best"] - fitted["standard_error"] <= 0.5 * (2 / 5 + 32 / 35) < fitted["validation_best"]
    assert fitted["validation_best"] - fitted["standard_error"] > fitted["validation_before"]  # 0 is not close enough
    # the plain best would be 0.4; the rule takes the weakest strength within one standard error of it
    assert fitted["strength"] == 0.1
    assert fitted["validation_after"] == pytest.approx(0.5 * (2 / 5 + 32 / 35))

def test_scores_that_are_right_as_they_are_get_no_bias():
    data, results = validation(lambda label: 0.8 if label == "rare" else 0.1)
    fitted = fit_class_bias(results, data, ["common"] * 90 + ["rare"] * 10, "accuracy")
    assert fitted["strength"] == 0.0 and set(fitted["bias"].values()) == {0.0}
    assert fitted["validation_before"] == fitted["validation_after"] == 1.0


def test_a_saved_bias_is_given_in_the_order_asked_and_only_for_its_own_classes(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps(
        {"classes": CLASSES, "class_bias": {"strength": 0.5, "bias": {"common": 0.1, "rare": 1.2}}}))
    assert saved_class_bias(tmp_path, ["rare", "common"])["values"] == [1.2, 0.1]
    assert saved_class_bias(tmp_path, ["rare", "other"]) is None
    (tmp_path / "classes.json").write_text(json.dumps({"classes": CLASSES, "class_bias": None}))
    assert saved_class_bias(tmp_path, CLASSES) is None
    assert saved_class_bias(tmp_path / "no_model_here", CLASSES) is None


def test_fine_tune_records_the_bias_validation_chose_and_evaluation_adds_it(fine_tuned_smolvlm, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(fine_tuned_smolvlm / "finetuned", model)
    saved = json.loads((model / "classes.json").read_text())
    fitted = saved["class_bias"]
    # The colour classes are equally frequent, so every strength gives every class the same bias.
    assert fitted["strength"] in STRENGTHS and len(set(fitted["bias"].values())) == 1
    assert fitted["validation_after"] >= fitted["validation_before"] and fitted["metric"] == "macro_f1"
    # A bias that favours one class strongly makes it every image's prediction, unless turned off.
    saved["class_bias"] = {**fitted, "strength": 1.0, "bias": {c: 50.0 * (c == "green") for c in saved["classes"]}}
    (model / "classes.json").write_text(json.dumps(saved))
    common = [f"--model_path={model}", f"--dataset_dir={fine_tuned_smolvlm / 'data'}", "--batch_size=8"]
    biased = run_script("vlm_test.py", *common, f"--report_dir={tmp_path / 'biased'}", cwd=tmp_path)
    raw = run_script("vlm_test.py", *common, f"--report_dir={tmp_path / 'raw'}", "--class_bias=false", cwd=tmp_path)
    assert "class bias of strength 1.0" in biased.stdout and "class bias" not in raw.stdout
    biased_report, raw_report = report_in(tmp_path / "biased"), report_in(tmp_path / "raw")
    assert biased_report["class_bias"]["green"] == 50.0 and raw_report["class_bias"] is None
    assert [row[1] for row in biased_report["confusion_matrix"]] == [12, 12, 12]  # every image called green
    assert biased_report["accuracy"] == pytest.approx(1 / 3) and raw_report["accuracy"] > 1 / 3
