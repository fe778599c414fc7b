"""Benchmark: the head objective against the answer objective on multi-label data made from real images, by mAP,
under the accuracy protocol's rules (benchmarks/accuracy.py): rates chosen on development, the claim made on
confirmation splits that no choice looked at, planned in a ledger and run once (issue 44, item 5).

The task: scikit-learn's 8x8 handwritten digits, 2 to 4 of them tiled into one IMAGE_SIZE px picture (a 2x2 grid,
empty cells white), the labels being the digits present (10 classes), each source digit used in one picture
only, made from SEED and written as images + labels.csv. Each picture falls, by its file name
(tasks.pool_of), into the development pool or the confirmation pool, each with its own labels.csv.

Each split seed splits one pool with generate_train_json.py --labels_csv (--seed=split: the test sides of
different seeds overlap). Rows, all fine_tune.py settings (accuracy.py's fine_tune_args: its short budget, batch,
warm-up, image size; validation images choose the thresholds): head, answer, and their A/A rows (the same recipe
from seeds AA_SEED_OFFSET away, at its rate). Each run is scored by vlm_benchmark_test_dataset.py on the split's
test images. The tiny models are stand-ins trained from scratch: they compare the objectives, nothing absolute.

1. Development (the default): every row at every rate of LEARNING_RATES (accuracy.py's grid) on DEVELOPMENT_SPLITS
   of the development pool (seeds from 100 on are refused); each row's rate is the one of the best mean mAP on the
   splits' test images (development images: accuracy.choose_rate, a tie to the first rate). The choices, with
   every rate's mAP and the code hash, go to CHOICES; the grid to results-multilabel-development.md.
2. --plan=true records the confirmation in LEDGER (its seeds spent from then on) with the fingerprint that binds
   it (benchmarks/ledger.py: the code hash, the settings with the choices, the package versions), for committed
   code and choices made on this very code.
3. --confirm=true runs only that plan, committed in HEAD, on CONFIRMATION_SPLITS of the confirmation pool, in an
   empty work folder (or its own, stamped): the four rows at the chosen rates, SPLITS x ROWS runs fixed in
   advance, every one reported; answer - head paired by image with a bootstrap interval, the A/A rows as the
   control, "better" or "worse" only where the interval excludes 0. The ledger records its table's hash.

    HF_HUB_OFFLINE=1 python benchmarks/multilabel.py --work_dir=./multilabel-dev   # development, ~15 min a core
    HF_HUB_OFFLINE=1 python benchmarks/multilabel.py --plan=true   # after committing the choices; commit the ledger
    HF_HUB_OFFLINE=1 python benchmarks/multilabel.py --confirm=true   # once, ~10 min on one core
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
import ledger  # noqa: E402
from accuracy import choose_rate  # noqa: E402
from common import ROOT, command, commit, flag, now, write_report  # noqa: E402
from paired import bootstrap, excludes_zero, mean_spread, verdict  # noqa: E402
from tasks import digit_images, pool_of, run  # noqa: E402
from vlmcls.cli import configure, run_main, settings_of  # noqa: E402
from vlmcls.files import write_json  # noqa: E402

IMAGES = 500  # pictures made (both pools); each takes 2-4 of scikit-learn's 1,797 digits, none used twice
DIGITS_PER_IMAGE = [2, 4]  # fewest and most digits in a picture (2x2 grid: at most 4)
SEED = 0  # seed of the pictures: which digits, how many, in which cells
DEVELOPMENT_SPLITS = [0, 1, 2]  # split seeds of the development pool that the rates are chosen on (below 100)
CONFIRMATION_SPLITS = [100, 101, 102]  # split seeds of the confirmation pool, for --confirm only, fixed in advance
TRAIN_RATIO = 0.7  # generate_train_json.py's share for training and validation; the rest is scored
VAL_RATIO = 0.15  # its share taken from the training side to choose each class's threshold
LEARNING_RATES = accuracy.LEARNING_RATES  # the grid each row's rate is chosen from: the accuracy protocol's
ROWS = {"head": {"objective": "head"}, "answer": {"objective": "answer"}}  # fine_tune.py settings of each row
AA_SEED_OFFSET = accuracy.AA_SEED_OFFSET  # the A/A rows' model and data-order seed: the split's seed plus this
# validation once, at the end (it chooses the thresholds): the answer's (a question a class) takes seconds, and
# fine_tune.py's time limit, checked when a step ends, let the first run's mid-run validations overrun it by up to 17 s
EVAL_STEPS = 1_000_000_000
BOOTSTRAP = 1000  # bootstrap resamples of each mAP interval (each recomputes every class's AP)
THREADS = 1  # torch threads per script (OMP_NUM_THREADS)
CONFIRM = False  # run the planned confirmation (committed in HEAD's LEDGER) and record its table
PLAN = False  # record the confirmation in LEDGER and stop: commit the ledger, then run --confirm=true
WORK_DIR = ""  # pictures, models and runs; "": a temporary folder, removed (a confirmation: empty, "" or its own)
OUTPUT = ""  # where the table is also written; "": benchmarks/results-multilabel{-development,}.md

PROTOCOL = 1  # version of this benchmark's protocol (the docstring's); the ledger records it
LEDGER_PATH = "benchmarks/multilabel-confirmations.json"  # its own ledger: its seeds split other pictures
LEDGER = ROOT / LEDGER_PATH  # every confirmation: commit, fingerprint, split seeds, table hash
CHOICES = ROOT / "benchmarks" / "multilabel-choices.json"  # the development run's rates (in ledger.CHOSEN)
COMPARE = {"answer": "head", "aa_head": "head", "aa_answer": "answer"}  # each compared row and its baseline


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


def split(folder, pool, seed):
    """generate_train_json.py's split of one pool by `seed`: {"train", "val", "test"} JSON files."""
    out = folder / f"{pool}-split-{seed}"
    files = {part: out / f"{part}.json" for part in ("train", "val", "test")}
    if not files["test"].is_file():
        out.mkdir(parents=True, exist_ok=True)
        run("generate_train_json.py", f"--labels_csv={folder / pool / 'labels.csv'}",
            f"--train_json={files['train']}", f"--val_json={files['val']}", f"--test_json={files['test']}",
            f"--train_ratio={TRAIN_RATIO}", f"--val_ratio={VAL_RATIO}", f"--seed={seed}", cwd=out,
            log=out / "generate.log", threads=THREADS)
    return files


