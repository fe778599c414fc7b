"""Benchmark: the head objective against the answer objective on multi-label data made from real images, by mAP,
with paired bootstrap intervals over splits and images (issue 44, item 5).

The task: scikit-learn's 8x8 handwritten digits, 2 to 4 of them tiled into one IMAGE_SIZE px picture (a 2x2 grid,
empty cells white), the labels being the digits present (10 classes), each source digit used in one picture
only, made from SEED and written as images + labels.csv. Each picture falls, by its file name
(tasks.pool_of), into the development pool or the confirmation pool; this benchmark reads only the development
pool's labels.csv. The confirmation pool is written beside it and never read, for a later confirmation.

Each split seed splits the development pool with generate_train_json.py --labels_csv (--seed=split: the test
sides of different seeds overlap). Rows, all fine_tune.py settings (accuracy.py's fine_tune_args: its short
budget, batch, warm-up, image size; validation images choose the thresholds): head, answer, and their A/A rows
(the same recipe from seeds AA_SEED_OFFSET away). Each run is scored by vlm_benchmark_test_dataset.py on the
split's test images. Its learning rates are not chosen: each objective runs at LEARNING_RATES (below). The runs are
fixed in advance (SPLITS x ROWS). The tiny models are stand-ins trained from scratch: they compare the objectives,
nothing absolute.

    HF_HUB_OFFLINE=1 python benchmarks/multilabel.py     # ~12 min on one core
"""
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

import accuracy  # noqa: E402
from common import ROOT, command, commit, flag, now, write_report  # noqa: E402
from ledger import code_hash  # noqa: E402
from paired import bootstrap, mean_spread, verdict  # noqa: E402
from tasks import digit_images, pool_of, run  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402
from vlmcls.files import write_json  # noqa: E402

IMAGES = 500  # pictures made (both pools); each takes 2-4 of scikit-learn's 1,797 digits, none used twice
DIGITS_PER_IMAGE = [2, 4]  # fewest and most digits in a picture (2x2 grid: at most 4)
SEED = 0  # seed of the pictures: which digits, how many, in which cells
SPLITS = [0, 1, 2]  # generate_train_json.py split seeds (the model's and data order's seed too), fixed in advance
TRAIN_RATIO = 0.7  # generate_train_json.py's share for training and validation; the rest is scored
VAL_RATIO = 0.15  # its share taken from the training side to choose each class's threshold
# each objective's rate, not chosen here (no rate grid: too costly now): the rate the accuracy benchmark last ran
# both objectives at on the digits (protocol 2's development run, results-accuracy-development.md)
LEARNING_RATES = {"head": 2e-3, "answer": 2e-3}
ROWS = {"head": {"objective": "head"}, "answer": {"objective": "answer"}}  # fine_tune.py settings of each row
AA_SEED_OFFSET = accuracy.AA_SEED_OFFSET  # the A/A rows' model and data-order seed: the split's seed plus this
# validation once, at the end (it chooses the thresholds): the answer's (a question a class) takes seconds, and
# fine_tune.py's time limit, checked when a step ends, let the first run's mid-run validations overrun it by up to 17 s
EVAL_STEPS = 1_000_000_000
BOOTSTRAP = 1000  # bootstrap resamples of each mAP interval (each recomputes every class's AP)
THREADS = 1  # torch threads per script (OMP_NUM_THREADS)
WORK_DIR = ""  # pictures, models and runs; "": a temporary folder, removed at the end
OUTPUT = ""  # where the table is also written; "": benchmarks/results-multilabel.md


