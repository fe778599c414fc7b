"""Benchmark: the training recipes compared on real image sets at equal training time, under a fixed protocol.

For every architecture, budget, task, split seed and row (a recipe: fine_tune.py settings, or a small CNN), a
tiny model initialised from the split's seed is trained from scratch and scored on the split's scored images. The
project's scripts run as separate processes, as a user runs them (download_dataset.py, generate_train_json.py,
fine_tune.py, vlm_benchmark_test_dataset.py). The tiny models (a SmolVLM and a LLaVA, with SmolVLM-256M-Instruct's
real tokenizer) stand in for pretrained ones, which no machine here can load: the numbers compare recipes, they
say nothing absolute.

The protocol (PROTOCOL, version 4), enforced by this script and benchmarks/ledger.py:
1. Two pools. Each image set is split once, by file name (tasks.POOL_SALT), into a development pool and a
   confirmation pool. Development runs read only the first, confirmations only the second. Each split seed s
   scores fold s % folds of its pool's disjoint folds (tasks.FOLDS): the splits of a run are whole blocks of
   folds, so no image is scored twice in a run.
2. Choose on development. A development run (the default, DEVELOPMENT_SPLITS, seeds below 100 only) chooses each
   row's learning rate from LEARNING_RATES (one grid for every row, the CNN's included), per architecture, budget
   and task, by the mean macro-F1 on its scored (validation) images, and fixes each image set's longer budget by the
   rule of long_budget. It records both, with the validation numbers, in CHOICES.
3. Claim on confirmation, planned first. --plan=true records the confirmation in LEDGER (its seeds are spent from
   then on) with the fingerprint that binds it: the hash of every tracked file that can change a number, the
   effective settings (the choices included) and the package versions. --confirm=true then runs it once, on an
   empty work folder, only if that entry is in HEAD's ledger (committed) with the same fingerprint, for committed
   code with the committed settings. It records the rule's output and a hash of its table in the entry.
4. Equal realized time: every row of a budget trains for its seconds (the longer budget: its image set's;
   fine_tune.py's --max_train_seconds, no step limit, so the learning rate is constant after warm-up); the table
   marks a row with a run more than EQUAL_TIME_TOLERANCE away.
5. Paired comparisons: each row against the row named by its "compare_with" (BASELINE unless given) on the same
   splits and scored images: the mean difference with a 95% bootstrap interval and p-value (splits, then the images
   of each). The family the rule reads (every candidate recipe against BASELINE in every cell) is Holm-adjusted:
   "better" needs a Holm-adjusted p below 0.05; "worse" needs only the unadjusted interval below 0, so that the
   adjustment never hides a loss.
6. A/A rows: BASELINE's and DEFAULT_ROW's recipes again from seeds AA_SEED_OFFSET away, each against itself, in
   every cell. Where one excludes 0 the cell is not calibrated and no "better" counts there. The report counts how
   often A/A intervals exclude 0 over all of them; the intervals are called honest only from AA_MIN_DRAWS draws
   or more whose exclusion rate's 95% upper bound is at most AA_MAX_RATE.
7. The rule for the default, fixed before any run: a recipe becomes the default only if it was run in every cell
   (both architectures, both budgets, every task), is worse than BASELINE in none, and is better in a calibrated
   cell of at least one data set (digits and digits_small are one); of several, the largest mean macro-F1
   difference. If none qualifies, the default is BASELINE's recipe.

    HF_HUB_OFFLINE=1 python benchmarks/accuracy.py --work_dir=./accuracy-runs     # development (resumable)
    HF_HUB_OFFLINE=1 python benchmarks/accuracy.py --plan=true                     # then commit confirmations.json
    HF_HUB_OFFLINE=1 python benchmarks/accuracy.py --confirm=true                  # once, on a temporary folder
    HF_HUB_OFFLINE=1 python benchmarks/accuracy.py --architectures='{"smolvlm": ["digits"]}' --short_seconds=2 \
        --budget_ladder='[4, 8]' --learning_rates='[1e-3]' --rows='{"original": {"objective": "answer"}, "head": {}}' \
        --few_rows='["original", "head"]' --development_rows='{}' --aa_rows='["original"]' --long_splits=2 \
        --bootstrap=200 --work_dir=/tmp/smoke --output=/tmp/smoke.md --choices=/tmp/smoke.json  # smoke check
"""
import csv
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
from typing import NamedTuple

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

import fine_tune  # noqa: E402
import ledger  # noqa: E402
from common import ROOT, command, flag, write_report  # noqa: E402
from paired import aa_rate, better, excludes_zero, holm, mean_spread, paired_interval, verdict  # noqa: E402
from tasks import DATA_SET, FOLDS, IMAGE_SET, TASK_DATA, build_model, prepare_split, run  # noqa: E402
from vlmcls.cli import configure, run_main, settings_of  # noqa: E402
from vlmcls.files import write_json  # noqa: E402

