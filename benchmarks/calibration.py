"""Benchmark: how well the probabilities are calibrated, before and after the temperature fine_tune.py fits on the
validation images, and the accuracy kept at 80% and 90% coverage ("not sure" below the threshold), on the accuracy
protocol's tasks (benchmarks/accuracy.py, benchmarks/tasks.py).

Each run is one of accuracy.py's development runs of a validating row: the tiny SmolVLM-architecture model of the
split's seed, trained from scratch for accuracy.py's TRAIN_SECONDS on the split's training images less a validation
share (accuracy.py's validating rows: --val_json and --min_validation_images=0), the class bias and the temperature
fitted on that share, then scored by vlm_benchmark_test_dataset.py on the split's scored images. DEVELOPMENT splits
only: the scored images are a share of each split's held-out side that no confirmation scores; the confirmation
seeds are never read. The runs are fixed in advance (TASKS x DEVELOPMENT_SPLITS x ROWS). The tiny model stands in
for the pretrained one, which no machine here can load: the numbers compare the probabilities with and without the
temperature on the same predictions; they say nothing about SmolVLM-256M's own calibration.

    HF_HUB_OFFLINE=1 python benchmarks/calibration.py --work_dir=./calibration-runs   # ~20 min on 2 cores
"""
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

import accuracy  # noqa: E402
from common import ROOT, command, flag, git, write_report  # noqa: E402
from ledger import FIRST_CONFIRMATION_SEED, code_hash  # noqa: E402
from tasks import TASK_DATA, build_model, prepare_split, run  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402
from vlmcls.files import write_json  # noqa: E402

TASKS = ["elpv2", "elpv4", "digits", "digits_small"]  # accuracy.py's tasks (tasks.TASK_DATA)
DEVELOPMENT_SPLITS = accuracy.DEVELOPMENT_SPLITS  # split seeds; never a confirmation seed (refused)
# rows: fine_tune.py settings, each trained with validation images (accuracy.py's "validate")
ROWS = {"head": {"objective": "head", "validate": True},  # fine_tune.py's default objective
        "answer": {**accuracy.ROWS["original"], "validate": True}}  # the original's recipe
COVERAGES = [0.9, 0.8]  # shares of the scored images kept (the most confident) whose accuracy the table gives
JOBS = 2  # runs at a time, each its own processes
THREADS = 1  # torch threads per script (OMP_NUM_THREADS)
WORK_DIR = ""  # data, models and runs; "": a temporary folder, removed at the end
OUTPUT = ""  # where the table is also written; "": benchmarks/results-calibration.md


def one_run(task, row, split, files, model, work):
    """fine_tune.py with validation, then vlm_benchmark_test_dataset.py on the scored images; returns the numbers
    of the report's "calibration" section and the temperature record fine_tune.py saved. A finished run of the same
    code and arguments is not repeated."""
    out = work / task / "calibration-runs" / f"{row}-dev-split{split}"
    out.mkdir(parents=True, exist_ok=True)
    args = accuracy.fine_tune_args(task, ROWS[row], files, split, model, out / "model")
    key = {"code": code_hash(), "args": args}
    if (out / "result.json").is_file() and (stored := json.loads((out / "result.json").read_text()))["key"] == key:
        return stored
    run("fine_tune.py", *args, cwd=out, log=out / "train.log", threads=THREADS)
    run("vlm_benchmark_test_dataset.py", f"--model_path={out / 'model'}", f"--test_json={files['score']}",
        f"--report_dir={out / 'report'}", f"--batch_size={accuracy.EVAL_BATCH}", "--resume=overwrite", cwd=out,
        log=out / "score.log", threads=THREADS)
    report = json.loads((out / "report" / "report.json").read_text())
    saved = json.loads((out / "model" / "classes.json").read_text())
    section = report["calibration"]
    result = {"key": key, "accuracy": report["accuracy"], "images": report["total"],
              "temperature": section["temperature"], "fit": saved.get("temperature"), "before": section["without_temperature"],
              "after": section["with_temperature"] or section["without_temperature"],
              "kept": {str(row["coverage"]): row for row in section["risk_coverage"]}}
    write_json(out / "result.json", result)
    return result


