"""Benchmark: the training recipes compared on real image sets at equal training time, under a fixed protocol.

For every task, split and row (a recipe: fine_tune.py settings), a tiny SmolVLM-architecture model initialised
from the split's seed is trained from scratch and scored on the split's held-out images. The project's scripts
run as separate processes, as a user runs them: download_dataset.py, generate_train_json.py --seed=<split>,
fine_tune.py, vlm_benchmark_test_dataset.py (its predictions.csv is read). The tiny model stands in for the
pretrained one, which no machine here can load: the numbers compare recipes, they say nothing absolute.

The protocol (PROTOCOL, version 1), enforced by this script:
1. Development: every choice (a default, a learning rate, an option's design or threshold) is made on the
   scores of the DEVELOPMENT_SPLITS (split seeds of generate_train_json.py; split s trains a model initialised
   from seed s, with fine_tune.py's --seed=s). This is what a run without --confirm measures; its table goes to
   benchmarks/results-accuracy-development.md.
2. Confirmation: claims are made on the CONFIRMATION_SPLITS, which no choice looked at. --confirm=true runs them for
   the current commit (the code must be committed) and writes benchmarks/results-accuracy-confirmation.md, which
   records the commit, the code hash, the protocol version and that it is a confirmation run, and adds the run
   to LEDGER. Confirming again on split seeds that the ledger has seen with other code is refused: looking at a
   confirmation table, changing the recipe and confirming on the same splits would let those splits choose. New
   confirmation splits are the next unused block of 100 (the ledger says which were used).
3. Paired comparisons: every row is compared with BASELINE on the same splits, seeds and held-out images, as
   the mean difference with a 95% bootstrap interval (resampling the splits, then the held-out images of each).
   "Better" means the whole interval is above 0.
4. Equal compute is equal training time: short pilot runs of every row, side by side on this machine in this
   invocation, measure each row's seconds per step, and each row gets as many steps as fit in the time BASELINE
   takes for STEPS[task] steps. The table reports the steps, the images seen and the seconds of every row.
5. A finished run is reused only for the same code (a hash of the project's scripts and package) and the same
   settings, fine_tune.py's defaults included; so is a pilot.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy.py --work_dir=/work/acc            # development
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy.py --work_dir=/work/acc --confirm=true  # confirmation
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy.py --steps='{"digits": 20}' --tasks='["digits"]' \\
        --development_splits='[0]' --pilot_seconds=3                                          # smoke check

Rows without validation train on the split made with VAL_RATIO=0, so the validation images are training images
for them; the held-out images are the same for every row of a split.
"""
import csv
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

import fine_tune  # noqa: E402
from common import flag, git  # noqa: E402
from vlmcls.cli import configure, run_main, settings_of  # noqa: E402
from vlmcls.files import atomic_write, write_json  # noqa: E402

