"""The five scripts run one after another as separate processes, as a user runs them."""
import csv
import json

import pytest
import torch
from PIL import Image

import tiny_models
from conftest import accuracy_in, make_colour_images, report_in, run_script

TRAIN = ["--max_steps=120", "--per_device_train_batch_size=4", "--gradient_accumulation_steps=1",
         "--learning_rate=3e-3", "--warmup_steps=5", "--logging_steps=20", "--save_steps=1000"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_smolvlm):
    """Download (from a local folder), split, evaluate the untrained model, fine-tune, evaluate again."""
    work = tmp_path_factory.mktemp("pipeline")
    source = make_colour_images(work / "source", per_class=20)
    out = {"work": work, "model": work / "finetuned"}
    out["download"] = run_script("download_dataset.py", f"--source={source}", "--dataset_dir=data", cwd=work).stdout
    out["split"] = run_script("generate_train_json.py", "--dataset_dir=data", "--train_ratio=0.5",
                              cwd=work).stdout
    out["untrained"] = run_script("vlm_benchmark_test_dataset.py", f"--model_path={tiny_smolvlm}",
                                  "--image_longest_edge=512", "--image_splitting=false",
                                  f"--report_dir={work / 'untrained'}", cwd=work).stdout
    out["train"] = run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", "--output_dir=finetuned", *TRAIN,
                              cwd=work).stdout
    out["test"] = run_script("vlm_benchmark_test_dataset.py", "--model_path=finetuned", cwd=work).stdout
    return out


def test_download_copies_class_folders_and_counts_them(pipeline):
    assert "3 classes" in pipeline["download"]
    for name in ("red", "green", "blue"):
        assert len(list((pipeline["work"] / "data" / name).iterdir())) == 20
        assert f"{name}" in pipeline["download"]


def test_untrained_model_is_no_better_than_chance(pipeline):
    assert accuracy_in(pipeline["work"] / "untrained") <= 0.5


def test_fine_tuned_model_classifies_held_out_images(pipeline):
    assert accuracy_in(pipeline["model"] / "reports" / "test_set") >= 0.9


def test_evaluation_keeps_the_original_console_lines(pipeline):
    report = report_in(pipeline["model"] / "reports" / "test_set")
    for name, m in report["per_class"].items():
        assert f"type:{name},correct_rate:{m['recall']:.4f} ({m['correct']}/{m['support']})" in pipeline["test"]
    assert f"Total Correct: {report['correct']}/{report['total']}, Accuracy: {report['accuracy']:.4f}" \
        in pipeline["test"]