def cell(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def table(results):
    lines = ["| task | row | validation images | scored images | temperature | NLL before | NLL after | ECE before | "
             "ECE after | Brier before | Brier after | accuracy (all) | "
             + " | ".join(f"accuracy at {c:.0%} kept" for c in COVERAGES) + " |", "|---" * (12 + len(COVERAGES)) + "|"]
    for task in TASKS:
        for row in ROWS:
            runs = results[task][row]
            fitted = sum(r["temperature"] is not None for r in runs)
            lines.append(
                f"| {task} | {row} | {(runs[0]['fit'] or {}).get('validation_images', '-')} | {runs[0]['images']} | "
                f"{cell([r['temperature'] for r in runs], 2)}"
                f"{'' if fitted == len(runs) else f' ({len(runs) - fitted} of {len(runs)} not fitted)'} | "
                + " | ".join(cell([r[when][measure] for r in runs]) for measure in ("nll", "ece", "brier")
                             for when in ("before", "after"))
                + f" | {cell([r['accuracy'] for r in runs])} | "
                + " | ".join(cell([r["kept"][str(c)]["accuracy"] for r in runs]) for c in COVERAGES) + " |")
    return "\n".join(lines)


def report(results, started, elapsed):
    head = git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if git(
        "status", "--porcelain", "--untracked-files=no") else "")
    rows = "\n".join(f"- {name}: " + " ".join(flag(k, v) for k, v in spec.items() if k != "validate")
                     for name, spec in ROWS.items())
    return f"""# Calibration: the probabilities before and after the temperature (development splits)

{command("calibration.py")}

- Commit {head}, split seeds {DEVELOPMENT_SPLITS} (development: the confirmation seeds are never read); started
  {started}, {elapsed / 60:.1f} min, on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), {JOBS} runs at
  a time, {THREADS} thread(s) each.
- Model: accuracy.py's tiny SmolVLM (Idefics3) trained from scratch, a stand-in for the pretrained model: vision
  {accuracy.VISION[1]} layers x {accuracy.VISION[0]}, language {accuracy.TEXT[1]} layers x {accuracy.TEXT[0]},
  {accuracy.IMAGE_SIZE} px images, trained {accuracy.TRAIN_SECONDS} s (validation included) at accuracy.py's learning
  rates. **The numbers compare the probabilities with and without the temperature on the same predictions; they
  say nothing absolute, nor about SmolVLM-256M's own calibration.**
- Validation: each run trains on the split's training images less accuracy.py's validation share
  ({'; '.join(f"{t} {TASK_DATA[t]['val']}" for t in TASKS)} of each class's images), on which fine_tune.py picks
  the best checkpoint and fits the class bias, then the temperature (NLL minimised over log T).
- Scored: each split's development images (a share of the held-out side, {'; '.join(f"{t} {TASK_DATA[t]['dev']}"
  for t in TASKS)}), score mode, the class bias applied in both columns; "before" undoes only the temperature.
  NLL, Brier score and ECE (15 equal-width bins) are mean ± standard deviation over the splits. "accuracy at x
  kept": accuracy on the x most confident scored images (the others would be `uncertain`); accuracy (all) counts
  every image.

Rows (fine_tune.py settings, with validation):
{rows}

{table(results)}
"""


def main():
    if confirmation := [s for s in DEVELOPMENT_SPLITS if s >= FIRST_CONFIRMATION_SEED]:
        sys.exit(f"error: split seeds {confirmation} are confirmation seeds; this benchmark runs development splits "
                 f"only (below {FIRST_CONFIRMATION_SEED})")
    started, start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="calibration-benchmark-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        models = {s: build_model(work / f"model-{accuracy.IMAGE_SIZE}px-p{accuracy.PATCH_SIZE}s{accuracy.SCALE_FACTOR}"
                                        f"-v{accuracy.VISION[0]}x{accuracy.VISION[1]}-t{accuracy.TEXT[0]}x"
                                        f"{accuracy.TEXT[1]}-seed{s}", s, image_size=accuracy.IMAGE_SIZE,
                                 patch_size=accuracy.PATCH_SIZE, scale_factor=accuracy.SCALE_FACTOR,
                                 vision=accuracy.VISION, text=accuracy.TEXT) for s in DEVELOPMENT_SPLITS}
        files = {(t, s): prepare_split(t, s, work, confirm=False, size=accuracy.IMAGE_SIZE, threads=THREADS)
                 for t in TASKS for s in DEVELOPMENT_SPLITS}
        runs = [(task, row, s) for task in TASKS for s in DEVELOPMENT_SPLITS for row in ROWS]

        def one(spec):
            task, row, s = spec
            r = one_run(task, row, s, files[task, s], models[s], work)
            print(f"{task} {row} split {s}: T {r['temperature']}, ECE {r['before']['ece']:.4f} -> "
                  f"{r['after']['ece']:.4f}, NLL {r['before']['nll']:.4f} -> {r['after']['nll']:.4f}", flush=True)
            return r
        with ThreadPoolExecutor(JOBS) as pool:
            done = list(pool.map(one, runs))
    results = {task: {row: [] for row in ROWS} for task in TASKS}
    for (task, row, _), r in zip(runs, done):
        results[task][row].append(r)
    text = report(results, started, time.perf_counter() - start)
    write_report(text, OUTPUT or ROOT / "benchmarks" / "results-calibration.md")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
