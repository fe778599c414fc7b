"""Benchmark: test accuracy and macro-F1 of the training recipes on real data (elpv, 2 and 4 classes), at equal compute.

For every task, seed and row (a recipe: fine_tune.py settings), a tiny SmolVLM-architecture model initialised
from the seed is trained from scratch and evaluated on the task's test images. The five scripts run as separate
processes, exactly as a user runs them: download_dataset.py --source=elpv, generate_train_json.py,
fine_tune.py, vlm_benchmark_test_dataset.py (its report.json is read). Every row encodes the same number of
training images, STEPS x BATCH (one image per training row and step; a run that stops early encodes fewer,
and the table says how many); seconds are reported too. The table goes to stdout and to OUTPUT.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy.py                         # full run
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy.py --steps=5 --seeds=1     # smoke check

Rows without validation train on a split made with VAL_RATIO=0, so they see the validation images as training
images; the test images are the same for all rows. With WORK_DIR set, an interrupted benchmark run again with
the same settings reuses the runs it finished.
"""
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
from vlmcls.cli import configure, run_main, settings_of  # noqa: E402
from vlmcls.files import atomic_write, write_json  # noqa: E402

TASKS = ["elpv2", "elpv4"]  # names from TASK_FLAGS
ROWS = {  # recipe name -> fine_tune.py settings; the first is the baseline the targets compare with
    "original": {"multi_turn": False, "train_questions": "all", "val_json": "", "class_balance": "none"},
    "multi_turn": {"multi_turn": True, "train_questions": "all", "val_json": "", "class_balance": "none"},
    "classification_only": {"multi_turn": False, "train_questions": "classification", "val_json": "",
                            "class_balance": "none"},
    "validation": {"multi_turn": False, "train_questions": "all", "class_balance": "none", "fit_class_bias": False},
    "class_bias": {"multi_turn": False, "train_questions": "all", "class_balance": "none", "fit_class_bias": True},
    "oversample": {"multi_turn": False, "train_questions": "all", "val_json": "", "class_balance": "oversample"},
    "defaults": {},
}
SEEDS = 3  # seeds 0..SEEDS-1: model initialisation and fine_tune.py's --seed
STEPS = 1600  # optimizer steps of every run: the compute budget is STEPS x BATCH encoded training images
BATCH = 16  # training images per step (one process, no gradient accumulation)
LEARNING_RATE = 5e-4  # peak learning rate of every run (1600 steps, elpv2, one seed: 0.802 vs 0.789 at 2e-3)
WARMUP_STEPS = 25  # linear warm-up
EVAL_STEPS = 200  # validation interval of the rows that validate (and one at the end)
IMAGE_SIZE = 128  # pixels: the tiny model's tile and fine_tune.py's --image_longest_edge
PATCH_SIZE = 16  # vision patch size: (IMAGE_SIZE / PATCH_SIZE)^2 patches per image
SCALE_FACTOR = 2  # pixel shuffle: image tokens = patches / SCALE_FACTOR^2
VISION_WIDTH = 64  # hidden size of the tiny vision encoder
VISION_LAYERS = 2  # its layers
TEXT_WIDTH = 64  # hidden size of the tiny language model
TEXT_LAYERS = 2  # its layers
EVAL_BATCH = 32  # images per forward pass when validating and testing
JOBS = 2  # runs at a time, each its own processes (as many as there are idle cores: the runs do not interfere)
THREADS = 1  # torch threads per script (OMP_NUM_THREADS): a tiny model's threads only wait on each other; 0: default
WORK_DIR = ""  # data, models and runs; "": a temporary folder, removed at the end
OUTPUT = ""  # where the table is also written; "": benchmarks/results-accuracy.md

ROOT = Path(__file__).resolve().parents[1]
TASK_FLAGS = {"elpv2": ["--source=elpv", "--elpv_two_classes=true"], "elpv4": ["--source=elpv"]}


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


def prepare_task(task, work):
    """The task's images and two splits with the same test images: with validation images (split/) and
    without, every non-test image for training (split_no_val/)."""
    folder = work / task
    if not (folder / "images").is_dir():
        run("download_dataset.py", *TASK_FLAGS[task], f"--dataset_dir={folder / 'images'}", cwd=work,
            log=work / f"{task}-download.log")
    for name, ratio in (("split", None), ("split_no_val", 0)):
        out = folder / name
        if not (out / "test.json").is_file():
            out.mkdir(parents=True, exist_ok=True)
            run("generate_train_json.py", f"--dataset_dir={folder / 'images'}", f"--train_json={out / 'train.json'}",
                f"--val_json={out / 'val.json'}", f"--test_json={out / 'test.json'}",
                *([f"--val_ratio={ratio}"] if ratio is not None else []), cwd=work, log=out / "generate.log")
    tests = [json.loads((folder / name / "test.json").read_text())["samples"] for name in ("split", "split_no_val")]
    if tests[0] != tests[1]:
        sys.exit(f"error: {folder}: the splits with and without validation have different test images")
    return folder


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