TASKS = ["elpv2", "elpv4", "digits", "digits_small"]  # names from tasks.TASK_DATA
ARCHITECTURES = {"smolvlm": TASKS, "llava": ["elpv2", "digits"]}  # stand-in (tasks.ARCHITECTURES) -> its tasks
# recipe -> fine_tune.py settings. Keys of the benchmark's own: validate (validation images, used whatever their
# number), compare_with (instead of BASELINE), cnn (benchmarks/cnn_baseline.py instead of fine_tune.py)
ROWS = {
    "original": {"objective": "answer", "train_questions": "all", "multi_turn": False},  # the original's recipe
    "answer_classification": {"objective": "answer", "train_questions": "classification", "multi_turn": False},
    "answer_multi_turn": {"objective": "answer", "train_questions": "all", "multi_turn": True},
    "head": {"objective": "head"},  # every weight trained: fine_tune.py's default
    "head_lora": {"objective": "head", "use_lora": True},  # LoRA adapters instead of every weight
    "head_frozen": {"objective": "head", "freeze_backbone": True},  # the head alone on the frozen backbone's states
    "cnn": {"cnn": True, "compare_with": "original"},  # a small CNN from scratch: is a VLM worth it here?
}
# the rows of the longer budget and of the LLaVA stand-in (the SmolVLM stand-in's short budget runs every row)
FEW_ROWS = ["original", "answer_classification", "head", "cnn"]
# rows of development runs only (SmolVLM, short budget): the validation decision, each against its recipe without
# validation, whose training images include the validation images
DEVELOPMENT_ROWS = {
    "original_validated": {**ROWS["original"], "validate": True, "compare_with": "original"},
    "head_validated": {**ROWS["head"], "validate": True, "compare_with": "head"},
}
BASELINE = "original"  # the row every recipe is compared with, and the default where no recipe qualifies
DEFAULT_ROW = "head"  # the row fine_tune.py's defaults train (checked against the ledger's latest decision)
AA_ROWS = ["original", "head"]  # rows run again from other seeds ("aa_<row>") against themselves in every cell
AA_SEED_OFFSET = 10_000  # the A/A rows' model and data-order seed: the split's seed plus this
AA_MIN_DRAWS = 40  # A/A intervals needed before the report may call the intervals honest
AA_MAX_RATE = 0.10  # ... and the most their exclusion rate's 95% upper bound may be
DEVELOPMENT_SPLITS = [0, 1, 2]  # split seeds that choices are made on: the development pool's 3 folds
CONFIRMATION_SPLITS = [400, 401, 402, 403, 404]  # split seeds of --confirm: the confirmation pool's 5 folds, unspent
LONG_SPLITS = 3  # the longer budget runs the first this many split seeds of a run (and of a development grid: 2)
CONFIRM = False  # run the planned confirmation (committed in HEAD's ledger) and record its decision
PLAN = False  # record the confirmation in LEDGER and stop: commit the ledger, then run --confirm=true
SHORT_SECONDS = 12  # the short budget: every row's training seconds (fine_tune.py's --max_train_seconds)
# the longer budget's candidates: development fixes, for each image set, the first one after which the next adds at
# most LEVEL_TOLERANCE to the original's validation macro-F1 on every task and stand-in of it (the last if none)
BUDGET_LADDER = [24, 48, 96, 192, 384, 768]
LEVEL_TOLERANCE = 0.02  # macro-F1: "levelled off"
LEARNING_RATES = [3e-4, 1e-3, 3e-3]  # the one grid every row's peak learning rate is chosen from, the CNN's too
EQUAL_TIME_TOLERANCE = 0.1  # a run whose realized training seconds are further from its budget is marked
BATCH = 16  # training rows per step (one process, no gradient accumulation)
WARMUP_STEPS = 25  # linear warm-up, then constant: the time limit, not a step count, ends a run
EVAL_STEPS = 50  # validation interval of the rows that validate (and one at the end)
BOOTSTRAP = 5000  # bootstrap resamples of the paired intervals (p-values down to 0.0004, for Holm)
IMAGE_SIZE = 128  # pixels: the stand-ins' tile or crop and fine_tune.py's --image_longest_edge
PATCH_SIZE = 16  # vision patch size: (IMAGE_SIZE / PATCH_SIZE)^2 patches per image (LLaVA: SCALE_FACTOR^2 fewer)
SCALE_FACTOR = 2  # SmolVLM's pixel shuffle: image tokens = patches / SCALE_FACTOR^2 (LLaVA: patches that much larger)
VISION = [64, 2]  # the stand-ins' vision encoder: hidden size and layers
TEXT = [64, 2]  # the stand-ins' language model: hidden size and layers
EVAL_BATCH = 32  # images per forward pass when validating and scoring
JOBS = 2  # runs at a time, each its own processes (as many as there are idle cores)
THREADS = 1  # torch threads per script (OMP_NUM_THREADS): a tiny model's threads only wait on each other
DEVICE = "cpu"  # every script's --device; the scripts see no accelerator (tasks.SCRIPT_ENV)
WORK_DIR = ""  # data, models and runs; "": a temporary folder, removed (a confirmation: empty, "" or its own)
OUTPUT = ""  # where the table is also written; "": benchmarks/results-accuracy-{development,confirmation}.md

