"""Benchmark: a training step of the answer objective in two checkouts (BEFORE, AFTER), interleaved.

fine_tune.py of each checkout, run as the accuracy benchmark runs the original recipe (objective=answer, every
question, one row per pair, batch 16, one thread, CPU) for STEPS steps on its SmolVLM stand-in (2x64, the real
49,280-token tokenizer: tasks.build_model) and the digits split 0 (tasks.prepare_split). Each run's ms per step is
the Trainer's train_runtime over STEPS. Runs alternate (before, after; then after, before; ...) ROUNDS times, so that
a machine shared with other jobs slows both alike; the ratio before/after of each round is printed.

    git worktree add /tmp/before dbce19a   # the checkout to compare with
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/answer_loss.py --before=/tmp/before
"""
import json
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

from common import ROOT  # noqa: E402
from tasks import build_model, prepare_split, script_env  # noqa: E402

from vlmcls.cli import configure  # noqa: E402

BEFORE = ""  # the checkout to compare with (a folder holding fine_tune.py)
AFTER = str(ROOT)  # the checkout compared with it
WORK = "/tmp/answer-loss-benchmark"  # the stand-in, the images, the split and the runs' outputs
STEPS = 40  # training steps of each run
ROUNDS = 3  # runs of each checkout, fixed before the first


def run(checkout, work, model, train_json):
    """ms per training step of fine_tune.py in `checkout`."""
    out = work / "out"
    args = [f"--model_path={model}", f"--output_dir={out}", "--resume=overwrite", f"--train_json={train_json}",
            "--val_json=", "--min_validation_images=0", "--test_json=", f"--max_steps={STEPS}",
            "--per_device_train_batch_size=16", "--gradient_accumulation_steps=1", "--learning_rate=1e-3",
            "--warmup_steps=25", "--logging_steps=25", "--save_steps=1000000000", "--image_longest_edge=128",
            "--gradient_checkpointing=false", "--seed=0", "--device=cpu", "--objective=answer",
            "--train_questions=all", "--multi_turn=false"]
    proc = subprocess.run([sys.executable, str(Path(checkout) / "fine_tune.py"), *args], cwd=checkout,
                          env=script_env(1) | {"PYTHONPATH": str(checkout)}, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: fine_tune.py in {checkout} failed:\n{proc.stderr[-3000:]}")
    return 1000 * json.loads((out / "train_log_history.json").read_text())[-1]["train_runtime"] / STEPS


def main():
    if not BEFORE:
        sys.exit("error: --before=<a checkout to compare with> is needed")
    work = Path(WORK)
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / "smolvlm-128px-p16s2-v64x2-t64x2", 0, image_size=128, patch_size=16, scale_factor=2,
                        vision=(64, 2), text=(64, 2))
    train_json = prepare_split("digits", 0, work, confirm=False, size=128, threads=1)["train"]
    times = {"before": [], "after": []}
    for r in range(ROUNDS):
        order = [("before", BEFORE), ("after", AFTER)]
        for name, checkout in order if r % 2 == 0 else order[::-1]:
            times[name].append(run(checkout, work, model, train_json))
            print(f"round {r}: {name} {times[name][-1]:.1f} ms a step", flush=True)
    for name, values in times.items():
        print(f"{name}: {', '.join(f'{v:.1f}' for v in values)} ms a step (mean {sum(values) / len(values):.1f})")
    print("before/after by round: " + ", ".join(f"{b / a:.2f}x" for b, a in zip(times["before"], times["after"])))


if __name__ == "__main__":
    configure(globals())
    main()
