"""fine_tune.py as two processes under torchrun (CPU, gloo), and a killed run continued from its checkpoint."""
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, accuracy_in, run_script

PROCESSES = 2
BATCH = 4  # per process
FAST = ["--objective=answer", f"--per_device_train_batch_size={BATCH}", "--gradient_accumulation_steps=1",
        "--warmup_steps=5", "--gradient_checkpointing=false"]


@pytest.fixture(scope="module")
def colour_split(tmp_path_factory, colour_dataset):
    """Training and test JSON of the colour images; returns (train_json, test_json, training images)."""
    folder = tmp_path_factory.mktemp("colour_split")
    run_script("download_dataset.py", f"--source={colour_dataset}", f"--dataset_dir={folder / 'images'}", cwd=folder)
    run_script("generate_train_json.py", f"--dataset_dir={folder / 'images'}", f"--train_json={folder / 'train.json'}",
               f"--test_json={folder / 'test.json'}", cwd=folder)
    images = len(json.loads((folder / "train.json").read_text())["samples"])
    return folder / "train.json", folder / "test.json", images


def torchrun(*args):
    """The command line of fine_tune.py launched as PROCESSES processes by torchrun on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
            str(ROOT / "fine_tune.py"), *args]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_torchrun(*args, cwd):
    proc = subprocess.run(torchrun(*args), cwd=cwd, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def final_state(output_dir):
    """trainer_state.json of the newest checkpoint."""
    last = max(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return last, json.loads((last / "trainer_state.json").read_text())


def test_two_processes_train_one_model_that_classifies(tiny_smolvlm, colour_split, tmp_path):
    train_json, test_json, images = colour_split
    epochs = 12
    proc = run_torchrun(f"--model_path={tiny_smolvlm}", f"--train_json={train_json}", f"--test_json={test_json}",
                        "--output_dir=out", f"--equivalent_epochs_to_train={epochs}", "--learning_rate=6e-3",
                        "--class_balance=none", "--train_questions=classification", *FAST, cwd=tmp_path)

    # One output folder, written by the main process only; its summary lines appear once.
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert proc.stdout.count("saved the fine-tuned model to out") == 1, proc.stdout
    assert proc.stdout.count("test loss (classification answers)") == 1, proc.stdout
    assert (tmp_path / "out" / "classes.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()

    # Both ranks took part: each saved its random state, and each step consumed a batch per process, so the
    # epochs (one training row per image: the classification question) took half the steps one process needs.
    checkpoint, state = final_state(tmp_path / "out")
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert state["global_step"] == state["max_steps"] == epochs * math.ceil(images / (BATCH * PROCESSES))

    run_script("vlm_benchmark_test_dataset.py", "--model_path=out", f"--test_json={test_json}", cwd=tmp_path)
    assert accuracy_in(tmp_path / "out" / "reports" / "test_set") >= 0.9


def checkpoint_complete(output_dir):
    """Whether a checkpoint's trainer_state.json, which the Trainer writes last, is there and whole."""
    for path in Path(output_dir).glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(path.read_text())
            return True
        except json.JSONDecodeError:
            pass
    return False


def wait_for_checkpoint(proc, output_dir, timeout=300):
    deadline = time.monotonic() + timeout
    while not checkpoint_complete(output_dir):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


def logged_after(state, step):
    """(step, learning rate, loss) of each training log entry after `step`."""
    return [(e["step"], e["learning_rate"], e["loss"]) for e in state["log_history"]
            if "loss" in e and e["step"] > step]


def kill_all(proc):
    """SIGKILL a torchrun launcher and its workers (which torchrun starts in sessions of their own)."""
    workers = psutil.Process(proc.pid).children(recursive=True)
    for p in workers:
        p.kill()
    proc.kill()
    proc.wait()
    psutil.wait_procs(workers, timeout=30)