PROTOCOL = 4  # version of the protocol above; the ledger records it
LEDGER = ROOT / ledger.LEDGER_PATH  # every confirmation: commit, fingerprint, split seeds, decision
CHOICES = ROOT / "benchmarks" / "accuracy-choices.json"  # the development run's learning rates and longer budgets
OWN = ("validate", "compare_with", "cnn", "seed_offset")  # row keys that are not fine_tune.py's


class Unit(NamedTuple):
    """One run: the stand-in ("cnn" for the CNN, which has none), budget seconds, task, row, rate, split seed."""
    architecture: str
    seconds: float
    task: str
    row: str
    rate: float
    split: int


def row_specs(architecture, budget):
    """The rows of one architecture at one budget ("short" or "long"): every row (SmolVLM, short) or FEW_ROWS, the
    development rows (development, SmolVLM, short) and the A/A rows."""
    every = architecture == "smolvlm" and budget == "short"
    rows = {name: spec for name, spec in ROWS.items() if every or name in FEW_ROWS}
    if every and not CONFIRM:
        rows.update(DEVELOPMENT_ROWS)
    aa = {f"aa_{r}": {**ROWS[r], "compare_with": r, "seed_offset": AA_SEED_OFFSET} for r in AA_ROWS if r in rows}
    return {**rows, **aa}


def cells():
    """Every (architecture, budget, task) of this run."""
    return [(a, b, t) for b in ("short", "long") for a, tasks in ARCHITECTURES.items() for t in tasks]


def seconds_of(long_seconds, budget, task):
    """A budget's training seconds for a task: SHORT_SECONDS, or the longer budget fixed for its image set."""
    return SHORT_SECONDS if budget == "short" else long_seconds[IMAGE_SET[task]]


def rate_of(choices, architecture, budget, task, row):
    """A row's chosen learning rate; an A/A or validating row takes that of the row it is compared with."""
    spec = row_specs(architecture, budget)[row]
    recipe = spec.get("compare_with", row) if row not in ROWS else row
    return choices["learning_rates"][budget][architecture][task][recipe]["chosen"]


def fine_tune_args(unit, spec, files, seed, model, out):
    """fine_tune.py's command line for a row: the benchmark's common settings, then the row's own."""
    validate = spec.get("validate", False)
    return [f"--model_path={model}", f"--output_dir={out}", "--resume=overwrite",
            f"--train_json={files['validated_train' if validate else 'train']}",
            f"--val_json={files['validated_val'] if validate else ''}", "--min_validation_images=0", "--test_json=",
            "--max_steps=1000000000", f"--max_train_seconds={unit.seconds}", f"--per_device_train_batch_size={BATCH}",
            "--gradient_accumulation_steps=1", f"--learning_rate={unit.rate}", f"--warmup_steps={WARMUP_STEPS}",
            "--logging_steps=25", "--save_steps=1000000000", f"--eval_steps={EVAL_STEPS}",
            f"--per_device_eval_batch_size={EVAL_BATCH}", f"--image_longest_edge={IMAGE_SIZE}",
            "--gradient_checkpointing=false", f"--seed={seed}", f"--device={DEVICE}",
            *[flag(k, v) for k, v in spec.items() if k not in OWN]]


def run_key(args):
    """What makes two runs the same run: the code, the package versions, the arguments, and fine_tune.py's
    defaults the arguments leave in force."""
    given = {a[2:].split("=")[0] for a in args}
    defaults = {k: v for k, v in settings_of(vars(fine_tune)).items() if k not in given}
    return {"code": ledger.code_hash(), "versions": ledger.versions(), "args": args, "fine_tune_defaults": defaults}


def predictions(report_dir):
    with open(report_dir / "predictions.csv", newline="") as f:
        return sorted((r["path"], r["true_class"], r["predicted_class"]) for r in csv.DictReader(f))