def one_run(row, rate, seed, files, model, model_seed, work):
    """fine_tune.py (accuracy.py's arguments, validating), then vlm_benchmark_test_dataset.py on the test images;
    returns report.json's measures with every scored image's truth and probabilities. A finished run of the same
    code and arguments is not repeated."""
    from vlmcls.multi_label import truth_matrix
    out = work / "runs" / f"{row}-lr{rate:g}-split{seed}"
    unit = accuracy.Unit("smolvlm", accuracy.SHORT_SECONDS, "multilabel-digits", row, rate, seed)
    given = {"train": files["train"], "validated_train": files["train"], "validated_val": files["val"]}
    args = [f"--eval_steps={EVAL_STEPS}" if a.startswith("--eval_steps=") else a for a in accuracy.fine_tune_args(
        unit, {**ROWS[row.removeprefix("aa_")], "validate": True}, given, model_seed, model, out / "model")]
    key = {"code": ledger.code_hash(), "args": args, "test": str(files["test"])}
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


def runs_of(plan, pool, splits, work, data):
    """{(row, rate): [result of each split]} of `plan` ({row: rates}) on the pool's splits, one run at a time."""
    runner, results = accuracy.Runner(work), {}
    for row, rates in plan.items():
        for rate in rates:
            for seed in splits:
                model_seed = seed + (AA_SEED_OFFSET if row.startswith("aa_") else 0)
                r = one_run(row, rate, seed, split(data, pool, seed), runner.model("smolvlm", model_seed),
                            model_seed, work)
                print(f"{row} lr {rate:g} split {seed}: mAP {r['mean_average_precision']:.4f}, micro-F1 "
                      f"{r['micro_f1']:.4f}, exact-set {r['exact_set_accuracy']:.4f}, {r['steps']} steps in "
                      f"{r['train_s']:.1f} s", flush=True)
                results.setdefault((row, rate), []).append(r)
    return results


def choose(results):
    """Each row's rate: the best mean mAP over the development splits (accuracy.choose_rate), with every rate's."""
    choices = {}
    for (row, rate), runs in results.items():
        choices.setdefault(row, {"validation": {}})["validation"][rate] = statistics.mean(
            r["mean_average_precision"] for r in runs)
    return {row: {"chosen": choose_rate(c["validation"]), **c} for row, c in choices.items()}


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


def table(results, compared, choices):
    """Every row at each rate it ran, mean ± standard deviation over the splits; in a confirmation, each compared
    row's mAP difference from its baseline (COMPARE) with the paired interval."""
    lines = ["| row | rate | mAP | micro-F1 | exact-set accuracy | compared with | mAP difference [95% CI] | steps | "
             "train s |", "|---" * 9 + "|"]
    for (row, rate), runs in results.items():
        chosen = not CONFIRM and choices["learning_rates"][row]["chosen"] == rate
        lines.append(
            f"| {row} | {f'**{rate:g}** (chosen)' if chosen else f'{rate:g}'} | "
            f"{mean_spread([r['mean_average_precision'] for r in runs])} | "
            f"{mean_spread([r['micro_f1'] for r in runs])} | "
            f"{mean_spread([r['exact_set_accuracy'] for r in runs])} | {COMPARE[row] if row in compared else '-'} | "
            f"{verdict(compared[row]) if row in compared else '-'} | "
            f"{statistics.mean(r['steps'] for r in runs):.0f} | {mean_spread([r['train_s'] for r in runs], 1)} |")
    return "\n".join(lines)