def test_killed_run_resumes_from_its_checkpoint_to_the_same_end(tiny_smolvlm, colour_split, tmp_path):
    train_json, _, _ = colour_split
    args = [f"--model_path={tiny_smolvlm}", f"--train_json={train_json}", "--test_json=",
            "--equivalent_epochs_to_train=4", "--learning_rate=3e-3", "--save_steps=5", "--logging_steps=5", *FAST]
    run_torchrun(*args, "--output_dir=uninterrupted", cwd=tmp_path)
    _, expected = final_state(tmp_path / "uninterrupted")

    # Both workers and the launcher are killed outright as soon as the first checkpoint is complete.
    out = tmp_path / "out"
    proc = subprocess.Popen(torchrun(*args, "--output_dir=out"), cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_checkpoint(proc, out)
    finally:
        kill_all(proc)
    assert not (out / "train_log_history.json").exists()
    saved, _ = final_state(out)
    # A kill while saving leaves a checkpoint without trainer_state.json; it must be passed over.
    step = int(saved.name.split("-")[1])
    (out / f"checkpoint-{step + 1}").mkdir()
    (out / f"checkpoint-{step + 1}" / "config.json").write_text("{}")

    proc = run_torchrun(*args, "--output_dir=out", cwd=tmp_path)
    assert [Path(p).name for p in re.findall(r"resuming from (\S+)", proc.stdout)] == [saved.name], proc.stdout
    _, state = final_state(out)
    assert state["global_step"] == state["max_steps"] == expected["global_step"] == expected["max_steps"]
    # Optimizer, schedule, weights and data order were restored: the steps after the checkpoint log what the
    # uninterrupted run logged.
    later, reference = logged_after(state, step), logged_after(expected, step)
    assert later and [s for s, _, _ in later] == [s for s, _, _ in reference]
    for (_, lr, loss), (_, lr_ref, loss_ref) in zip(later, reference):
        assert lr == pytest.approx(lr_ref) and loss == pytest.approx(loss_ref, rel=1e-3)

    # Started again once finished, the same command refuses to replace the finished run.
    again = run_script("fine_tune.py", *args, "--output_dir=out", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "holds a finished run" in again.stderr


def test_two_processes_share_the_validation_and_report_what_one_process_measures(tiny_smolvlm, tmp_path):
    from conftest import load_tiny, make_colour_images
    from vlmcls.images import read_dataset_json
    from vlmcls.validation import measure

    make_colour_images(tmp_path / "images", per_class=10)
    run_script("generate_train_json.py", "--dataset_dir=images", "--question_templates=[]", "--val_ratio=0.1",
               cwd=tmp_path)
    val = read_dataset_json(tmp_path / "solar_panel_val_dataset.json")
    images = len(val["samples"])
    assert images % PROCESSES, "an uneven count, so that one share is padded"
    steps = 8
    proc = run_torchrun(f"--model_path={tiny_smolvlm}", "--output_dir=out", f"--max_steps={steps}",
                        f"--eval_steps={steps}", "--learning_rate=3e-3", "--per_device_eval_batch_size=2",
                        "--min_validation_images=1", *FAST,
                        cwd=tmp_path)
    # Each process classified its half (one image repeated to even the shares up), not every image.
    for rank in range(PROCESSES):
        shares = re.findall(rf"validation, process {rank}: 100%\S* (\d+)/(\d+)", proc.stderr)
        assert shares and all(int(n) == math.ceil(images / PROCESSES) for n, _ in shares), proc.stderr[-3000:]
    history = json.loads((tmp_path / "out" / "train_log_history.json").read_text())
    logged = [e for e in history if "eval_macro_f1" in e]
    assert [e["step"] for e in logged] == [steps]
    assert proc.stdout.count("validation accuracy") == 1

    # The saved model (the one evaluated) measured by one process gives the numbers logged.
    processor, model = load_tiny(tmp_path / "out")
    single = measure(model, processor, val, batch_size=3)
    assert single["total"] == images
    assert (logged[0]["eval_accuracy"], logged[0]["eval_macro_f1"]) == \
        (pytest.approx(single["accuracy"]), pytest.approx(single["macro_f1"]))
    # The class bias was chosen on every validation image, gathered from both processes, as one process scores them.
    fitted = json.loads((tmp_path / "out" / "classes.json").read_text())["class_bias"]
    assert fitted["validation_images"] == images and fitted["validation_before"] == pytest.approx(single["macro_f1"])


def test_a_time_limit_ends_every_process_at_the_same_step(tiny_smolvlm, colour_split, tmp_path):
    train_json, _, _ = colour_split
    # Were each process to read its own clock, one could stop a step before the other, which would then wait for
    # it forever: the timeout turns such a hang into a failure.
    proc = subprocess.run(torchrun(f"--model_path={tiny_smolvlm}", f"--train_json={train_json}", "--test_json=",
                                   "--output_dir=out", "--max_steps=100000", "--max_train_seconds=3",
                                   "--save_steps=100000", *FAST), cwd=tmp_path, capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ended = re.findall(r"max_train_seconds=3: training ends at step (\d+)", proc.stdout)
    assert len(ended) == 1  # said once, by the main process
    history = json.loads((tmp_path / "out" / "train_log_history.json").read_text())
    assert history[-1]["step"] == int(ended[0]) < 100000
    assert history[-1]["train_runtime"] < 60


def saved_weights(folder):
    """Every tensor of a saved model folder (the base model's and the head's), by file and name."""
    from safetensors.torch import load_file
    return {(file.name, name): tensor for file in Path(folder).glob("*.safetensors")
            for name, tensor in load_file(str(file)).items()}


def test_two_processes_train_the_head_one_process_trains(tiny_smolvlm, colour_split, tmp_path):
    import torch
    train_json, test_json, images = colour_split
    steps, eval_batch = 3, 3
    assert images >= steps * BATCH * PROCESSES  # full batches only, which both runs split alike
    # The Trainer weighs a padded last evaluation batch otherwise in either run: full ones give both the exact mean.
    assert len(json.loads(test_json.read_text())["samples"]) % (eval_batch * PROCESSES) == 0
    args = [f"--model_path={tiny_smolvlm}", f"--train_json={train_json}", f"--test_json={test_json}", "--val_json=",
            "--objective=head", f"--max_steps={steps}", "--learning_rate=3e-3", "--warmup_steps=1",
            f"--per_device_train_batch_size={BATCH}", f"--per_device_eval_batch_size={eval_batch}", "--num_workers=0"]
    two = run_torchrun(*args, "--output_dir=two", "--gradient_accumulation_steps=1", cwd=tmp_path)
    # One process accumulates, in each step, the batches that the two processes take side by side.
    one = run_script("fine_tune.py", *args, "--output_dir=one", f"--gradient_accumulation_steps={PROCESSES}",
                     cwd=tmp_path)

    loss = r"test loss \(head cross-entropy\): (\S+)"
    assert re.findall(loss, two.stdout) == re.findall(loss, one.stdout) != []
    # Were the head's gradients not averaged across the processes (its forward outside DDP's wrapper, say) or the
    # batches not split between them, the main process would save a head and backbone trained otherwise. The
    # weights moved by over 1e-3; the runs differ by rounding (about 3e-8).
    expected, got = saved_weights(tmp_path / "one"), saved_weights(tmp_path / "two")
    assert got.keys() == expected.keys() and ("classifier.safetensors", "weight") in got
    base = saved_weights(tiny_smolvlm)
    assert max((expected[key] - base[key]).abs().max() for key in base) > 1e-3
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=lambda m: f"{key}: {m}")