def spec_of(unit):
    return ROWS[unit.row] if unit.architecture == "cnn" else row_specs(unit.architecture, "short" if unit.seconds
                                                                       == SHORT_SECONDS else "long")[unit.row]


def train_and_score(unit, files, model, work):
    """One run: the row's training, then its predictions on the split's scored images; returns its numbers with
    the prediction for every scored image. A finished run of the same code and settings is not repeated."""
    spec = spec_of(unit)
    seed = unit.split + spec.get("seed_offset", 0)
    out = work / unit.task / "runs" / unit.architecture / f"{unit.seconds:g}s" / \
        f"{unit.row}-lr{unit.rate:g}-{'split' if CONFIRM else 'dev-split'}{unit.split}"
    report_dir = out / "report"
    if spec.get("cnn"):
        args = [f"--train_json={files['train']}", f"--test_json={files['score']}", f"--report_dir={report_dir}",
                f"--max_train_seconds={unit.seconds}", f"--image_size={IMAGE_SIZE}", f"--batch={BATCH}",
                f"--learning_rate={unit.rate}", f"--seed={seed}"]
    else:
        args = fine_tune_args(unit, spec, files, seed, model, out / "model")
    key = run_key(args)
    if (out / "result.json").is_file() and (stored := json.loads((out / "result.json").read_text()))["key"] == key:
        return stored
    out.mkdir(parents=True, exist_ok=True)
    if spec.get("cnn"):
        process_s = run("benchmarks/cnn_baseline.py", *args, cwd=out, log=out / "train.log", threads=THREADS)
        report = json.loads((report_dir / "report.json").read_text())
        steps, train_s, bias, score_s = report["steps"], report["train_seconds"], None, 0.0
    else:
        process_s = run("fine_tune.py", *args, cwd=out, log=out / "train.log", threads=THREADS)
        history = json.loads((out / "model" / "train_log_history.json").read_text())
        steps, train_s = max(e["step"] for e in history), history[-1]["train_runtime"]
        bias = json.loads((out / "model" / "classes.json").read_text())["class_bias"]
        score_s = run("vlm_benchmark_test_dataset.py", f"--model_path={out / 'model'}", f"--test_json={files['score']}",
                      f"--report_dir={report_dir}", f"--batch_size={EVAL_BATCH}", "--resume=overwrite",
                      f"--device={DEVICE}", cwd=out, log=out / "score.log", threads=THREADS)
        report = json.loads((report_dir / "report.json").read_text())
    scored = predictions(report_dir)
    result = {"key": key, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "steps": steps,
              "train_s": train_s, "process_s": process_s, "score_s": score_s, "images": len(scored),
              "bias_strength": (bias or {}).get("strength"), "classes": report["classes"],
              "paths": [p for p, _, _ in scored], "true": [t for _, t, _ in scored], "pred": [p for _, _, p in scored]}
    write_json(out / "result.json", result)
    return result


class Runner:
    """Runs units JOBS at a time in one work folder, each once; the models and split files they need are made
    on first use."""

    def __init__(self, work):
        self.work, self.done = work, {}

    def model(self, architecture, seed):
        return build_model(self.work / f"{architecture}-{IMAGE_SIZE}px-p{PATCH_SIZE}s{SCALE_FACTOR}-v{VISION[0]}x"
                                       f"{VISION[1]}-t{TEXT[0]}x{TEXT[1]}-seed{seed}", seed, image_size=IMAGE_SIZE,
                           patch_size=PATCH_SIZE, scale_factor=SCALE_FACTOR, vision=VISION, text=TEXT,
                           architecture=architecture)

    def __call__(self, units):
        """{unit: result} for every unit; the CNN's units of every stand-in are one run (architecture "cnn")."""
        same = {u: u._replace(architecture="cnn") if ROWS.get(u.row, {}).get("cnn") else u for u in units}
        todo = sorted(set(same.values()) - self.done.keys(), key=lambda u: (u.seconds, u.task, u.split))
        files = {(u.task, u.split): prepare_split(u.task, u.split, self.work, confirm=CONFIRM, size=IMAGE_SIZE,
                                                  threads=THREADS) for u in todo}
        models = {(u.architecture, u.split + spec_of(u).get("seed_offset", 0)) for u in todo if u.architecture != "cnn"}
        models = {m: self.model(*m) for m in sorted(models)}

        def one(u):
            seed = u.split + spec_of(u).get("seed_offset", 0)
            r = train_and_score(u, files[u.task, u.split], models.get((u.architecture, seed)), self.work)
            print(f"{u.architecture} {u.seconds:g}s {u.task} {u.row} lr {u.rate:g} split {u.split}: accuracy "
                  f"{r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}, {r['steps']} steps in {r['train_s']:.1f} s",
                  flush=True)
            return r
        with ThreadPoolExecutor(JOBS) as pool:
            self.done.update(zip(todo, pool.map(one, todo)))
        return {u: self.done[one_run] for u, one_run in same.items()}


