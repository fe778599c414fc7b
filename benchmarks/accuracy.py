"""Benchmark: the training recipes compared on real image sets at equal training time, under a fixed protocol.

For every task, split seed and row (a recipe: fine_tune.py settings, or a small CNN), a tiny SmolVLM-architecture
model initialised from the split's seed is trained from scratch and scored on the split's scored images. The
project's scripts run as separate processes, as a user runs them (download_dataset.py, generate_train_json.py,
fine_tune.py, vlm_benchmark_test_dataset.py). The tiny model stands in for the pretrained one, which no machine
here can load: the numbers compare recipes, they say nothing absolute.

The protocol (PROTOCOL, version 2), enforced by this script and benchmarks/ledger.py:
1. Choose on validation. Every choice (a default, a learning rate, an option's design) is made by a development
   run (the default) on DEVELOPMENT_SPLITS, scored on validation images: images of each split's held-out side
   that no confirmation scores (a development split's test images are never read).
2. Claim on confirmation. --confirm=true runs CONFIRMATION_SPLITS once, scored on the test images, for committed
   code with the committed settings: it refuses uncommitted code, any setting given on the command line (other
   than where files go), development seeds and seeds any earlier confirmation used, whatever its code. It spends
   its seeds in LEDGER before its first run, with the fingerprint that binds the experiment: the hash of every
   file that can change a number, the effective settings and the package versions.
3. Equal realized time: every row trains for TRAIN_SECONDS (fine_tune.py's --max_train_seconds, no step limit, so
   the learning rate is constant after warm-up); the table gives each row's realized training seconds, and marks
   a row with a run more than EQUAL_TIME_TOLERANCE away.
4. Paired comparisons: each row against the row named by its "compare_with" (BASELINE unless given) on the same
   splits and scored images, as the mean difference with a 95% bootstrap interval (splits, then the images of
   each). "Better" means the whole interval is above 0.
5. An A/A row ("aa": fine_tune.py's defaults again, from model and data-order seeds AA_SEED_OFFSET away) against
   DEFAULT_ROW on every task: where its interval excludes 0 the protocol is not calibrated on that task, and the
   table claims nothing there.
6. The rule for defaults: a recipe may be the default where its macro-F1 interval over BASELINE is above 0 on at
   least two calibrated tasks and below 0 on none; of several, the largest mean difference.

    HF_HUB_OFFLINE=1 python benchmarks/accuracy.py --work_dir=./accuracy-runs                  # development
    HF_HUB_OFFLINE=1 python benchmarks/accuracy.py --work_dir=./accuracy-runs --confirm=true    # confirmation
    HF_HUB_OFFLINE=1 python benchmarks/accuracy.py --tasks='["digits"]' --development_splits='[0]' \\
        --train_seconds=3 --rows='{"original": {"objective": "answer"}, "head": {}}' --development_rows='{}' \\
        --default_row=head                                                                       # smoke check
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

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

import fine_tune  # noqa: E402
import ledger  # noqa: E402
from common import ROOT, command, flag, git, write_report  # noqa: E402
from paired import excludes_zero, mean_spread, paired_interval, verdict  # noqa: E402
from tasks import TASK_DATA, build_model, prepare_split, run  # noqa: E402
from vlmcls.cli import configure, run_main, settings_of  # noqa: E402
from vlmcls.files import write_json  # noqa: E402

TASKS = ["elpv2", "elpv4", "digits", "digits_small"]  # names from tasks.TASK_DATA
# recipe -> fine_tune.py settings. Keys of the benchmark's own: learning_rate (instead of the task's),
# learning_rate_factor (times the task's), validate (validation images, used whatever their number),
# compare_with (instead of BASELINE), cnn (benchmarks/cnn_baseline.py instead of fine_tune.py)
ROWS = {
    "original": {"objective": "answer", "train_questions": "all", "multi_turn": False},  # the original's recipe
    "answer_classification": {"objective": "answer", "train_questions": "classification", "multi_turn": False},
    "answer_multi_turn": {"objective": "answer", "train_questions": "all", "multi_turn": True},
    "head": {"objective": "head"},  # every weight trained: fine_tune.py's default, chosen by the development run
    "head_lora": {"objective": "head", "use_lora": True, "learning_rate_factor": 4},  # LoRA's usual larger rate
    # the head alone on the frozen backbone's states; 3e-2 chosen on development splits (benchmarks/README.md)
    "head_frozen": {"objective": "head", "freeze_backbone": True, "learning_rate": 3e-2},
    "cnn": {"cnn": True, "compare_with": "original"},  # a small CNN from scratch: is a VLM worth it here?
}
# rows of development runs only: the validation decision (VAL_RATIO, MIN_VALIDATION_IMAGES), each against its
# recipe without validation, whose training images include the validation images
DEVELOPMENT_ROWS = {
    "original_validated": {**ROWS["original"], "validate": True, "compare_with": "original"},
    "head_validated": {**ROWS["head"], "validate": True, "compare_with": "head"},
}
BASELINE = "original"  # the row every recipe is compared with
DEFAULT_ROW = "head"  # the row fine_tune.py's defaults train (checked); the A/A row trains it again
AA_SEED_OFFSET = 10_000  # the A/A row's model and data-order seed: the split's seed plus this
DEVELOPMENT_SPLITS = [0, 1, 2]  # split seeds (and model seeds) that choices are made on
CONFIRMATION_SPLITS = list(range(300, 310))  # split seeds of --confirm: unused by any run before (LEDGER)
CONFIRM = False  # run the confirmation splits for the committed code and spend them in LEDGER
TRAIN_SECONDS = 12  # every row's training time (fine_tune.py's --max_train_seconds)
EQUAL_TIME_TOLERANCE = 0.1  # a run whose realized training seconds are further from TRAIN_SECONDS is marked
BATCH = 16  # training rows per step (one process, no gradient accumulation)
# digits: 2e-3 reached validation accuracy 0.73 on development split 0 in 800 steps, 5e-4 0.26; elpv: chosen
# before this protocol (see benchmarks/README.md)
LEARNING_RATE = {"elpv2": 5e-4, "elpv4": 5e-4, "digits": 2e-3, "digits_small": 2e-3}  # peak learning rate per task
WARMUP_STEPS = 25  # linear warm-up, then constant: the time limit, not a step count, ends a run
EVAL_STEPS = 50  # validation interval of the rows that validate (and one at the end)
BOOTSTRAP = 2000  # bootstrap resamples of the paired intervals
IMAGE_SIZE = 128  # pixels: the tiny model's tile and fine_tune.py's --image_longest_edge
PATCH_SIZE = 16  # vision patch size: (IMAGE_SIZE / PATCH_SIZE)^2 patches per image
SCALE_FACTOR = 2  # pixel shuffle: image tokens = patches / SCALE_FACTOR^2
VISION = [64, 2]  # the tiny vision encoder's hidden size and layers
TEXT = [64, 2]  # the tiny language model's hidden size and layers
EVAL_BATCH = 32  # images per forward pass when validating and scoring
JOBS = 2  # runs at a time, each its own processes (as many as there are idle cores)
THREADS = 1  # torch threads per script (OMP_NUM_THREADS): a tiny model's threads only wait on each other; 0: default
WORK_DIR = ""  # data, models and runs; "": a temporary folder, removed at the end
OUTPUT = ""  # where the table is also written; "": benchmarks/results-accuracy-{development,confirmation}.md

PROTOCOL = 2  # version of the protocol above; a confirmation records it
LEDGER = ROOT / "benchmarks" / "confirmations.json"  # every confirmation: commit, fingerprint, split seeds
OWN = ("learning_rate", "learning_rate_factor", "validate", "compare_with", "cnn", "seed_offset")  # not fine_tune.py's


def rows():
    """Every row of this run: ROWS, DEVELOPMENT_ROWS in a development run, and the A/A row."""
    aa = {**ROWS[DEFAULT_ROW], "compare_with": DEFAULT_ROW, "seed_offset": AA_SEED_OFFSET}
    return {**ROWS, **({} if CONFIRM else DEVELOPMENT_ROWS), "aa": aa}


def fine_tune_args(task, spec, files, seed, model, out):
    """fine_tune.py's command line for a row: the benchmark's common settings, then the row's own."""
    lr = spec.get("learning_rate", LEARNING_RATE[task] * spec.get("learning_rate_factor", 1))
    validate = spec.get("validate", False)
    return [f"--model_path={model}", f"--output_dir={out}", "--resume=overwrite",
            f"--train_json={files['validated_train' if validate else 'train']}",
            f"--val_json={files['validated_val'] if validate else ''}", "--min_validation_images=0", "--test_json=",
            "--max_steps=1000000000", f"--max_train_seconds={TRAIN_SECONDS}", f"--per_device_train_batch_size={BATCH}",
            "--gradient_accumulation_steps=1", f"--learning_rate={lr}", f"--warmup_steps={WARMUP_STEPS}",
            "--logging_steps=25", "--save_steps=1000000000", f"--eval_steps={EVAL_STEPS}",
            f"--per_device_eval_batch_size={EVAL_BATCH}", f"--image_longest_edge={IMAGE_SIZE}",
            "--gradient_checkpointing=false", f"--seed={seed}",
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


def train_and_score(task, row, split, files, model, work):
    """One run: the row's training, then its predictions on the split's scored images; returns its numbers with
    the prediction for every scored image. A finished run of the same code and settings is not repeated."""
    spec = rows()[row]
    seed = split + spec.get("seed_offset", 0)
    out = work / task / "runs" / f"{row}-{'split' if CONFIRM else 'dev-split'}{split}"
    report_dir = out / "report"
    if spec.get("cnn"):
        args = [f"--train_json={files['train']}", f"--test_json={files['score']}", f"--report_dir={report_dir}",
                f"--max_train_seconds={TRAIN_SECONDS}", f"--image_size={IMAGE_SIZE}", f"--batch={BATCH}",
                f"--seed={seed}"]
    else:
        args = fine_tune_args(task, spec, files, seed, model, out / "model")
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
                      f"--report_dir={report_dir}", f"--batch_size={EVAL_BATCH}", "--resume=overwrite", cwd=out,
                      log=out / "score.log", threads=THREADS)
        report = json.loads((report_dir / "report.json").read_text())
    scored = predictions(report_dir)
    result = {"key": key, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "steps": steps,
              "train_s": train_s, "process_s": process_s, "score_s": score_s,
              "bias_strength": (bias or {}).get("strength"), "classes": report["classes"],
              "paths": [p for p, _, _ in scored], "true": [t for _, t, _ in scored], "pred": [p for _, _, p in scored]}
    write_json(out / "result.json", result)
    return result