def flag(name, value):
    return f"--{name}={json.dumps(value) if isinstance(value, bool) else value}"


def train_and_test(task_dir, row, seed, model):
    """One run: fine_tune.py with the row's settings, then vlm_benchmark_test_dataset.py; returns its numbers.
    A run already finished with the same model and settings is not repeated."""
    out = task_dir / "runs" / f"{row}-seed{seed}"
    settings = ROWS[row]
    validating = settings.get("val_json", None) != ""
    split = task_dir / ("split" if validating else "split_no_val")
    args = [f"--model_path={model}", f"--output_dir={out / 'model'}", "--resume=overwrite",
            f"--train_json={split / 'train.json'}", f"--val_json={split / 'val.json' if validating else ''}",
            "--test_json=", f"--max_steps={STEPS}", f"--per_device_train_batch_size={BATCH}",
            "--gradient_accumulation_steps=1", f"--learning_rate={LEARNING_RATE}", f"--warmup_steps={WARMUP_STEPS}",
            "--logging_steps=25", f"--save_steps={STEPS}", f"--eval_steps={EVAL_STEPS}",
            f"--per_device_eval_batch_size={EVAL_BATCH}", f"--image_longest_edge={IMAGE_SIZE}",
            "--gradient_checkpointing=false", f"--seed={seed}",
            *[flag(k, v) for k, v in settings.items() if k != "val_json"]]
    result_file = out / "result.json"
    # fine_tune.py's defaults that the run's flags leave in force count as settings too: a run trained before one
    # of them changed is stale (a result written before they were recorded is taken to be of the current ones)
    defaults = settings_of(vars(fine_tune))
    given = {a[2:].split("=")[0] for a in args}

    def in_force(values):
        return {k: v for k, v in values.items() if k not in given}
    if result_file.is_file():
        stored = json.loads(result_file.read_text())
        if stored["args"] == args and in_force(stored.get("fine_tune_defaults", defaults)) == in_force(defaults):
            return stored
    out.mkdir(parents=True, exist_ok=True)
    train_s = run("fine_tune.py", *args, cwd=out, log=out / "train.log")
    test_s = run("vlm_benchmark_test_dataset.py", f"--model_path={out / 'model'}",
                 f"--test_json={task_dir / 'split' / 'test.json'}", f"--report_dir={out / 'report'}",
                 f"--batch_size={EVAL_BATCH}", cwd=out, log=out / "test.log")
    report = json.loads((out / "report" / "report.json").read_text())
    history = json.loads((out / "model" / "train_log_history.json").read_text())
    steps = max(e["step"] for e in history)
    result = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "images": steps * BATCH,
              "bias_strength": (json.loads((out / "model" / "classes.json").read_text())["class_bias"] or {}).get(
                  "strength"),
              "train_s": train_s, "test_s": test_s, "args": args, "fine_tune_defaults": defaults,
              "recall": {c: m["recall"] for c, m in report["per_class"].items()}}
    write_json(result_file, result)
    return result


def mean_spread(values, digits=3):
    """Mean ± sample standard deviation (± 0 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def table(results):
    lines = ["| task | row | accuracy | macro-F1 | class bias strength | images encoded | train s | test s |",
             "|---" * 8 + "|"]
    for task in TASKS:
        for row in ROWS:
            runs = results[task][row]
            strengths = [r["bias_strength"] for r in runs if r.get("bias_strength") is not None]
            lines.append(f"| {task} | {row} | {mean_spread([r['accuracy'] for r in runs])} | "
                         f"{mean_spread([r['macro_f1'] for r in runs])} | "
                         f"{' / '.join(f'{x:.1f}' for x in strengths) if strengths else '-'} | "
                         f"{statistics.mean(r['images'] for r in runs):.0f} | "
                         f"{mean_spread([r['train_s'] for r in runs], 0)} | {mean_spread([r['test_s'] for r in runs], 0)} |")
    return "\n".join(lines)


def recall_table(results):
    """Mean recall of each class: whether the rare classes are ever predicted."""
    lines = []
    for task in TASKS:
        classes = list(results[task][next(iter(ROWS))][0]["recall"])
        lines += [f"\n{task}, mean recall per class:\n", "| row | " + " | ".join(classes) + " |",
                  "|---" * (len(classes) + 1) + "|"]
        for row in ROWS:
            runs = results[task][row]
            lines.append(f"| {row} | " + " | ".join(f"{statistics.mean(r['recall'][c] for r in runs):.3f}"
                                                    for c in classes) + " |")
    return "\n".join(lines)


def targets(results):
    """The issue's targets, each with its numbers: the defaults against the first row (the original recipe)."""
    base, lines = next(iter(ROWS)), []
    if "defaults" not in ROWS or base == "defaults":
        return "- not measured: the rows need `original` first and `defaults`"
    for task in TASKS:
        gain = statistics.mean(r["macro_f1"] for r in results[task]["defaults"]) - \
            statistics.mean(r["macro_f1"] for r in results[task][base])
        needed = 0.05 if task == "elpv4" else 0.0
        lines.append(f"- {'met' if gain > needed else 'MISSED'}: {task} macro-F1 of defaults minus {base} "
                     f"{gain:+.3f} (needs > {needed:.2f})")
    if "elpv2" in TASKS:
        accuracy = statistics.mean(r["accuracy"] for r in results["elpv2"]["defaults"])
        lines.append(f"- {'met' if accuracy >= 0.80 else 'MISSED'}: elpv2 accuracy of defaults {accuracy:.3f} "
                     "(needs >= 0.80)")
    return "\n".join(lines)