def splits_of(budget, splits, grid=False):
    """The split seeds a budget runs: all of them, or the first LONG_SPLITS at the longer budget (of a development
    grid at the longer budget: LONG_SPLITS - 1)."""
    return splits if budget == "short" else splits[:max(1, LONG_SPLITS - grid)]


def mean_macro_f1(results):
    return statistics.mean(r["macro_f1"] for r in results)


def choose_rate(scores):
    """The learning rate of the best mean validation macro-F1 ({rate: score}); a tie goes to the first in the grid."""
    return max(scores, key=scores.get)


def long_budget(score_at):
    """One image set's longer budget, by the rule fixed before the development run: the first rung of BUDGET_LADDER
    after which the next rung adds at most LEVEL_TOLERANCE to the original's mean validation macro-F1 in every
    (stand-in, task) cell of that image set; the last rung if none does. `score_at(seconds)` gives {cell: score}.
    Returns (seconds, levelled, {seconds: {cell: score}} of the rungs read)."""
    scores = {}
    for rung, following in zip(BUDGET_LADDER, BUDGET_LADDER[1:]):
        scores[rung], scores[following] = scores.get(rung) or score_at(rung), score_at(following)
        if all(scores[following][c] - scores[rung][c] <= LEVEL_TOLERANCE for c in scores[rung]):
            return rung, True, scores
    return BUDGET_LADDER[-1], False, scores


def original_at(runner, rates, seconds):
    """{"stand-in task": mean validation macro-F1} of BASELINE trained `seconds` on the development seeds, each
    (stand-in, task) at its rate in `rates`."""
    units = {c: [Unit(c[0], seconds, c[1], BASELINE, lr, s) for s in DEVELOPMENT_SPLITS] for c, lr in rates.items()}
    done = runner([u for us in units.values() for u in us])
    return {f"{a} {t}": mean_macro_f1([done[u] for u in us]) for (a, t), us in units.items()}


def develop(runner):
    """The development choices: every grid row's learning rate at the short budget, each image set's longer budget,
    then the rates of the longer budget's rows; written to CHOICES with their validation numbers."""
    rates, long = {}, {}

    def grid(budget):
        long_seconds = {d: b[0] for d, b in long.items()}
        units = {(a, t, r, lr, s): Unit(a, seconds_of(long_seconds, budget, t), t, r, lr, s)
                 for a, b, t in cells() if b == budget
                 for r in row_specs(a, budget) if r in ROWS for lr in LEARNING_RATES
                 for s in splits_of(budget, DEVELOPMENT_SPLITS, grid=True)}
        done = runner(list(units.values()))
        rates[budget] = {}
        for a, b, t in cells():
            if b == budget:
                for r in (r for r in row_specs(a, budget) if r in ROWS):
                    scores = {lr: mean_macro_f1([done[u] for k, u in units.items() if k[:4] == (a, t, r, lr)])
                              for lr in LEARNING_RATES}
                    rates[budget].setdefault(a, {}).setdefault(t, {})[r] = {"chosen": choose_rate(scores),
                                                                           "validation": scores}

    grid("short")
    original = {(a, t): rates["short"][a][t][BASELINE]["chosen"] for a, b, t in cells() if b == "short"}
    for image_set in sorted({IMAGE_SET[t] for _, _, t in cells()}):
        mine = {(a, t): lr for (a, t), lr in original.items() if IMAGE_SET[t] == image_set}
        long[image_set] = long_budget(lambda seconds, mine=mine: original_at(runner, mine, seconds))
    grid("long")
    choices = {"long_seconds": {d: b[0] for d, b in long.items()}, "levelled": {d: b[1] for d, b in long.items()},
               "ladder": {d: {f"{k:g}": v for k, v in b[2].items()} for d, b in long.items()},
               "learning_rates": rates, "splits": DEVELOPMENT_SPLITS, "code": ledger.code_hash(), "protocol": PROTOCOL}
    write_json(Path(CHOICES), choices)
    return choices


def table_results(runner, choices, splits):
    """{(architecture, budget, task): {row: [results over the splits]}} of every row at its chosen rate."""
    units = {(a, b, t, r): [Unit(a, seconds_of(choices["long_seconds"], b, t), t, r, rate_of(choices, a, b, t, r), s)
                            for s in splits_of(b, splits)]
             for a, b, t in cells() for r in row_specs(a, b)}
    done = runner([u for us in units.values() for u in us])
    results = {}
    for (a, b, t, r), us in units.items():
        results.setdefault((a, b, t), {})[r] = [done[u] for u in us]
    return results