def claim(compared):
    """What the confirmation shows: answer - head, unless an A/A interval excludes 0 (then the intervals are not
    calibrated here and nothing is claimed)."""
    if off := [row for row in compared if row.startswith("aa_") and excludes_zero(compared[row])]:
        return f"**no claim**: the A/A interval of {', '.join(off)} excludes 0: the intervals are not calibrated here"
    observed, low, high, _ = compared["answer"]
    word = "better than" if low > 0 else "worse than" if high < 0 else "no different from (interval includes 0)"
    return f"the answer objective is **{word}** the head by mAP: {verdict(compared['answer'])}; both A/A intervals " \
           "include 0"


def chance(results):
    """Each class's share of the scored images (mean over the splits): a random score's AP is about it, so the
    mAP of chance is about their mean."""
    import numpy as np
    runs = next(iter(results.values()))
    shares = np.mean([np.mean(np.array(r["truth"], dtype=bool), axis=0) for r in runs], axis=0)
    return ", ".join(f"{c} {s:.2f}" for c, s in zip(runs[0]["classes"], shares)) + \
        f"; their mean (chance's mAP, about) **{shares.mean():.3f}**"


def report(results, compared, choices, bound, splits, started, elapsed, counts, code):
    kind = "confirmation" if CONFIRM else "development"
    rows = "\n".join(f"- {name}: " + " ".join(flag(k, v) for k, v in spec.items()) for name, spec in ROWS.items())
    rates = "; ".join(f"{row} **{c['chosen']:g}** (" + ", ".join(f"{float(lr):g}: {v:.3f}" for lr, v in
                                                            c["validation"].items()) + ")"
                      for row, c in choices["learning_rates"].items())
    if CONFIRM:
        scored = (f"the confirmation pool's test sides (no choice looked at them); the run planned in "
                  f"{LEDGER_PATH} with fingerprint {bound['digest']} (code {bound['code']}, the settings with the "
                  f"choices, package versions) and run once")
        ending = f"**The claim** (answer - head, paired): {claim(compared)}."
    else:
        scored = ("the development pool's test sides: development images, which the rates were chosen on (so these "
                  "numbers are no claim; a confirmation makes it)")
        ending = ""
    return f"""# Multi-label: the head objective against the answer objective ({kind} run, 2 to 4 digits a picture)

{command("multilabel.py")}

- {kind.capitalize()} run of commit {code}, split seeds {splits}; started {started}, {elapsed / 60:.1f} min, on
  {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), one run at a time, {THREADS} thread(s) a script.
- **Tiny stand-ins trained from scratch: they compare the objectives, nothing absolute.** accuracy.py's SmolVLM
  stand-in (Idefics3, vision {accuracy.VISION[1]} layers x {accuracy.VISION[0]}, language {accuracy.TEXT[1]} layers x
  {accuracy.TEXT[0]}, SmolVLM-256M-Instruct's real tokenizer), initialised from the split's seed (A/A rows: the seed
  plus {AA_SEED_OFFSET}), {accuracy.IMAGE_SIZE} px pictures.
- Task: {IMAGES} pictures (seed {SEED}), each {DIGITS_PER_IMAGE[0]} to {DIGITS_PER_IMAGE[1]} of scikit-learn's 8x8
  digits ({accuracy.IMAGE_SIZE // 2} px each, nearest neighbour) in a 2x2 grid, empty cells white, no source digit
  in two pictures; labels: the digits present (10 classes). Development pool {counts['development']} pictures,
  confirmation pool {counts['confirmation']} (tasks.pool_of by file name); this run read the {kind} pool only.
- Splits: generate_train_json.py --labels_csv --train_ratio={TRAIN_RATIO} --val_ratio={VAL_RATIO} --seed=s (its
  multi-label stratified split; the scored sides of different seeds overlap). Each row trains
  {accuracy.SHORT_SECONDS} s (accuracy.py's short budget, --max_train_seconds), batch {accuracy.BATCH},
  {accuracy.WARMUP_STEPS} warm-up steps then constant; the validation images choose each class's threshold (F1).
- Learning rates chosen by the development run from the accuracy protocol's grid {LEARNING_RATES}, each row's by the
  best mean mAP on the development splits {choices['splits']}' test sides (A/A rows: their recipe's): {rates}.
- Scored on {scored}: vlm_benchmark_test_dataset.py's report.json (mAP: macro mean of each class's average
  precision; micro-F1 and exact-set accuracy at the thresholds), mean ± standard deviation over the splits. The mAP
  differences are paired (same split and images), with a 95% bootstrap interval ({BOOTSTRAP} resamples: splits,
  then each drawn split's images, every class's AP and the mAP recomputed from predictions.csv's per-class
  probabilities); "better" or "worse" only where it excludes 0. micro-F1 and exact-set accuracy carry no interval.
- Chance: each class's share of the scored images: {chance(results)}.
- Runs fixed in advance: {len(results)} rows x {len(splits)} splits, every one reported below.

Rows (fine_tune.py settings; the A/A rows the same from other seeds):
{rows}

{table(results, compared, choices)}

{ending}

Every run (row, rate, split: mAP, micro-F1, exact-set accuracy, steps, training s):
{chr(10).join(f"- {row}, {rate:g}, {s}: {r['mean_average_precision']:.3f}, {r['micro_f1']:.3f}, "
              f"{r['exact_set_accuracy']:.3f}, {r['steps']}, {r['train_s']:.1f}"
              for (row, rate), runs in results.items() for s, r in zip(splits, runs))}
"""