TASKS = ["elpv2", "elpv4", "digits", "digits_small"]  # names from TASK_DATA
ROWS = {  # recipe name -> fine_tune.py settings; BASELINE is the original's recipe
    "original": {"multi_turn": False, "train_questions": "all", "val_json": "", "class_balance": "none"},
    "defaults": {},  # the original's rows with validation: best checkpoint, early stopping, class bias
    "head": {"objective": "head", "val_json": ""},  # the classification head, every weight trained
    # the head alone on the frozen backbone's states (computed once): seconds of training, so a fixed step count,
    # not BASELINE's time (ROW_OWN); learning rate 3e-2 chosen on the development splits (mean macro-F1 0.362 over
    # the 12 runs, 3e-3 0.339: results-accuracy-development.md)
    "head_frozen": {"objective": "head", "freeze_backbone": True, "val_json": "", "learning_rate": 3e-2,
                    "max_steps": 2000},
}
BASELINE = "original"  # the row every other row is compared with
DEVELOPMENT_SPLITS = [0, 1, 2]  # split seeds (and model seeds) that choices are made on
# split seeds of --confirm, never looked at before a choice is frozen (100-102 and 200-202 are spent: LEDGER)
CONFIRMATION_SPLITS = [300, 301, 302]
CONFIRM = False  # run the confirmation splits for the committed code and record it in LEDGER
STEPS = {"elpv2": 800, "elpv4": 800, "digits": 800, "digits_small": 400}  # BASELINE's optimizer steps per task
BATCH = 16  # training rows per step (one process, no gradient accumulation)
# digits: 2e-3 reached validation accuracy 0.73 on development split 0 in 800 steps, 5e-4 0.26; elpv: chosen
# before this protocol (see benchmarks/README.md)
LEARNING_RATE = {"elpv2": 5e-4, "elpv4": 5e-4, "digits": 2e-3, "digits_small": 2e-3}  # peak learning rate per task
WARMUP_STEPS = 25  # linear warm-up
EVAL_STEPS = 100  # validation interval of the rows that validate (and one at the end)
PILOT_SECONDS = 15  # training seconds of each pilot run measuring a row's seconds per step
PILOT_REPEATS = 3  # rounds of pilots, each running every row's side by side; the median counts
BOOTSTRAP = 2000  # bootstrap resamples of the paired intervals
IMAGE_SIZE = 128  # pixels: the tiny model's tile and fine_tune.py's --image_longest_edge
PATCH_SIZE = 16  # vision patch size: (IMAGE_SIZE / PATCH_SIZE)^2 patches per image
SCALE_FACTOR = 2  # pixel shuffle: image tokens = patches / SCALE_FACTOR^2
VISION_WIDTH = 64  # hidden size of the tiny vision encoder
VISION_LAYERS = 2  # its layers
TEXT_WIDTH = 64  # hidden size of the tiny language model
TEXT_LAYERS = 2  # its layers
EVAL_BATCH = 32  # images per forward pass when validating and testing
JOBS = 2  # runs at a time, each its own processes (as many as there are idle cores)
THREADS = 1  # torch threads per script (OMP_NUM_THREADS): a tiny model's threads only wait on each other; 0: default
WORK_DIR = ""  # data, models and runs; "": a temporary folder, removed at the end
OUTPUT = ""  # where the table is also written; "": benchmarks/results-accuracy-{development,confirmation}.md