def comparisons(results):
    """{cell: {row: (macro-F1 interval, accuracy interval)}} of every row against its compare_with row."""
    return {cell: {row: tuple(paired_interval(rows[row], rows[row_specs(cell[0], cell[1])[row].get(
        "compare_with", BASELINE)], metric, BOOTSTRAP) for metric in ("macro_f1", "accuracy"))
        for row in rows if row != BASELINE} for cell, rows in results.items()}


def family(compared):
    """The comparisons the rule reads, by (cell, row): every fine_tune.py recipe against BASELINE."""
    return {(cell, row): pair[0] for cell, rows in compared.items() for row, pair in rows.items()
            if row in ROWS and not ROWS[row].get("cnn") and ROWS[row].get("compare_with", BASELINE) == BASELINE}


def calibrated(compared):
    """The cells where every A/A row's macro-F1 interval includes 0: the only ones a "better" counts in."""
    return [cell for cell, rows in compared.items()
            if not any(excludes_zero(pair[0]) for row, pair in rows.items() if row.startswith("aa_"))]


def decision(compared):
    """The rule for the default (the protocol's item 7): {"default", "settings", "lines"}."""
    tested = family(compared)
    adjusted = holm({key: interval.p for key, interval in tested.items()})
    good, lines, ok = {}, [], calibrated(compared)
    every_cell = set(compared)
    for row in dict.fromkeys(r for _, r in tested):
        mine = {cell: tested[cell, row] for cell in every_cell if (cell, row) in tested}
        shown = sorted(cell for cell, i in mine.items() if cell in ok and better(i, adjusted[cell, row]))
        worse = sorted(cell for cell, i in mine.items() if i.high < 0)
        missing = sorted(every_cell - set(mine))
        if not worse and not missing and shown:
            good[row] = statistics.mean(i.observed for i in mine.values())
        lines.append(f"- {row}: better in {', '.join(' '.join(c) for c in shown) or 'no cell'} (data sets: "
                     f"{', '.join(sorted({DATA_SET[c[2]] for c in shown})) or 'none'}); worse in "
                     f"{', '.join(' '.join(c) for c in worse) or 'no cell'}"
                     + (f"; not run in {len(missing)} cell(s)" if missing else "")
                     + f": {'qualifies' if row in good else 'does not qualify'}")
    chosen = max(good, key=good.get) if good else BASELINE
    lines.append(f"- the rule's default: **{chosen}**" + (
        f" (largest mean macro-F1 difference, {good[chosen]:+.3f})" if good else
        " (no recipe qualifies: the default is the original recipe)"))
    settings = {k: v for k, v in ROWS[chosen].items() if k not in OWN}
    return {"default": chosen, "settings": settings, "lines": lines}


def equal_time(runs, seconds):
    off = sum(abs(r["train_s"] - seconds) > EQUAL_TIME_TOLERANCE * seconds for r in runs)
    return "yes" if not off else f"**no** ({off} of {len(runs)} runs)"


def table(results, compared, choices):
    """The results table: every cell's rows, their chosen rates, numbers and comparisons (the rule's family with
    its Holm-adjusted p-values)."""
    adjusted = holm({key: i.p for key, i in family(compared).items()})
    lines = ["| stand-in | budget | task | row | rate | accuracy | macro-F1 | compared with | macro-F1 difference "
             "[95% CI] | accuracy difference [95% CI] | steps | train s | equal time | process s | s per image |",
             "|---" * 15 + "|"]
    for cell, rows in results.items():
        a, b, t = cell
        seconds = seconds_of(choices["long_seconds"], b, t)
        for row, runs in rows.items():
            f1, acc = compared[cell].get(row, (None, None))
            per_image = statistics.mean((r["process_s"] + r["score_s"]) / max(1, r["images"]) for r in runs)
            lines.append(
                f"| {a} | {seconds:g} s | {t} | {row} | {rate_of(choices, a, b, t, row):g} | "
                f"{mean_spread([r['accuracy'] for r in runs])} | {mean_spread([r['macro_f1'] for r in runs])} | "
                f"{row_specs(a, b)[row].get('compare_with', BASELINE) if f1 else '-'} | "
                f"{verdict(f1, adjusted.get((cell, row))) if f1 else '-'} | {verdict(acc) if acc else '-'} | "
                f"{statistics.mean(r['steps'] for r in runs):.0f} | {mean_spread([r['train_s'] for r in runs], 1)} | "
                f"{equal_time(runs, seconds)} | {mean_spread([r['process_s'] for r in runs], 0)} | "
                f"{per_image:.3f} |")
    return "\n".join(lines)


