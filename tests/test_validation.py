"""Validation while training (best checkpoint, early stopping) and class balance, through fine_tune.py."""
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import run_script
from vlmcls.training import balance_classes
from vlmcls.images import read_dataset_json
from vlmcls.validation import enough_validation, read_validation, share

FAST = ["--objective=answer", "--per_device_train_batch_size=4", "--gradient_accumulation_steps=1",
        "--learning_rate=3e-3", "--warmup_steps=5", "--logging_steps=5", "--gradient_checkpointing=false",
        "--min_validation_images=1"]


@pytest.fixture(scope="module")
def colour_jsons(tmp_path_factory, colour_dataset):
    """Training, validation and test JSON of the colour images, in a folder of their own."""
    folder = tmp_path_factory.mktemp("colour_jsons")
    run_script("generate_train_json.py", f"--dataset_dir={colour_dataset}", "--val_ratio=0.1", cwd=folder)
    return folder


def data_args(folder):
    return [f"--{part}_json={folder / f'solar_panel_{part}_dataset.json'}" for part in ("train", "val", "test")]


def test_every_process_gets_an_equal_consecutive_share_and_together_all():
    items = list("abcde")
    for world in (1, 2, 3, 4, 5, 6):
        shares = [share(items, rank, world) for rank in range(world)]
        assert len({len(s) for s in shares}) == 1, shares
        assert sum(shares, [])[:len(items)] == items
        assert set(sum(shares, [])) == set(items)


def test_oversampling_draws_every_class_equally_keeps_every_image_and_is_seeded():
    data = {"classes": ["rare", "common", "middle"],
            "samples": [{"image": f"{label}{i}.png", "label": label}
                        for label, n in (("common", 10), ("rare", 3), ("middle", 4)) for i in range(n)]}
    balanced = balance_classes(data, "oversample", seed=1)
    assert Counter(s["label"] for s in balanced["samples"]) == {"common": 10, "rare": 10, "middle": 10}
    assert {s["image"] for s in balanced["samples"]} == {s["image"] for s in data["samples"]}
    rare = Counter(s["image"] for s in balanced["samples"] if s["label"] == "rare")
    assert sorted(rare.values()) == [3, 3, 4]  # three whole repeats, then one more drawn at random
    assert balance_classes(data, "oversample", seed=1) == balanced
    assert any(balance_classes(data, "oversample", seed=s)["samples"] != balanced["samples"] for s in range(2, 12))
    assert data["samples"][0] == {"image": "common0.png", "label": "common"} and len(data["samples"]) == 17
    assert balance_classes(data, "none", seed=1) == data


def eval_entries(history):
    return [e for e in history if "eval_macro_f1" in e]


def test_early_stopping_ends_the_run_and_the_best_checkpoint_is_the_model_saved(tiny_smolvlm, colour_jsons, tmp_path):
    proc = run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", *data_args(colour_jsons), "--output_dir=out",
                      "--max_steps=100", "--eval_steps=5", "--early_stopping_patience=1", *FAST, cwd=tmp_path)
    out = tmp_path / "out"
    history = json.loads((out / "train_log_history.json").read_text())
    evals = eval_entries(history)
    scores = [e["eval_macro_f1"] for e in evals]
    assert all(0 <= e["eval_accuracy"] <= 1 for e in evals) and len(evals) >= 2
    # Patience 1: the run ended at the first evaluation that did not beat the best before it, long before 100.
    assert scores[-1] <= max(scores[:-1]) and all(b > a for a, b in zip(scores[:-2], scores[1:-1]))
    last_step = evals[-1]["step"]
    assert last_step < 100 and history[-1]["step"] == last_step
    best_step = evals[scores.index(max(scores))]["step"]
    assert best_step < last_step
    assert f"best checkpoint: out/checkpoint-{best_step} (validation macro_f1 {max(scores):.4f})" in proc.stdout
    # The saved model is the best checkpoint's weights, not the last one's; both checkpoints are kept.
    saved = load_file(out / "model.safetensors")
    best, last = (load_file(out / f"checkpoint-{s}" / "model.safetensors") for s in (best_step, last_step))
    assert saved.keys() == best.keys()
    assert all((saved[k] == best[k]).all() for k in saved)
    assert any((saved[k] != last[k]).any() for k in saved)
    # What a resumed run starts from: the best so far and the early-stopping count, in the last checkpoint.
    state = json.loads((out / f"checkpoint-{last_step}" / "trainer_state.json").read_text())
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{best_step}"
    assert state["best_metric"] == max(scores)
    assert state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"] == 1