PROTOCOL = 1  # version of the protocol above; a confirmation records it
ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "benchmarks" / "confirmations.json"  # every confirmation run: commit, code hash, split seeds
# Each task: how its class folders are made, and generate_train_json.py's ratios. digits_small holds out most
# images, so about 20 training and 4 validation images remain per class: the regime of many users.
TASK_DATA = {
    "elpv2": {"download": ["--source=elpv", "--elpv_two_classes=true"], "split": []},
    "elpv4": {"download": ["--source=elpv"], "split": []},
    "digits": {"digits": True, "split": []},
    "digits_small": {"digits": True, "split": ["--train_ratio=0.14", "--val_ratio=0.025"]},
}
# fine_tune.py settings that change what a training step costs; the rest (validation, the class bias) do not
COST_SETTINGS = ["multi_turn", "train_questions", "class_balance", "augment", "objective", "freeze_backbone"]
# row settings the benchmark applies itself: a row's own learning rate, and a fixed step count instead of
# BASELINE's training time (for a row that needs far less; the table shows its seconds)
ROW_OWN = ("val_json", "learning_rate", "max_steps")
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def code_hash():
    """The hash of the code a run executes: the scripts, the package and the tiny model's builder."""
    files = sorted([*ROOT.glob("*.py"), *ROOT.glob("vlmcls/*.py"), ROOT / "tests" / "tiny_models.py"])
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run(script, *args, cwd, log):
    """One of the project's scripts as its own process; returns its wall-clock seconds. A failure stops the
    benchmark with the end of the script's output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if THREADS:
        env["OMP_NUM_THREADS"] = str(THREADS)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = Path(log).read_text()[-3000:]
        sys.exit(f"error: {script} {' '.join(map(str, args))} failed ({proc.returncode}); end of {log}:\n{tail}")
    return time.perf_counter() - start


def write_digits(folder):
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as IMAGE_SIZE px PNG class folders, each
    pixel a square of PATCH_SIZE-ish pixels (nearest neighbour: nothing is invented)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    building = folder.with_name(folder.name + ".building")
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        (building / DIGIT_NAMES[target]).mkdir(parents=True, exist_ok=True)
        grey = (255 - pixels * 255 / 16).round().astype(np.uint8)  # dark ink on white, as on paper
        Image.fromarray(grey).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST).save(
            building / DIGIT_NAMES[target] / f"{i:04d}.png")
    building.rename(folder)


def prepare_split(task, split, work):
    """The task's images and, for one split seed, two splits with the same held-out images: with validation
    images (split-<s>/) and without, every other image for training (split-<s>-no-val/)."""
    folder, data = work / task, TASK_DATA[task]
    images = work / ("digits" if data.get("digits") else task) / "images"
    if not images.is_dir():
        images.parent.mkdir(parents=True, exist_ok=True)
        if data.get("digits"):
            write_digits(images)
        else:
            run("download_dataset.py", *data["download"], f"--dataset_dir={images}", cwd=work,
                log=work / f"{task}-download.log")
    outs = {"split": folder / f"split-{split}", "split_no_val": folder / f"split-{split}-no-val"}
    for name, out in outs.items():
        if not (out / "test.json").is_file():
            out.mkdir(parents=True, exist_ok=True)
            run("generate_train_json.py", f"--dataset_dir={images}", f"--train_json={out / 'train.json'}",
                f"--val_json={out / 'val.json'}", f"--test_json={out / 'test.json'}", f"--seed={split}",
                *data["split"], *(["--val_ratio=0"] if name == "split_no_val" else []), cwd=work,
                log=out / "generate.log")
    tests = [json.loads((out / "test.json").read_text())["samples"] for out in outs.values()]
    if tests[0] != tests[1]:
        sys.exit(f"error: {folder}: the splits of seed {split} with and without validation hold out different images")
    return outs


def build_model(folder, seed):
    """A tiny SmolVLM (Idefics3) of IMAGE_SIZE px tiles, random weights from the seed, with the tests'
    SmolVLM tokenizer, chat template and processor, saved for from_pretrained as a checkpoint would be."""
    import torch
    from tiny_models import build_tiny_smolvlm
    from transformers import AutoProcessor, Idefics3Config, Idefics3ForConditionalGeneration
    if folder.is_dir():
        return folder
    building = folder.with_name(folder.name + ".building")  # renamed when complete: a reused model is whole
    torch.manual_seed(seed)
    build_tiny_smolvlm(building, image_longest_edge=IMAGE_SIZE)
    processor = AutoProcessor.from_pretrained(building)
    processor.image_processor.max_image_size = {"longest_edge": IMAGE_SIZE}
    processor.image_seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2
    processor.save_pretrained(building)
    tokenizer = processor.tokenizer
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = Idefics3Config(
        vision_config=dict(hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH, num_hidden_layers=VISION_LAYERS,
                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                           hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH,
                         intermediate_size=2 * TEXT_WIDTH, num_hidden_layers=TEXT_LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=TEXT_WIDTH // 4, hidden_act="silu", rms_norm_eps=1e-5,
                         rope_theta=100000.0, max_position_embeddings=4096, tie_word_embeddings=False, **ids),
        scale_factor=SCALE_FACTOR, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False, **ids)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(building)  # replaces the 512 px tiny model's weights and config
    building.rename(folder)
    return folder


def validating(row):
    return ROWS[row].get("val_json", None) != ""


def fine_tune_args(task, row, splits, seed, model, out, steps):
    """fine_tune.py's command line for a row: the benchmark's common settings, then the row's own."""
    split = splits["split" if validating(row) else "split_no_val"]
    own = ROWS[row]
    return [f"--model_path={model}", f"--output_dir={out}", "--resume=overwrite",
            f"--train_json={split / 'train.json'}", f"--val_json={split / 'val.json' if validating(row) else ''}",
            "--test_json=", f"--max_steps={steps}", f"--per_device_train_batch_size={BATCH}",
            "--gradient_accumulation_steps=1", f"--learning_rate={own.get('learning_rate', LEARNING_RATE[task])}",
            f"--warmup_steps={WARMUP_STEPS}",
            "--logging_steps=25", f"--save_steps={steps}", f"--eval_steps={EVAL_STEPS}",
            f"--per_device_eval_batch_size={EVAL_BATCH}", f"--image_longest_edge={IMAGE_SIZE}",
            "--gradient_checkpointing=false", f"--seed={seed}",
            *[flag(k, v) for k, v in own.items() if k not in ROW_OWN]]