def aa_summary(compared):
    """How often the A/A intervals excluded 0, and whether that lets the report call the intervals honest."""
    draws = [pair[0] for rows in compared.values() for row, pair in rows.items() if row.startswith("aa_")]
    excluding, n, low, high = aa_rate(draws)
    honest = n >= AA_MIN_DRAWS and high <= AA_MAX_RATE
    return (f"{excluding} of {n} A/A macro-F1 intervals exclude 0 (rate 95% CI [{low:.2f}, {high:.2f}]; a 95% "
            f"interval should exclude 0 in about 5%): "
            + ("the intervals held their level in these A/A draws" if honest else
               f"too few draws or too many exclusions to call the intervals honest (that needs {AA_MIN_DRAWS} draws "
               f"or more and an upper bound at most {AA_MAX_RATE:.2f})"))


def rates_text(choices):
    """The chosen learning rates with the validation macro-F1 of every rate of the grid (read back from CHOICES,
    whose JSON keys are strings)."""
    lines = []
    for budget, by_arch in choices["learning_rates"].items():
        for a, by_task in by_arch.items():
            for t, by_row in by_task.items():
                lines.append(f"- {budget}, {a}, {t}: " + "; ".join(
                    f"{row} **{c['chosen']:g}** ("
                    + ", ".join(f"{float(lr):g}: {v:.3f}" for lr, v in c["validation"].items()) + ")"
                    for row, c in by_row.items()))
    return "\n".join(lines)


def report(results, compared, choices, splits, started, elapsed, bound, rule, machine):
    kind = "confirmation" if CONFIRM else "development"
    scored = ("the confirmation pool's folds (test images)" if CONFIRM else
              "the development pool's folds (validation images: the choices were made on these numbers)")
    budgets = "; ".join(
        f"{d} {choices['long_seconds'][d]:g} s ("
        + ("levelled off" if choices["levelled"][d] else "the last rung, not levelled off")
        + "; the original's validation macro-F1 by rung: "
        + ", ".join(f"{k} s: " + " ".join(f"{c} {v:.3f}" for c, v in by_cell.items()) for k, by_cell in ladder.items())
        + ")" for d, ladder in choices["ladder"].items())
    aa = "\n".join(f"- {' '.join(cell)} {row}: {verdict(pair[0])}" for cell, rows in compared.items()
                   for row, pair in rows.items() if row.startswith("aa_"))
    described = "\n".join(f"- {name}: " + (" ".join(flag(k, v) for k, v in spec.items()) or "fine_tune.py's defaults")
                          for name, spec in {**ROWS, **({} if CONFIRM else DEVELOPMENT_ROWS)}.items())
    head = ledger.git("rev-parse", "--short", "HEAD").strip() + (" with uncommitted changes" if ledger.uncommitted()
                                                                 else "")
    return f"""# Accuracy: the training recipes at equal training time ({kind} run, protocol {PROTOCOL})

{command("accuracy.py")}

- {kind.capitalize()} run of commit {head}, split seeds {splits} ({FOLDS[kind]} disjoint folds of the {kind} pool;
  the longer budget: the first {LONG_SPLITS}); started {started}, {elapsed / 60:.1f} min, on {platform.node()}
  ({machine}), {JOBS} runs at a time.
- Fingerprint {bound['digest']}: code hash {bound['code']} (every tracked file of ledger.HASHED), the settings after
  every override with the development choices, package versions {', '.join(f'{k} {v}' for k, v in
                                                                          bound['versions'].items())}.
- Stand-ins, trained from scratch: they compare recipes and say nothing absolute. SmolVLM (Idefics3) and LLaVA
  (CLIP vision tower, Llama), vision {VISION[1]} layers x {VISION[0]}, language {TEXT[1]} layers x {TEXT[0]}, both
  with SmolVLM-256M-Instruct's real tokenizer (49,280 tokens; tests/fixtures/smolvlm-256m-instruct), each its
  family's chat template, {IMAGE_SIZE} px images, {(IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2} image
  tokens; split s initialises them from seed s and trains with --seed=s (A/A rows: s + {AA_SEED_OFFSET}).
- Budgets: {SHORT_SECONDS:g} s of training per run, and a longer one for each image set, fixed by the development
  run's rule: {budgets}. Batch {BATCH}, {WARMUP_STEPS} warm-up steps, then constant;
  each row's learning rate chosen on development validation from {LEARNING_RATES} (below).
- Scored on {scored}. Accuracy and macro-F1 are mean ± standard deviation over the splits; differences are paired
  (same split and images), with a 95% bootstrap interval over splits and images ({BOOTSTRAP} resamples). The rule's
  family (each recipe against {BASELINE}, every cell) carries Holm-adjusted p-values. "s per image" is a run's
  process and scoring seconds over its scored images.

Rows (fine_tune.py settings):
{described}

Learning rates chosen (development validation macro-F1 of each rate):
{rates_text(choices)}

A/A rows (the recipe again from other seeds, against itself), macro-F1:
{aa}

{aa_summary(compared)}

{table(results, compared, choices)}

The rule for the default (run in every cell, worse in none, better in a calibrated cell of at least one data set
after Holm's adjustment):
{chr(10).join(rule['lines'])}
"""