def test_fine_tune_saves_model_processor_logs_and_classes(pipeline):
    model = pipeline["model"]
    for name in ("config.json", "model.safetensors", "processor_config.json", "train_log_history.json",
                 "classes.json"):
        assert (model / name).is_file(), name
    assert list((model / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"
    history = json.loads((model / "train_log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] / 2
    assert json.loads((model / "classes.json").read_text())["classes"] == ["blue", "green", "red"]


def test_a_single_label_run_writes_nothing_of_multi_label_runs(pipeline):
    """Issue 44 left single-label runs as they were: no multi-label record in classes.json, none of the multi-label
    columns in predictions.csv or measures in report.json, the confusion matrix and not precision-recall curves."""
    model = pipeline["model"]
    record = json.loads((model / "classes.json").read_text())
    assert not {"multi_label", "thresholds", "thresholds_chosen"} & record.keys()
    report_dir = model / "reports" / "test_set"
    header = next(csv.reader(open(report_dir / "predictions.csv")))
    assert "predicted_labels" not in header and not [c for c in header if c.startswith("probability_")]
    report = json.loads((report_dir / "report.json").read_text())
    assert not {"mean_average_precision", "micro_f1", "exact_set_accuracy", "hamming_loss"} & report.keys()
    assert (report_dir / "confusion_matrix.png").is_file() and not (report_dir / "pr_curves.png").exists()


def test_saved_processor_carries_the_training_resolution(pipeline, tiny_smolvlm):
    from transformers import AutoProcessor
    assert AutoProcessor.from_pretrained(tiny_smolvlm).image_processor.size["longest_edge"] == 2048
    reloaded = AutoProcessor.from_pretrained(pipeline["model"]).image_processor
    assert reloaded.size["longest_edge"] == 512 and reloaded.do_image_splitting is False
    batch = AutoProcessor.from_pretrained(pipeline["model"])(
        images=[[Image.new("RGB", (640, 480))]], text=["<image>"], return_tensors="pt")
    assert batch["pixel_values"].shape[1] == 1  # one tile


def test_report_files_agree_with_each_other_and_the_console(pipeline):
    report_dir = pipeline["model"] / "reports" / "test_set"
    report = json.loads((report_dir / "report.json").read_text())
    rows = list(csv.DictReader(open(report_dir / "predictions.csv")))
    correct = sum(r["true_class"] == r["predicted_class"] for r in rows)
    assert (report["correct"], report["total"]) == (correct, len(rows)) == (correct, 30)
    assert f"Total Correct: {correct}/{len(rows)}, Accuracy: {report['accuracy']:.4f}" in pipeline["test"]
    matrix = report["confusion_matrix"]
    assert sum(map(sum, matrix)) == len(rows)
    assert sum(matrix[i][i] for i in range(3)) == correct
    for row in rows:
        assert 0 < float(row["probability"]) <= 1
        assert row["predicted_class"] == row["top2"].split(" | ")[0]
    image = Image.open(report_dir / "confusion_matrix.png")
    assert image.size[0] > 200 and image.size[1] > 200


def test_lora_fine_tune_reaches_the_same_bar(pipeline):
    work = pipeline["work"]
    torch.manual_seed(0)
    base = tiny_models.build_tiny_smolvlm(work / "tiny-lora-base", head_std=0.2)
    run_script("fine_tune.py", f"--model_path={base}", "--output_dir=lora", "--use_lora=true",
               "--lora_r=16", "--lora_alpha=32", *TRAIN[:3], "--learning_rate=1e-2", *TRAIN[4:], cwd=work)
    assert not list((work / "lora").glob("adapter_*")), "the LoRA result should be merged into a full model"
    # the vision encoder stays frozen under LoRA, so "auto" trains without recomputing activations
    assert json.loads((work / "lora" / "run_config.json").read_text())["gradient_checkpointing"] is False
    run_script("vlm_benchmark_test_dataset.py", "--model_path=lora", cwd=work)
    assert accuracy_in(work / "lora" / "reports" / "test_set") >= 0.9


def test_vlm_test_scores_every_image_of_the_class_folders(pipeline):
    run_script("vlm_test.py", "--model_path=finetuned", "--dataset_dir=data", cwd=pipeline["work"])
    report = report_in(pipeline["model"] / "reports" / "full_dataset")
    assert report["total"] == 60 and report["accuracy"] >= 0.9


def test_vlm_test_on_unlabelled_images_writes_predictions_only(pipeline):
    work = pipeline["work"]
    (work / "loose").mkdir()
    for name in ("red", "blue"):
        (work / "loose" / f"{name}.png").write_bytes((work / "data" / name / f"{name}_00.png").read_bytes())
    out = run_script("vlm_test.py", "--model_path=finetuned", "--dataset_dir=loose", "--report_dir=loose_report",
                     cwd=work).stdout
    rows = list(csv.DictReader(open(work / "loose_report" / "predictions.csv")))
    assert {r["path"].rsplit("/", 1)[1]: r["predicted_class"] for r in rows} == {"blue.png": "blue", "red.png": "red"}
    assert all(r["true_class"] == "" for r in rows)
    assert not (work / "loose_report" / "report.json").exists() and "Total Correct" not in out
    one = run_script("vlm_test.py", "--model_path=finetuned", f"--dataset_dir={work / 'loose' / 'red.png'}",
                     "--report_dir=one", cwd=work).stdout
    assert "red.png: red (" in one


def test_every_run_records_what_it_ran_with(pipeline):
    config = json.loads((pipeline["model"] / "run_config.json").read_text())
    assert config["settings"]["max_steps"] == 120 and config["settings"]["learning_rate"] == 3e-3
    # the defaults train the classification head (benchmarks/README.md#accuracy: chosen on validation images)
    assert config["settings"]["objective"] == "head"
    assert json.loads((pipeline["model"] / "classes.json").read_text())["objective"] == "head"
    assert config["settings"]["output_dir"] == "finetuned" and config["dtype"] == "float32"
    # gradient_checkpointing="auto": on, since a full fine-tune trains the vision encoder
    assert config["settings"]["gradient_checkpointing"] == "auto" and config["gradient_checkpointing"] is True
    assert set(config["versions"]) == {"python", "torch", "transformers", "trl", "peft", "accelerate", "datasets"}
    report = report_in(pipeline["model"] / "reports" / "test_set")
    assert report["settings"]["model_path"] == "finetuned" and report["settings"]["prediction"] == "score"
    assert report["versions"]["transformers"] == config["versions"]["transformers"]


def test_vlm_test_asks_the_question_saved_with_the_model(pipeline):
    work = pipeline["work"]
    saved = json.loads((pipeline["model"] / "classes.json").read_text())
    saved["question"] = "Which colour is this? " + saved["question"]
    (pipeline["model"] / "classes.json").write_text(json.dumps(saved))
    try:
        out = run_script("vlm_test.py", "--model_path=finetuned", f"--dataset_dir={work / 'data' / 'red' / 'red_00.png'}",
                         "--report_dir=asked", cwd=work).stdout
    finally:
        saved["question"] = saved["question"].removeprefix("Which colour is this? ")
        (pipeline["model"] / "classes.json").write_text(json.dumps(saved))
    assert f"question: {saved['question']}" not in out and "question: Which colour is this? Classify" in out


def test_without_validation_images_no_temperature_is_fitted_and_the_reports_say_so(pipeline):
    assert "no temperature fitted (no validation images)" in pipeline["train"]
    assert json.loads((pipeline["model"] / "classes.json").read_text()).get("temperature") is None
    assert "no temperature saved with this model: the probabilities are uncalibrated" in pipeline["test"]
    section = report_in(pipeline["model"] / "reports" / "test_set")["calibration"]
    assert section["with_temperature"] is None and "--val_ratio" in section["note"]
    assert section["uncertain"] == 0 and section["without_temperature"]["ece"] >= 0
    assert (pipeline["model"] / "reports" / "test_set" / "reliability.png").is_file()