def reusable(result_file, key):
    """The stored result of a run with the same code, settings and fine_tune.py defaults in force, or None."""
    if result_file.is_file():
        stored = json.loads(result_file.read_text())
        if stored.get("key") == key:
            return stored
    return None


def run_key(args):
    """What makes two runs the same run: the code, the arguments, and fine_tune.py's defaults the arguments
    leave in force."""
    given = {a[2:].split("=")[0] for a in args}
    defaults = {k: v for k, v in settings_of(vars(fine_tune)).items() if k not in given}
    return {"code": code_hash(), "args": args, "fine_tune_defaults": defaults}


def pilot_seconds_per_step(task, splits, model, work):
    """Each row's training seconds per step on this task, and its step budget's factor: BASELINE's seconds per
    step over the row's. Pilot runs on the split's training images without validation measure them (rows that
    train alike share one): all kinds side by side, each training for PILOT_SECONDS (fine_tune.py's
    --max_train_seconds), so that whatever else loads the machine slows them alike. The factor is the median over
    PILOT_REPEATS such rounds."""
    defaults = settings_of(vars(fine_tune))
    kinds = {}  # what sets a step's cost -> the rows that train so
    for row in (r for r in ROWS if "max_steps" not in ROWS[r]):
        kind = tuple(flag(k, {**defaults, **ROWS[row]}[k]) for k in COST_SETTINGS)
        kinds.setdefault(kind, []).append(row)
    common = [f"--model_path={model}", "--resume=overwrite", f"--train_json={splits['split_no_val'] / 'train.json'}",
              "--val_json=", "--test_json=", "--max_steps=1000000", f"--max_train_seconds={PILOT_SECONDS}",
              f"--per_device_train_batch_size={BATCH}", "--gradient_accumulation_steps=1",
              f"--learning_rate={LEARNING_RATE[task]}", f"--warmup_steps={WARMUP_STEPS}", "--save_steps=1000000",
              f"--image_longest_edge={IMAGE_SIZE}", "--gradient_checkpointing=false"]

    def pilot(spec):
        i, kind, repeat = spec
        out = work / task / "pilots" / f"kind{i}-{repeat}"
        args = common + list(kind) + [f"--output_dir={out / 'model'}"]
        key = run_key(args)
        stored = reusable(out / "pilot.json", key)
        if stored is None:
            out.mkdir(parents=True, exist_ok=True)
            run("fine_tune.py", *args, cwd=out, log=out / "train.log")
            history = json.loads((out / "model" / "train_log_history.json").read_text())
            end = history[-1]
            stored = {"key": key, "seconds_per_step": end["train_runtime"] / end["step"]}
            write_json(out / "pilot.json", stored)
        return stored["seconds_per_step"]
    rounds = []
    for repeat in range(PILOT_REPEATS):
        with ThreadPoolExecutor(len(kinds)) as pool:
            rounds.append(list(pool.map(pilot, [(i, kind, repeat) for i, kind in enumerate(kinds)])))
    base = next(i for i, rows in enumerate(kinds.values()) if BASELINE in rows)
    return {row: {"seconds_per_step": statistics.median(r[i] for r in rounds),
                  "factor": statistics.median(r[base] / r[i] for r in rounds)}
            for i, rows in enumerate(kinds.values()) for row in rows}