def comparisons(results):
    """{task: {row: (macro-F1 interval, accuracy interval)}} of every row against its compare_with row."""
    return {task: {row: tuple(paired_interval(results[task][row], results[task][spec.get("compare_with", BASELINE)],
                                              metric, BOOTSTRAP) for metric in ("macro_f1", "accuracy"))
                   for row, spec in rows().items() if row != BASELINE} for task in TASKS}


def calibrated(compared):
    """The tasks where the A/A row's macro-F1 interval includes 0: the only ones the table claims anything on."""
    return [t for t in TASKS if not excludes_zero(compared[t]["aa"][0])]


def equal_time(runs):
    off = sum(abs(r["train_s"] - TRAIN_SECONDS) > EQUAL_TIME_TOLERANCE * TRAIN_SECONDS for r in runs)
    return "yes" if not off else f"**no** ({off} of {len(runs)} runs)"


def table(results, compared):
    lines = ["| task | row | accuracy | macro-F1 | compared with | macro-F1 difference [95% CI] | "
             "accuracy difference [95% CI] | steps | train s | equal time | process s | bias strength |",
             "|---" * 12 + "|"]
    for task in TASKS:
        for row, spec in rows().items():
            runs = results[task][row]
            strengths = [r["bias_strength"] for r in runs if r.get("bias_strength") is not None]
            f1, acc = compared[task].get(row, (None, None))
            lines.append(
                f"| {task} | {row} | {mean_spread([r['accuracy'] for r in runs])} | "
                f"{mean_spread([r['macro_f1'] for r in runs])} | {spec.get('compare_with', BASELINE) if f1 else '-'} | "
                f"{verdict(f1) if f1 else '-'} | {verdict(acc) if acc else '-'} | "
                f"{statistics.mean(r['steps'] for r in runs):.0f} | {mean_spread([r['train_s'] for r in runs], 1)} | "
                f"{equal_time(runs)} | {mean_spread([r['process_s'] for r in runs], 0)} | "
                f"{' / '.join(f'{x:.1f}' for x in strengths) if strengths else '-'} |")
    return "\n".join(lines)