def check(overrides):
    """Refuse what ledger.check_run refuses (development on confirmation seeds; a plan or confirmation of
    uncommitted code or choices, with overrides, on development or spent seeds, without choices), and a plan or
    confirmation of choices made on other code."""
    ledger.check_run(confirm=CONFIRM, plan=PLAN, splits=CONFIRMATION_SPLITS, development=DEVELOPMENT_SPLITS,
                     overrides=overrides, path=LEDGER, folder=WORK_DIR, choices=CHOICES)
    if (CONFIRM or PLAN) and (made := json.loads(Path(CHOICES).read_text())["code"]) != (code := ledger.code_hash()):
        sys.exit(f"error: {CHOICES} was chosen on code {made}, not this checkout's {code}: choose again on this code "
                 "(a development run) before confirming")


def main(overrides=()):
    check(overrides)
    choices = json.loads(Path(CHOICES).read_text()) if CONFIRM or PLAN else None
    splits = CONFIRMATION_SPLITS if CONFIRM or PLAN else DEVELOPMENT_SPLITS
    bound = ledger.fingerprint({k: v for k, v in settings_of(globals()).items() if k not in ledger.HARMLESS |
                                {"root", "ledger", "ledger_path", "choices"}} | {"choices": choices})
    machine = f"{accuracy.DEVICE}, {THREADS} thread(s) a script, {platform.machine()}, {os.cpu_count()} CPUs"
    started, start, code = now(), time.perf_counter(), commit()  # before the ledger records the start
    if PLAN:
        ledger.plan(LEDGER, {"commit": ledger.git("rev-parse", "--short", "HEAD").strip(), "fingerprint": bound,
                             "protocol": PROTOCOL, "splits": splits, "rows": list(ROWS), "machine": machine,
                             "planned": started})
        return
    if CONFIRM:
        ledger.begin(LEDGER, ledger.committed(LEDGER_PATH), WORK_DIR, splits, bound["digest"], started, machine)
        plan = {row: [choices["learning_rates"][row.removeprefix("aa_")]["chosen"]]
                for row in [*ROWS, *(f"aa_{r}" for r in ROWS)]}
    else:
        plan = {row: LEARNING_RATES for row in ROWS}
    pool = "confirmation" if CONFIRM else "development"
    with tempfile.TemporaryDirectory(prefix="multilabel-benchmark-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        data = work / "multilabel-digits"
        write_pictures(data)
        counts = {p: len(list((data / p / "images").iterdir())) for p in ("development", "confirmation")}
        results = runs_of(plan, pool, splits, work, data)
    if not CONFIRM:
        choices = {"learning_rates": choose(results), "splits": splits, "code": ledger.code_hash()}
        write_json(Path(CHOICES), choices)
    by_row = {row: runs for (row, _), runs in results.items()}
    compared = {row: map_interval(by_row[row], by_row[base]) for row, base in COMPARE.items()} if CONFIRM else {}
    output = OUTPUT or ROOT / "benchmarks" / f"results-multilabel{'' if CONFIRM else '-development'}.md"
    write_report(report(results, compared, choices, bound, splits, started, time.perf_counter() - start, counts, code),
                 output)
    if CONFIRM:
        ledger.finish(LEDGER, splits, Path(output).name, None, table(results, compared, choices))


if __name__ == "__main__":
    committed = settings_of(globals())
    configure(globals())
    run_main(lambda: main(overrides=[k for k, v in settings_of(globals()).items() if v != committed[k]]))