def train_and_test(task, row, seed, splits, model, steps, work):
    """One run: fine_tune.py with the row's settings, then vlm_benchmark_test_dataset.py on the held-out images;
    returns its numbers with the prediction for every held-out image. A finished run of the same code and
    settings is not repeated."""
    out = work / task / "runs" / f"{row}-split{seed}"
    args = fine_tune_args(task, row, splits, seed, model, out / "model", steps)
    key = run_key(args)
    stored = reusable(out / "result.json", key)
    if stored:
        return stored
    out.mkdir(parents=True, exist_ok=True)
    train_s = run("fine_tune.py", *args, cwd=out, log=out / "train.log")
    # --resume=overwrite: a run of other code retrains the model, whose earlier report must not be continued
    test_s = run("vlm_benchmark_test_dataset.py", f"--model_path={out / 'model'}",
                 f"--test_json={splits['split'] / 'test.json'}", f"--report_dir={out / 'report'}",
                 f"--batch_size={EVAL_BATCH}", "--resume=overwrite", cwd=out, log=out / "test.log")
    report = json.loads((out / "report" / "report.json").read_text())
    with open(out / "report" / "predictions.csv", newline="") as f:
        predictions = sorted((r["path"], r["true_class"], r["predicted_class"]) for r in csv.DictReader(f))
    history = json.loads((out / "model" / "train_log_history.json").read_text())
    bias = json.loads((out / "model" / "classes.json").read_text())["class_bias"]
    result = {"key": key, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
              "steps": max(e["step"] for e in history), "bias_strength": (bias or {}).get("strength"),
              "train_s": train_s, "test_s": test_s, "classes": report["classes"],
              "paths": [p for p, _, _ in predictions], "true": [t for _, t, _ in predictions],
              "pred": [p for _, _, p in predictions]}
    write_json(out / "result.json", result)
    return result


def macro_f1(true, pred, n):
    """Macro-F1 of integer class arrays as vlmcls.report.metrics computes it: the mean F1 of the classes present
    among the true labels (a prediction of n, no class, counts as wrong)."""
    import numpy as np
    tp = np.bincount(true[true == pred], minlength=n)[:n]
    predicted = np.bincount(pred[pred < n], minlength=n)[:n]
    actual = np.bincount(true, minlength=n)[:n]
    present = actual > 0
    return float(np.mean(2 * tp[present] / (predicted[present] + actual[present])))