def decision(compared):
    """The rule for defaults over the recipes (fine_tune.py rows compared with BASELINE): lines saying where each
    is better and worse, and the row the rule makes the default."""
    good, lines, tasks = {}, [], calibrated(compared)
    for row, spec in ROWS.items():
        if row == BASELINE or spec.get("cnn") or spec.get("compare_with", BASELINE) != BASELINE:
            continue
        better = [t for t in tasks if compared[t][row][0][1] > 0]
        worse = [t for t in tasks if compared[t][row][0][2] < 0]
        if len(better) >= 2 and not worse:
            good[row] = statistics.mean(compared[t][row][0][0] for t in tasks)
        lines.append(f"- {row}: better on {', '.join(better) or 'no task'}, worse on {', '.join(worse) or 'no task'}"
                     f": {'may be the default' if row in good else 'not the default by the rule'}")
    chosen = max(good, key=good.get) if good else BASELINE
    lines.append(f"- the rule's default: **{chosen}**" + (f" (largest mean macro-F1 difference, {good[chosen]:+.3f})"
                                                         if good else " (no recipe qualifies: the baseline stays)"))
    return "\n".join(lines)


def report(results, compared, splits, started, elapsed, bound):
    described = "\n".join(f"- {name}: " + (" ".join(flag(k, v) for k, v in spec.items()) or "fine_tune.py's defaults")
                          for name, spec in rows().items())
    aa = "\n".join(f"- {t}: {verdict(compared[t]['aa'][0])}" + ("" if t in calibrated(compared) else
                   " — **the interval excludes 0: the protocol is not calibrated on this task; no claim is made "
                   "on it**") for t in TASKS)
    kind = "confirmation" if CONFIRM else "development"
    scored = "test images" if CONFIRM else "validation images (a share of the held-out side; test images unread)"
    # the ledger a confirmation writes is no code change: only the hashed files count
    head = git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if ledger.uncommitted() else "")
    return f"""# Accuracy: the training recipes at equal training time ({kind} run, protocol {PROTOCOL})

{command("accuracy.py")}

- {kind.capitalize()} run of commit {head}, split seeds {splits}; started {started}, {elapsed / 60:.1f} min,
  on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), {JOBS} runs at a time, {THREADS} thread(s) each.
- Fingerprint {bound['digest']}: code hash {bound['code']} (benchmarks/ledger.py's HASHED files), the settings
  below after every override, package versions {', '.join(f'{k} {v}' for k, v in bound['versions'].items())}.
- Model: a tiny SmolVLM (Idefics3) trained from scratch, a stand-in for the pretrained model that compares
  recipes and says nothing absolute: vision {VISION[1]} layers x {VISION[0]}, language {TEXT[1]} layers x {TEXT[0]},
  {IMAGE_SIZE} px images, {(IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2} image tokens; split s initialises it
  from seed s and trains with --seed=s (the A/A row: s + {AA_SEED_OFFSET}).
- Equal training time: every row trains {TRAIN_SECONDS:g} s (`--max_train_seconds`; validation included where a row
  validates; a frozen backbone's states are computed before it, in "process s"), batch {BATCH}, learning rate
  {', '.join(f'{LEARNING_RATE[t]} ({t})' for t in TASKS)} unless the row says otherwise, {WARMUP_STEPS} warm-up
  steps, then constant. "equal time" says whether every run's training seconds were within
  {EQUAL_TIME_TOLERANCE:.0%} of that.
- Scored on each split's {scored}, score mode (with the class bias where a row fitted one). Accuracy and macro-F1
  are mean ± standard deviation over the splits; differences are paired (same split and images), with a 95%
  bootstrap interval over splits and images ({BOOTSTRAP} resamples).
- Task shares (of each class's images): {'; '.join(f"{t} train {TASK_DATA[t]['train']}, validating rows' validation "
  f"{TASK_DATA[t]['val']}" + ('' if CONFIRM else f", scored {TASK_DATA[t]['dev']}") for t in TASKS)}.

Rows (fine_tune.py settings; `validate`: trains on the same images less a validation share, validated on whatever
its number):
{described}

A/A control (the defaults again from other seeds, against {DEFAULT_ROW}), macro-F1:
{aa}

{table(results, compared)}

The rule for defaults (macro-F1 interval above 0 on two calibrated tasks or more, below 0 on none):
{decision(compared)}
"""