def report(results, started, elapsed):
    rows = "\n".join(f"- {name}: " + (" ".join(flag(k, v) for k, v in flags.items()) or "fine_tune.py's defaults")
                     for name, flags in ROWS.items())
    return f"""# Accuracy: the training recipes on elpv at equal compute

Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy.py {' '.join(sys.argv[1:])}`

- Run {started}, {elapsed / 60:.1f} min, on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs).
- Model: a tiny SmolVLM (Idefics3) trained from scratch: vision {VISION_LAYERS} layers x {VISION_WIDTH},
  language {TEXT_LAYERS} layers x {TEXT_WIDTH}, {IMAGE_SIZE} px images in {PATCH_SIZE} px patches,
  {(IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2} image tokens; initialised from each seed (0..{SEEDS - 1}).
- Every run: {STEPS} steps of {BATCH} training rows, one image each ({STEPS * BATCH} images encoded unless
  early stopping ends it sooner), learning rate {LEARNING_RATE}, {WARMUP_STEPS} warm-up steps; validation
  every {EVAL_STEPS} steps where the row validates. Test: score mode on the held-out test images, with
  the class bias where the row fitted one (its strength, chosen on the validation images, per seed).
- Accuracy and macro-F1 are the mean ± standard deviation over the seeds; seconds are wall-clock, the
  training's including its validation ({JOBS} run(s) at a time, {THREADS or "default"} torch thread(s) each).

Rows (fine_tune.py settings; rows with `--val_json=` train on a split without validation images):
{rows}

{table(results)}
{recall_table(results)}

Targets:
{targets(results)}
"""


def main():
    unknown = [t for t in TASKS if t not in TASK_FLAGS]
    if unknown:
        sys.exit(f"error: unknown task(s) {unknown}: use {list(TASK_FLAGS)}")
    started, start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="accuracy-benchmark-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        runs = []  # (task, row, seed, task folder, model folder), in table order
        for task in TASKS:
            task_dir = prepare_task(task, work)
            for seed in range(SEEDS):
                model = build_model(work / (f"model-{IMAGE_SIZE}px-p{PATCH_SIZE}s{SCALE_FACTOR}-v{VISION_WIDTH}x"
                                            f"{VISION_LAYERS}-t{TEXT_WIDTH}x{TEXT_LAYERS}-seed{seed}"), seed)
                runs += [(task, row, seed, task_dir, model) for row in ROWS]
        # Every seed's baseline and options first and the defaults last, so the defaults can be chosen from the
        # options' numbers while they run (a benchmark run again reuses what it finished).
        order = sorted(range(len(runs)), key=lambda i: (runs[i][1] == "defaults", runs[i][2]))

        def one(run_spec):
            task, row, seed, task_dir, model = run_spec
            r = train_and_test(task_dir, row, seed, model)
            print(f"{task} {row} seed {seed}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}, "
                  f"{r['images']} images, {r['train_s']:.0f} s training, {r['test_s']:.0f} s test", flush=True)
            return r
        with ThreadPoolExecutor(JOBS) as pool:
            done = dict(zip(order, pool.map(one, [runs[i] for i in order])))
        results = {task: {row: [] for row in ROWS} for task in TASKS}
        for i, (task, row, *_) in enumerate(runs):
            results[task][row].append(done[i])
    text = report(results, started, time.perf_counter() - start)
    print("\n" + text)
    output = OUTPUT or ROOT / "benchmarks" / "results-accuracy.md"
    atomic_write(output, text)
    print(f"written to {output}")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