def test_without_validation_images_training_runs_as_before_with_a_note(tiny_smolvlm, colour_jsons, tmp_path):
    common = [f"--model_path={tiny_smolvlm}", f"--train_json={colour_jsons / 'solar_panel_train_dataset.json'}",
              "--test_json=", "--max_steps=3", "--eval_steps=1", "--class_balance=oversample", *FAST]
    for val_json, why in (("", "val_json is empty"), ("missing.json", "missing.json does not exist")):
        proc = run_script("fine_tune.py", *common, f"--val_json={val_json}", f"--output_dir=out{val_json}",
                          cwd=tmp_path)
        assert f"note: {why}, so training runs without validation" in proc.stdout
        history = json.loads((tmp_path / f"out{val_json}" / "train_log_history.json").read_text())
        assert not eval_entries(history) and history[-1]["step"] == 3
        assert "best checkpoint" not in proc.stdout


def test_too_few_validation_images_train_instead_of_choosing(tiny_smolvlm, colour_jsons):
    train = read_dataset_json(colour_jsons / "solar_panel_train_dataset.json")
    val_json = colour_jsons / "solar_panel_val_dataset.json"
    n_val = len(read_dataset_json(val_json)["samples"])
    val = read_validation(val_json, train)
    kept_train, kept_val = enough_validation(train, val, min_images=n_val)
    assert kept_train == train and kept_val == val and len(val["samples"]) == n_val
    merged, none = enough_validation(train, val, min_images=n_val + 1)
    assert none is None
    assert merged["samples"] == train["samples"] + read_dataset_json(val_json)["samples"]
    assert merged["classes"] == train["classes"] and merged["question"] == train["question"]


def test_fine_tune_trains_on_too_few_validation_images_with_a_note(tiny_smolvlm, colour_jsons, tmp_path):
    proc = run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", *data_args(colour_jsons), "--test_json=",
                      "--max_steps=2", "--eval_steps=1", "--output_dir=out", *FAST, "--min_validation_images=1000",
                      cwd=tmp_path)
    assert "validation images, fewer than min_validation_images=1000" in proc.stdout
    history = json.loads((tmp_path / "out" / "train_log_history.json").read_text())
    assert not eval_entries(history) and "best checkpoint" not in proc.stdout
    assert json.loads((tmp_path / "out" / "classes.json").read_text())["class_bias"] is None


def test_bad_validation_settings_are_refused_with_the_reason(tiny_smolvlm, colour_jsons, tmp_path):
    metric = run_script("fine_tune.py", "--metric_for_best_model=loss", cwd=tmp_path, check=False)
    assert metric.returncode == 2 and "'loss' is not valid: use macro_f1, accuracy" in metric.stderr
    other = json.loads((colour_jsons / "solar_panel_val_dataset.json").read_text())
    other["classes"] = other["classes"][::-1]  # in another order, the score columns would not line up
    (tmp_path / "val.json").write_text(json.dumps(other))
    mismatch = run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", *data_args(colour_jsons)[:1],
                          f"--val_json={tmp_path / 'val.json'}", cwd=tmp_path, check=False)
    assert mismatch.returncode == 1 and "val.json: its classes or question differ" in mismatch.stderr


def test_a_resumed_run_keeps_the_best_checkpoint_so_far(tiny_smolvlm, colour_jsons, tmp_path):
    args = [f"--model_path={tiny_smolvlm}", *data_args(colour_jsons), "--test_json=", "--output_dir=out",
            "--max_steps=10", "--eval_steps=5", "--early_stopping_patience=5", *FAST]
    run_script("fine_tune.py", *args, cwd=tmp_path)
    out = tmp_path / "out"
    expected = eval_entries(json.loads((out / "train_log_history.json").read_text()))
    # As if killed before its last checkpoint: the run continues from checkpoint-5, which knows the best so far.
    (out / "train_log_history.json").unlink()
    shutil.rmtree(out / "checkpoint-10")
    proc = run_script("fine_tune.py", *args, cwd=tmp_path)
    assert "resuming from out/checkpoint-5" in proc.stdout
    history = json.loads((out / "train_log_history.json").read_text())
    scores = [e["eval_macro_f1"] for e in eval_entries(history)]
    assert [e["step"] for e in eval_entries(history)] == [5, 10]
    assert scores == pytest.approx([e["eval_macro_f1"] for e in expected])
    best_step = 5 if scores[0] >= scores[1] else 10
    saved, best = (load_file(out / p / "model.safetensors") for p in (".", f"checkpoint-{best_step}"))
    assert all((saved[k] == best[k]).all() for k in saved)