def check(overrides):
    """Refuse settings that cannot run, and (--confirm) whatever ledger.refuse_confirmation refuses."""
    unknown = [t for t in TASKS if t not in TASK_DATA or t not in LEARNING_RATE]
    defaults = settings_of(vars(fine_tune))
    differs = {k: v for k, v in ROWS.get(DEFAULT_ROW, {}).items() if k not in OWN and defaults.get(k) != v}
    if unknown or BASELINE not in ROWS or DEFAULT_ROW not in ROWS or differs:
        sys.exit(f"error: unknown task(s) {unknown} (tasks: {list(TASK_DATA)}, each with a LEARNING_RATE), baseline "
                 f"{BASELINE!r} or default row {DEFAULT_ROW!r} not among the rows, or the default row's settings "
                 f"{differs} are not fine_tune.py's defaults")
    if CONFIRM and (refusal := ledger.refuse_confirmation(
            splits=CONFIRMATION_SPLITS, development=DEVELOPMENT_SPLITS, overrides=overrides,
            ledger=ledger.read(LEDGER), changed=ledger.uncommitted())):
        sys.exit(f"error: {refusal}")


def main(overrides=()):
    check(overrides)
    settings = {k: v for k, v in settings_of(globals()).items() if k not in ledger.HARMLESS | {"ledger", "root"}}
    bound = ledger.fingerprint(settings)
    splits = CONFIRMATION_SPLITS if CONFIRM else DEVELOPMENT_SPLITS
    started, start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    entry = {"commit": git("rev-parse", "--short", "HEAD"), "fingerprint": bound, "protocol": PROTOCOL,
             "splits": splits, "tasks": TASKS, "rows": list(rows()), "started": started}
    if CONFIRM:
        ledger.spend(LEDGER, entry)
    with tempfile.TemporaryDirectory(prefix="accuracy-benchmark-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        seeds = sorted({s + rows()[r].get("seed_offset", 0) for s in splits for r in rows()})
        models = {s: build_model(work / f"model-{IMAGE_SIZE}px-p{PATCH_SIZE}s{SCALE_FACTOR}-v{VISION[0]}x{VISION[1]}-"
                                        f"t{TEXT[0]}x{TEXT[1]}-seed{s}", s, image_size=IMAGE_SIZE,
                                 patch_size=PATCH_SIZE, scale_factor=SCALE_FACTOR, vision=VISION, text=TEXT)
                  for s in seeds}
        files = {(t, s): prepare_split(t, s, work, confirm=CONFIRM, size=IMAGE_SIZE, threads=THREADS)
                 for t in TASKS for s in splits}
        runs = [(task, row, s) for task in TASKS for s in splits for row in rows()]

        def one(spec):
            task, row, s = spec
            r = train_and_score(task, row, s, files[task, s], models[s + rows()[row].get("seed_offset", 0)], work)
            print(f"{task} {row} split {s}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}, "
                  f"{r['steps']} steps in {r['train_s']:.1f} s", flush=True)
            return r
        with ThreadPoolExecutor(JOBS) as pool:
            done = list(pool.map(one, runs))
    results = {task: {row: [] for row in rows()} for task in TASKS}
    for (task, row, _), r in zip(runs, done):
        results[task][row].append(r)
    compared = comparisons(results)
    text = report(results, compared, splits, started, time.perf_counter() - start, bound)
    output = OUTPUT or ROOT / "benchmarks" / f"results-accuracy-{'confirmation' if CONFIRM else 'development'}.md"
    write_report(text, output)
    if CONFIRM:
        ledger.finish(LEDGER, entry, Path(output).name)


if __name__ == "__main__":
    committed = settings_of(globals())
    configure(globals())
    run_main(lambda: main(overrides=[k for k, v in settings_of(globals()).items() if v != committed[k]]))