def write_pictures(folder):
    """IMAGES pictures of 2-4 digits each in folder/{development,confirmation}/ (images and labels.csv)."""
    import numpy as np
    from PIL import Image
    if (folder / "development" / "labels.csv").is_file():
        return
    cell = accuracy.IMAGE_SIZE // 2
    digits = list(digit_images(cell))
    rng = np.random.default_rng(SEED)
    order, used, rows = rng.permutation(len(digits)), 0, {"development": [], "confirmation": []}
    for i in range(IMAGES):
        count = int(rng.integers(DIGITS_PER_IMAGE[0], DIGITS_PER_IMAGE[1] + 1))
        if used + count > len(digits):
            sys.exit(f"error: --images={IMAGES} needs more than the {len(digits)} digits there are")
        picture = Image.new("L", (2 * cell, 2 * cell), 255)
        names = set()
        for place, k in zip(rng.choice(4, count, replace=False), order[used:used + count]):
            image, name = digits[k]
            picture.paste(image, (cell * (place % 2), cell * (place // 2)))
            names.add(name)
        used += count
        name = f"digits{i:04d}.png"
        pool = pool_of(name)
        (folder / pool / "images").mkdir(parents=True, exist_ok=True)
        picture.convert("RGB").save(folder / pool / "images" / name)
        rows[pool].append((f"images/{name}", ";".join(sorted(names))))
    for pool, listed in rows.items():
        (folder / pool / "labels.csv").write_text("image,labels\n" + "".join(f"{a},{b}\n" for a, b in listed))


def split(folder, seed):
    """generate_train_json.py's split of the development pool by `seed`: {"train", "val", "test"} JSON files."""
    out = folder / f"split-{seed}"
    files = {part: out / f"{part}.json" for part in ("train", "val", "test")}
    if not files["test"].is_file():
        out.mkdir(parents=True, exist_ok=True)
        run("generate_train_json.py", f"--labels_csv={folder / 'development' / 'labels.csv'}",
            f"--train_json={files['train']}", f"--val_json={files['val']}", f"--test_json={files['test']}",
            f"--train_ratio={TRAIN_RATIO}", f"--val_ratio={VAL_RATIO}", f"--seed={seed}", cwd=out,
            log=out / "generate.log", threads=THREADS)
    return files


def one_run(row, seed, files, model, model_seed, work):
    """fine_tune.py (accuracy.py's arguments, validating), then vlm_benchmark_test_dataset.py on the test images;
    returns report.json's measures with every scored image's truth and probabilities. A finished run of the same
    code and arguments is not repeated."""
    from vlmcls.multi_label import truth_matrix
    recipe = row.removeprefix("aa_")
    out = work / "runs" / f"{row}-split{seed}"
    unit = accuracy.Unit("smolvlm", accuracy.SHORT_SECONDS, "multilabel-digits", row, LEARNING_RATES[recipe], seed)
    given = {"train": files["train"], "validated_train": files["train"], "validated_val": files["val"]}
    args = [f"--eval_steps={EVAL_STEPS}" if a.startswith("--eval_steps=") else a for a in accuracy.fine_tune_args(
        unit, {**ROWS[recipe], "validate": True}, given, model_seed, model, out / "model")]
    key = {"code": code_hash(), "args": args, "test": str(files["test"])}
    if (out / "result.json").is_file() and (stored := json.loads((out / "result.json").read_text()))["key"] == key:
        return stored
    out.mkdir(parents=True, exist_ok=True)
    process_s = run("fine_tune.py", *args, cwd=out, log=out / "train.log", threads=THREADS)
    run("vlm_benchmark_test_dataset.py", f"--model_path={out / 'model'}", f"--test_json={files['test']}",
        f"--report_dir={out / 'report'}", f"--batch_size={accuracy.EVAL_BATCH}", "--resume=overwrite",
        f"--device={accuracy.DEVICE}", cwd=out, log=out / "score.log", threads=THREADS)
    history = json.loads((out / "model" / "train_log_history.json").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    test = json.loads(files["test"].read_text())
    classes = test["classes"]
    with open(out / "report" / "predictions.csv", newline="") as f:
        probs = {Path(r["path"]).name: [float(r[f"probability_{c}"]) for c in classes] for r in csv.DictReader(f)}
    samples = sorted(test["samples"], key=lambda s: s["image"])
    names = [Path(s["image"]).name for s in samples]
    if sorted(probs) != sorted(names):
        sys.exit(f"error: {out / 'report' / 'predictions.csv'} does not hold the test images of {files['test']}")
    result = {"key": key, **{k: report[k] for k in ("mean_average_precision", "micro_f1", "exact_set_accuracy")},
              "steps": max(e["step"] for e in history), "train_s": history[-1]["train_runtime"],
              "process_s": process_s, "classes": classes, "paths": names,
              "truth": truth_matrix([s["labels"] for s in samples], classes).tolist(),
              "probs": [probs[n] for n in names]}
    write_json(out / "result.json", result)
    return result


def map_interval(runs, baseline):
    """The mean mAP difference (row - baseline) over the splits, with its paired bootstrap interval: each resample
    recomputes every class's AP, and the mAP as report.json does, on the drawn images."""
    import numpy as np
    from vlmcls.multi_label import average_precisions, mean_average_precision
    units = []
    for run_, base in zip(runs, baseline, strict=True):
        if run_["paths"] != base["paths"]:
            sys.exit("error: paired runs score different images")
        units.append((np.array(run_["truth"], dtype=bool), np.array(run_["probs"]), np.array(base["probs"])))
    for (truth, row, _), run_ in zip(units, runs):  # the benchmark's mAP is the report's
        if abs(mean_average_precision(average_precisions(truth, row)) - run_["mean_average_precision"]) > 1e-9:
            sys.exit("error: the benchmark's mAP differs from the one its report.json recorded")

    def difference(truth, row, base):
        return mean_average_precision(average_precisions(truth, row)) - \
            mean_average_precision(average_precisions(truth, base))
    return bootstrap(units, difference, BOOTSTRAP)


def table(results):
    compare = {"answer": "head", "aa_head": "head", "aa_answer": "answer"}
    lines = ["| row | rate | mAP | micro-F1 | exact-set accuracy | compared with | mAP difference [95% CI] | steps | "
             "train s |", "|---" * 9 + "|"]
    for row, runs in results.items():
        base = compare.get(row)
        lines.append(
            f"| {row} | {LEARNING_RATES[row.removeprefix('aa_')]:g} | "
            f"{mean_spread([r['mean_average_precision'] for r in runs])} | {mean_spread([r['micro_f1'] for r in runs])} | "
            f"{mean_spread([r['exact_set_accuracy'] for r in runs])} | {base or '-'} | "
            f"{verdict(map_interval(runs, results[base])) if base else '-'} | "
            f"{statistics.mean(r['steps'] for r in runs):.0f} | {mean_spread([r['train_s'] for r in runs], 1)} |")
    return "\n".join(lines)


def chance(results):
    """Each class's share of the scored images (mean over the splits): a random score's AP is about it, so the
    mAP of chance is about their mean."""
    import numpy as np
    runs = next(iter(results.values()))
    shares = np.mean([np.mean(np.array(r["truth"], dtype=bool), axis=0) for r in runs], axis=0)
    return ", ".join(f"{c} {s:.2f}" for c, s in zip(runs[0]["classes"], shares)) + \
        f"; their mean (chance's mAP, about) **{shares.mean():.3f}**"


def report(results, started, elapsed, counts):
    rows = "\n".join(f"- {name}: " + " ".join(flag(k, v) for k, v in spec.items()) for name, spec in ROWS.items())
    return f"""# Multi-label: the head objective against the answer objective (digits tiled 2 to 4 a picture)

{command("multilabel.py")}

- Commit {commit()}, split seeds {SPLITS}; started {started}, {elapsed / 60:.1f} min, on {platform.node()}
  ({platform.machine()}, {os.cpu_count()} CPUs), one run at a time, {THREADS} thread(s) a script.
- **Tiny stand-ins trained from scratch: they compare the objectives, nothing absolute.** accuracy.py's SmolVLM
  stand-in (Idefics3, vision {accuracy.VISION[1]} layers x {accuracy.VISION[0]}, language {accuracy.TEXT[1]} layers x
  {accuracy.TEXT[0]}, SmolVLM-256M-Instruct's real tokenizer), initialised from the split's seed (A/A rows: the seed
  plus {AA_SEED_OFFSET}), {accuracy.IMAGE_SIZE} px pictures.
- Task: {IMAGES} pictures (seed {SEED}), each {DIGITS_PER_IMAGE[0]} to {DIGITS_PER_IMAGE[1]} of scikit-learn's 8x8
  digits ({accuracy.IMAGE_SIZE // 2} px each, nearest neighbour) in a 2x2 grid, empty cells white, no source digit
  in two pictures; labels: the digits present (10 classes). Development pool {counts['development']} pictures (the
  only ones read), confirmation pool {counts['confirmation']} (tasks.pool_of by file name), **held back, never read**,
  for a later confirmation.
- Splits: generate_train_json.py --labels_csv --train_ratio={TRAIN_RATIO} --val_ratio={VAL_RATIO} --seed=s (its
  multi-label stratified split; the scored sides of different seeds overlap). Each row trains
  {accuracy.SHORT_SECONDS} s (accuracy.py's short budget, --max_train_seconds), batch {accuracy.BATCH},
  {accuracy.WARMUP_STEPS} warm-up steps then constant; the validation images choose each class's threshold (F1).
- **No learning rate was chosen**: accuracy.py's rule (a grid of 3 rates on validation) is too costly now; each
  objective runs at the rate the accuracy benchmark last ran both at on the digits (protocol 2's development run):
  {', '.join(f'{k} {v:g}' for k, v in LEARNING_RATES.items())}. A rate that suits one objective less may decide the
  comparison.
- Scored by vlm_benchmark_test_dataset.py's report.json (mAP: macro mean of each class's average precision;
  micro-F1 and exact-set accuracy at the thresholds), mean ± standard deviation over the splits. The mAP
  differences are paired (same split and images), with a 95% bootstrap interval ({BOOTSTRAP} resamples: splits,
  then each drawn split's images, every class's AP and the mAP recomputed from predictions.csv's per-class
  probabilities). micro-F1 and exact-set accuracy carry no interval.
- Chance: each class's share of the scored images: {chance(results)}.
- Runs fixed in advance: {len(ROWS) * 2} rows x {len(SPLITS)} splits, every one reported below.

Rows (fine_tune.py settings; the A/A rows the same from other seeds):
{rows}

{table(results)}

Every run (row, split: mAP, micro-F1, exact-set accuracy, steps, training s):
{chr(10).join(f"- {row}, {s}: {r['mean_average_precision']:.3f}, {r['micro_f1']:.3f}, {r['exact_set_accuracy']:.3f}, "
              f"{r['steps']}, {r['train_s']:.1f}" for row, runs in results.items() for s, r in zip(SPLITS, runs))}
"""


def main():
    started, start = now(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="multilabel-benchmark-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        data = work / "multilabel-digits"
        write_pictures(data)
        counts = {pool: len(list((data / pool / "images").iterdir())) for pool in ("development", "confirmation")}
        runner = accuracy.Runner(work)
        results = {}
        for row in [*ROWS, *(f"aa_{r}" for r in ROWS)]:
            for seed in SPLITS:
                model_seed = seed + (AA_SEED_OFFSET if row.startswith("aa_") else 0)
                r = one_run(row, seed, split(data, seed), runner.model("smolvlm", model_seed), model_seed, work)
                print(f"{row} split {seed}: mAP {r['mean_average_precision']:.4f}, micro-F1 {r['micro_f1']:.4f}, "
                      f"exact-set {r['exact_set_accuracy']:.4f}, {r['steps']} steps in {r['train_s']:.1f} s", flush=True)
                results.setdefault(row, []).append(r)
    write_report(report(results, started, time.perf_counter() - start, counts),
                 OUTPUT or ROOT / "benchmarks" / "results-multilabel.md")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