def paired_interval(runs, baseline, metric, resamples, seed=0):
    """Mean difference (row - baseline) of `metric` over the splits, and its 95% bootstrap interval: each resample
    draws splits with replacement, then the held-out images of each drawn split with replacement, and scores both
    rows on the same drawn images."""
    import numpy as np
    units = []
    for run, base in zip(runs, baseline):
        if run["paths"] != base["paths"]:
            sys.exit("error: paired runs hold out different images")
        index = {c: i for i, c in enumerate(run["classes"])}
        units.append(tuple(np.array([index.get(c, len(index)) for c in values])
                           for values in (run["true"], run["pred"], base["pred"])))
    n = len(runs[0]["classes"])
    for (true, row, base), run, base_run in zip(units, runs, baseline):  # the scoring agrees with the reports'
        if max(abs(macro_f1(true, row, n) - run["macro_f1"]), abs(macro_f1(true, base, n) - base_run["macro_f1"])) > 1e-9:
            sys.exit("error: the benchmark's macro-F1 differs from vlm_benchmark_test_dataset.py's")

    def score(true, pred):
        return float(np.mean(true == pred)) if metric == "accuracy" else macro_f1(true, pred, n)

    def difference(picks):
        return statistics.mean(score(true[p], row[p]) - score(true[p], base[p])
                               for (true, row, base), p in picks)
    rng = np.random.default_rng(seed)
    observed = difference([(u, slice(None)) for u in units])
    draws = []
    for _ in range(resamples):
        chosen = [units[i] for i in rng.integers(len(units), size=len(units))]
        draws.append(difference([(u, rng.integers(len(u[0]), size=len(u[0]))) for u in chosen]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return observed, float(low), float(high)


def mean_spread(values, digits=3):
    """Mean ± sample standard deviation (± 0 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def interval(observed, low, high):
    verdict = "**better**" if low > 0 else "**worse**" if high < 0 else "no difference shown"
    return f"{observed:+.3f} [{low:+.3f}, {high:+.3f}] {verdict}"


def comparisons(results):
    """{task: {row: (macro-F1 interval, accuracy interval)}} of every row against BASELINE."""
    return {task: {row: tuple(paired_interval(results[task][row], results[task][BASELINE], metric, BOOTSTRAP)
                              for metric in ("macro_f1", "accuracy"))
                   for row in ROWS if row != BASELINE} for task in TASKS}


def table(results, compared):
    lines = ["| task | row | accuracy | macro-F1 | macro-F1 - original [95% CI] | accuracy - original [95% CI] | "
             "steps | images seen | train s | bias strength |", "|---" * 10 + "|"]
    for task in TASKS:
        for row in ROWS:
            runs = results[task][row]
            strengths = [r["bias_strength"] for r in runs if r.get("bias_strength") is not None]
            f1, acc = compared[task].get(row, (None, None))
            lines.append(
                f"| {task} | {row} | {mean_spread([r['accuracy'] for r in runs])} | "
                f"{mean_spread([r['macro_f1'] for r in runs])} | {interval(*f1) if f1 else '-'} | "
                f"{interval(*acc) if acc else '-'} | {statistics.mean(r['steps'] for r in runs):.0f} | "
                f"{statistics.mean(r['steps'] for r in runs) * BATCH:.0f} | "
                f"{mean_spread([r['train_s'] for r in runs], 0)} | "
                f"{' / '.join(f'{x:.1f}' for x in strengths) if strengths else '-'} |")
    return "\n".join(lines)


def verdicts(compared):
    """The protocol's rule for defaults: an option is on by default only where its macro-F1 interval over
    BASELINE is above 0 on at least two tasks and below 0 on none."""
    lines = []
    for row in ROWS:
        if row == BASELINE:
            continue
        better = [t for t in TASKS if compared[t][row][0][1] > 0]
        worse = [t for t in TASKS if compared[t][row][0][2] < 0]
        ok = len(better) >= 2 and not worse
        lines.append(f"- {row}: better on {', '.join(better) or 'no task'}, worse on {', '.join(worse) or 'no task'}"
                     f": {'may be a default' if ok else 'not a default by the rule'}")
    return "\n".join(lines)


def report(results, compared, pilots, splits, started, elapsed, commit):
    rows = "\n".join(f"- {name}: " + (" ".join(flag(k, v) for k, v in flags.items()) or "fine_tune.py's defaults")
                     for name, flags in ROWS.items())
    pilot_lines = "\n".join(f"- {task}: " + ", ".join(f"{row} {p['seconds_per_step'] * 1000:.0f} ms (steps x "
                                                      f"{p['factor']:.2f})" for row, p in pilots[task].items())
                            for task in TASKS)
    kind = "confirmation" if CONFIRM else "development"
    return f"""# Accuracy: the training recipes at equal training time ({kind} run, protocol {PROTOCOL})

Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy.py {' '.join(sys.argv[1:])}`

- {kind.capitalize()} run of commit {commit} (code hash {code_hash()}), split seeds {splits}; started {started},
  {elapsed / 60:.1f} min, on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs).
- Model: a tiny SmolVLM (Idefics3) trained from scratch, a stand-in for the pretrained model that compares
  recipes and says nothing absolute: vision {VISION_LAYERS} layers x {VISION_WIDTH}, language {TEXT_LAYERS} layers x
  {TEXT_WIDTH}, {IMAGE_SIZE} px images in {PATCH_SIZE} px patches, {(IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2}
  image tokens; split s initialises it from seed s and trains with --seed=s.
- Equal training time: {BASELINE} trains {', '.join(f'{STEPS[t]} steps ({t})' for t in TASKS)} of {BATCH}
  rows; every other row as many steps as fit in
  that time, from its pilot's seconds per step ({PILOT_SECONDS}-second pilots of every row side by side, median of
  {PILOT_REPEATS} rounds; the seconds below include validation where a row validates). Learning rate
  {', '.join(f'{LEARNING_RATE[t]} ({t})' for t in TASKS)},
  {WARMUP_STEPS} warm-up steps,
  validation every {EVAL_STEPS} steps where the row validates.
- Scores: score mode on each split's held-out images (with the class bias where a row fitted one). Accuracy and
  macro-F1 are mean ± standard deviation over the splits; differences are paired (same split, seed and images),
  with a 95% bootstrap interval over splits and held-out images ({BOOTSTRAP} resamples).

Rows (fine_tune.py settings; rows with `--val_json=` train on the split without validation images):
{rows}

Seconds per training step in the pilots:
{pilot_lines}

{table(results, compared)}

By the protocol's rule for defaults (macro-F1 interval above 0 on two tasks or more, below 0 on none):
{verdicts(compared)}
"""


def check_confirmation(commit):
    """--confirm: the code must be committed, and the splits not confirmed before with other code."""
    if git("status", "--porcelain", "--", "*.py"):
        sys.exit("error: --confirm needs the code committed (git status shows changed .py files): a confirmation "
                 "records the commit it ran")
    ledger = json.loads(LEDGER.read_text()) if LEDGER.is_file() else []
    for entry in ledger:
        spent = sorted(set(entry["splits"]) & set(CONFIRMATION_SPLITS))
        if spent and entry["code"] != code_hash():
            block = max(s for e in ledger for s in e["splits"]) // 100 * 100 + 100
            sys.exit(f"error: split seeds {spent} were confirmed at commit {entry['commit']} with other code; "
                     f"confirming again on them would let them choose. Draw new ones, e.g. "
                     f"--confirmation_splits='{list(range(block, block + len(CONFIRMATION_SPLITS)))}'")
    return ledger


def main():
    unknown = [t for t in TASKS if t not in TASK_DATA or t not in STEPS or t not in LEARNING_RATE]
    if unknown or BASELINE not in ROWS:
        sys.exit(f"error: unknown task(s) {unknown} (tasks: {list(TASK_DATA)}, each with STEPS and LEARNING_RATE) "
                 "or baseline "
                 f"{BASELINE!r} not among the rows")
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    ledger = check_confirmation(commit) if CONFIRM else None
    splits = CONFIRMATION_SPLITS if CONFIRM else DEVELOPMENT_SPLITS
    started, start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="accuracy-benchmark-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        models = {s: build_model(work / (f"model-{IMAGE_SIZE}px-p{PATCH_SIZE}s{SCALE_FACTOR}-v{VISION_WIDTH}x"
                                         f"{VISION_LAYERS}-t{TEXT_WIDTH}x{TEXT_LAYERS}-seed{s}"), s) for s in splits}
        task_splits = {(task, s): prepare_split(task, s, work) for task in TASKS for s in splits}
        pilots = {}
        for task in TASKS:  # one at a time, so that no pilot shares the cores with another
            pilots[task] = pilot_seconds_per_step(task, task_splits[task, splits[0]], models[splits[0]], work)
            print(f"{task}: seconds per step " + ", ".join(f"{r} {p['seconds_per_step']:.3f}"
                                                           for r, p in pilots[task].items()), flush=True)
        runs = [(task, row, s) for task in TASKS for s in splits for row in ROWS]

        def one(spec):
            task, row, s = spec
            steps = ROWS[row].get("max_steps") or round(STEPS[task] * pilots[task][row]["factor"])
            r = train_and_test(task, row, s, task_splits[task, s], models[s], steps, work)
            print(f"{task} {row} split {s}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}, "
                  f"{r['steps']} steps, {r['train_s']:.0f} s training", flush=True)
            return r
        with ThreadPoolExecutor(JOBS) as pool:
            done = list(pool.map(one, runs))
        results = {task: {row: [] for row in ROWS} for task in TASKS}
        for (task, row, _), r in zip(runs, done):
            results[task][row].append(r)
    compared = comparisons(results)
    text = report(results, compared, pilots, splits, started, time.perf_counter() - start, commit)
    print("\n" + text)
    output = OUTPUT or ROOT / "benchmarks" / f"results-accuracy-{'confirmation' if CONFIRM else 'development'}.md"
    atomic_write(output, text)
    print(f"written to {output}")
    if CONFIRM:
        entry = {"commit": commit, "code": code_hash(), "protocol": PROTOCOL, "splits": CONFIRMATION_SPLITS,
                 "tasks": TASKS, "rows": list(ROWS), "started": started, "output": str(Path(output).name)}
        write_json(LEDGER, [e for e in ledger if e != entry] + [entry])


if __name__ == "__main__":
    configure(globals())
    run_main(main)