def check(overrides):
    """Refuse settings that cannot run, development on confirmation seeds, and (--plan, --confirm) whatever
    ledger.refuse_confirmation refuses."""
    unknown = [t for tasks in ARCHITECTURES.values() for t in tasks if t not in TASK_DATA]
    defaults = settings_of(vars(fine_tune))
    differs = {k: v for k, v in ROWS.get(DEFAULT_ROW, {}).items() if k not in OWN and defaults.get(k) != v}
    splits = CONFIRMATION_SPLITS if CONFIRM or PLAN else DEVELOPMENT_SPLITS
    folds = FOLDS["confirmation" if CONFIRM or PLAN else "development"]
    blocks = {s // folds for s in splits}
    if unknown or BASELINE not in ROWS or DEFAULT_ROW not in ROWS or differs or \
            sorted(splits) != sorted(b * folds + k for b in blocks for k in range(folds)):
        sys.exit(f"error: unknown task(s) {unknown} (tasks: {list(TASK_DATA)}), baseline {BASELINE!r} or default row "
                 f"{DEFAULT_ROW!r} not among the rows, the default row's settings {differs} are not fine_tune.py's "
                 f"defaults, or split seeds {splits} are not whole blocks of {folds} folds (seeds b*{folds} to "
                 f"b*{folds}+{folds - 1}: each image scored once)")
    if min(BUDGET_LADDER) <= SHORT_SECONDS:
        sys.exit(f"error: every rung of --budget_ladder {BUDGET_LADDER} must be longer than --short_seconds="
                 f"{SHORT_SECONDS:g}: a run's budget is told by its seconds")
    ledger.check_run(confirm=CONFIRM, plan=PLAN, splits=CONFIRMATION_SPLITS, development=DEVELOPMENT_SPLITS,
                     overrides=overrides, path=LEDGER, folder=WORK_DIR, choices=CHOICES)
    if (CONFIRM or PLAN) and json.loads(Path(CHOICES).read_text()).get("protocol") != PROTOCOL:
        sys.exit(f"error: {CHOICES} holds no development choices of protocol {PROTOCOL}: a development run of this "
                 f"protocol makes them")


def machine():
    """The device and threads the runs use, for the ledger and the report."""
    return f"{DEVICE}, {THREADS} thread(s) a script, {platform.machine()}, {os.cpu_count()} CPUs"


def main(overrides=()):
    check(overrides)
    choices = json.loads(Path(CHOICES).read_text()) if CONFIRM or PLAN else None
    settings = {k: v for k, v in settings_of(globals()).items()
                if k not in ledger.HARMLESS | {"ledger", "root", "choices"}} | {"choices": choices}
    bound = ledger.fingerprint(settings)
    splits = CONFIRMATION_SPLITS if CONFIRM or PLAN else DEVELOPMENT_SPLITS
    started, start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    if PLAN:
        ledger.plan(LEDGER, {"commit": ledger.git("rev-parse", "--short", "HEAD").strip(), "fingerprint": bound,
                             "protocol": PROTOCOL, "splits": splits, "architectures": ARCHITECTURES,
                             "rows": list(ROWS), "machine": machine(), "planned": started})
        return
    if CONFIRM:
        ledger.begin(LEDGER, ledger.committed(), WORK_DIR, splits, bound["digest"], started, machine())
    with tempfile.TemporaryDirectory(prefix="accuracy-benchmark-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        runner = Runner(work)
        if not CONFIRM:
            choices = develop(runner)
        results = table_results(runner, choices, splits)
    compared = comparisons(results)
    rule = decision(compared)
    text = report(results, compared, choices, splits, started, time.perf_counter() - start, bound, rule, machine())
    output = OUTPUT or ROOT / "benchmarks" / f"results-accuracy-{'confirmation' if CONFIRM else 'development'}.md"
    write_report(text, output)
    if CONFIRM:
        ledger.finish(LEDGER, splits, Path(output).name, {k: rule[k] for k in ("default", "settings")},
                      table(results, compared, choices))


if __name__ == "__main__":
    committed = settings_of(globals())
    configure(globals())
    run_main(lambda: main(overrides=[k for k, v in settings_of(globals()).items() if v != committed[k]]))
