"""Benchmark: fine-tuning with a frozen vision encoder against its floor, one encoder forward pass over the images.

Builds a randomly initialised model of SmolVLM-256M-Instruct's exact architecture (speed only: its answers mean
nothing), IMAGES training JPEGs of SIZE in several class folders, and the training JSON from them with
generate_train_json.py. Then, each in a fresh process:

- the floor: one forward pass of the vision encoder and connector (Idefics3's get_image_features) over all the
  images, in inference mode, at fine_tune.py's default resolution (IMAGE_LONGEST_EDGE=512, no splitting: a 640x480
  image is one 512-px tile), on the pixels training sees (vlmcls.inputs.InputEncoder); nothing that looks at every
  image can take less;
- each row of ROWS: fine_tune.py run as a user runs it, EPOCHS epochs over the images, the classification question
  only (one row per image), no validation or test images; its whole process timed, and the Trainer's train_runtime
  read from the saved train_log_history.json.

All of that RUNS times, a number fixed before the first run (at least 5): each run measures the floor and then every
row, so that whatever slows the machine for a while slows both. Each row's seconds are divided by its run's floor;
the table gives each ratio's median and range over the runs, and a target (TARGETS, the issue's) is met only when the
slowest run meets it. The table, with every run's ratios, goes to stdout and to OUTPUT.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/frozen.py                 # full: ~30 h on 2 idle CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/frozen.py --images=24     # ~75 min on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/frozen.py --device=cuda   # the same on a GPU
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/frozen.py --tiny=true --images=4 --runs=2  # smoke check

On a machine that other processes load, --threads=1 avoids the stalls of two threads waiting on each other for a
core; the CPU seconds next to each time are the least disturbed measure of the work.

The full run (1,000 images, three epochs) takes hours on 2 CPU cores, about six a run: the issue measured about
2.2 s per image for the floor and 3.9 s per image and epoch for a LoRA step there, so today's LoRA row alone is over
three hours; --rows='["lora_cached"]' measures the defaults' row alone (about 1.5 h a run on two threads). The
ratios are per-image costs and so about the same at any size, except for each fine_tune.py run's fixed cost
(start-up, loading the model, saving it: some 15-30 s for the 256M architecture on 2 CPU cores), which weighs more in
a small run: at --images=24 it adds about 0.3-0.5 to each ratio, at 100 images about 0.1, at 1,000
a few hundredths. The table's "outside it" column (total minus train_runtime) shows it.
"""
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

from common import CLASSES, ROOT, build_model, check_runs, command, commit, flag, machine, model_name, now, \
    peak_gb, run_job, run_worker, script_env, spread, timed, verdict, write_report  # noqa: E402
from vlmcls.cli import OneOf, configure, run_main  # noqa: E402

IMAGES = 1000  # training images; the ratios are per image, so a small count (e.g. 24) measures them in minutes
EPOCHS = 3  # passes over the images in each fine_tune.py run
SIZE = "640x480"  # size of the JPEGs, WIDTHxHEIGHT
BATCH_SIZE = 4  # images per step in fine_tune.py (train and eval batch size), and per floor forward pass
ACCUMULATION = 1  # fine_tune.py's gradient_accumulation_steps
ROWS = ["lora", "lora_cached", "lora_cached_checkpointing", "head_frozen"]  # names from ROW_FLAGS, in order
RUNS = 5  # runs of the floor and every row, fixed before the first (at least 5; fewer only with TINY)
FINE_TUNE_FLAGS = {}  # more fine_tune.py settings for every row, e.g. {"save_steps": 10000}
DEVICE = "cpu"  # cpu or cuda
THREADS = 0  # torch CPU threads of every process (OMP_NUM_THREADS); 0: torch's default (one per core)
TINY = False  # the tests' tiny SmolVLM instead of the full-size one: a quick check that the benchmark runs
OUTPUT = ""  # where the table is also written; "": benchmarks/results-frozen.md (results-frozen-tiny.md with --tiny)
WORK_DIR = ""  # folder for the model, images, runs and their logs, kept; "": a temporary one, removed at the end
SEED = 0  # seed for the random weights and images
JOB = ""  # internal: the floor measurement as JSON, run by the benchmark in a fresh process

# fine_tune.py settings of each row, as on its command line.
ROW_FLAGS = {
    # LoRA as it was before the issue: the encoder run at every step, activations recomputed in the backward pass
    "lora": {"use_lora": True, "freeze_vision": True, "cache_vision": False, "gradient_checkpointing": True},
    # the defaults: the encoder's output computed once, and (frozen encoder) no recomputation of activations
    "lora_cached": {"use_lora": True, "freeze_vision": True, "cache_vision": True},
    "lora_cached_checkpointing": {"use_lora": True, "freeze_vision": True, "cache_vision": True,
                                  "gradient_checkpointing": True},  # the default before "auto": less memory
    "head_frozen": {"objective": "head", "freeze_backbone": True},  # each image's pooled state computed once
}
# at most this many times the floor's seconds (the issue's)
TARGETS = {"lora_cached": 2.5, "lora_cached_checkpointing": 2.5, "head_frozen": 1.3}


# ---------------------------------------------------------------- the floor, in the worker process

def floor_job(job, torch, ft, device):
    """Seconds of one forward pass of the vision encoder and connector over the training images, BATCH_SIZE at a
    time, after one untimed batch; encoding the images (decoding, resizing) is timed apart and not counted."""
    from vlmcls.images import read_dataset_json
    from vlmcls.inputs import InputEncoder, collate
    from vlmcls.models import load_model, load_processor, pick_dtype, set_resolution
    data = read_dataset_json(job["train_json"])
    paths = [s["image"] for s in data["samples"]]
    processor = load_processor(job["model"])
    set_resolution(processor, ft.IMAGE_LONGEST_EDGE, ft.IMAGE_SPLITTING)
    encoder = InputEncoder(processor, data["max_image_pixels"], enlarge=ft.ENLARGE_IMAGES, cache=False)
    model = load_model(job["model"], torch.float32, device).eval()  # float32 weights, autocast: as fine_tune.py
    dtype = pick_dtype(device, ft.DTYPE)
    totals = {"floor_s": 0.0, "floor_cpu": 0.0, "encode_s": 0.0, "encode_cpu": 0.0}
    tiles = set()

    def pixels(chunk):
        parts = [encoder.image_part(path) for path in chunk]
        batch = collate([{"input_ids": ids, "tensors": tensors} for ids, tensors, _ in parts], pad_id=0)
        tiles.add(batch["pixel_values"].shape[1])
        return {k: v.to(device) for k, v in batch.items() if k in ("pixel_values", "pixel_attention_mask")}

    def forward(batch):
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            model.get_image_features(**batch)

    forward(pixels(paths[:BATCH_SIZE]))  # warm-up
    for start in range(0, len(paths), BATCH_SIZE):
        batch = {}
        wall, cpu = timed(torch, device, lambda: batch.update(pixels(paths[start:start + BATCH_SIZE])))
        totals["encode_s"] += wall
        totals["encode_cpu"] += cpu
        wall, cpu = timed(torch, device, lambda: forward(batch))
        totals["floor_s"] += wall
        totals["floor_cpu"] += cpu
    return {**totals, "images": len(paths), "tiles": sorted(tiles), "peak_gb": peak_gb(torch, device)}


# ---------------------------------------------------------------- orchestrating, in the main process

def make_data(work):
    """IMAGES JPEGs of SIZE (a colour per class, noise on it) in class folders, and one more a class that
    generate_train_json.py holds out as the test split, so that exactly IMAGES train; returns the train JSON."""
    import numpy as np
    from PIL import Image
    folder = work / "images"
    shutil.rmtree(folder, ignore_errors=True)
    width, height = map(int, SIZE.split("x"))
    classes = CLASSES[:max(1, min(len(CLASSES), IMAGES))]
    rng = np.random.default_rng(SEED)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        colour = np.array([(60 + 90 * c) % 256, (200 - 50 * c) % 256, (30 + 140 * c) % 256])
        for i in range(IMAGES // len(classes) + (c < IMAGES % len(classes)) + 1):
            pixels = np.clip(colour + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i:05d}.jpg", quality=90)
    train = work / "train.json"
    subprocess.run([sys.executable, str(ROOT / "generate_train_json.py"), f"--dataset_dir={folder}",
                    f"--train_json={train}", "--val_json=", f"--test_json={work / 'test.json'}", "--val_ratio=0",
                    "--train_ratio=0.999"], env=script_env(), check=True, stdout=subprocess.DEVNULL)
    count = len(json.loads(train.read_text())["samples"])
    if count != IMAGES:
        raise RuntimeError(f"generate_train_json.py gave {count} training images, not {IMAGES}")
    return train


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fine_tune(row, run, model_dir, train_json, work):
    """One fine_tune.py run, as a user runs it; its seconds (whole process, and the Trainer's train_runtime)."""
    out = work / f"out-{row}"
    flags = {"model_path": model_dir, "train_json": train_json, "val_json": "", "test_json": "", "output_dir": out,
             "equivalent_epochs_to_train": EPOCHS, "per_device_train_batch_size": BATCH_SIZE,
             "per_device_eval_batch_size": BATCH_SIZE, "gradient_accumulation_steps": ACCUMULATION,
             "train_questions": "classification", "device": DEVICE, "resume": "overwrite", "seed": SEED,
             **FINE_TUNE_FLAGS, **ROW_FLAGS[row]}
    log = work / f"{row}-run-{run}.log"
    print(f"\n--- {row}, run {run} of {RUNS}: fine_tune.py, log in {log} ---", flush=True)
    wall, cpu = time.perf_counter(), children_cpu()
    arguments = [flag(name, value) for name, value in flags.items()]
    with open(log, "w") as output:
        done = subprocess.run([sys.executable, str(ROOT / "fine_tune.py"), *arguments], env=script_env(**threads_env()),
                              cwd=work, stdout=output, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
    if done.returncode:
        print("".join(log.read_text().splitlines(keepends=True)[-40:]))
        sys.exit(f"error: fine_tune.py failed for row {row} (exit status {done.returncode}); log: {log}")
    history = json.loads((out / "train_log_history.json").read_text())
    summary = next(h for h in reversed(history) if "train_runtime" in h)
    print(f"{wall:.1f} s, train_runtime {summary['train_runtime']:.1f} s, {summary['step']} steps", flush=True)
    return {"total_s": wall, "total_cpu": cpu, "train_runtime": summary["train_runtime"], "steps": summary["step"]}


def measure(run, model_dir, train_json, work):
    """One of the RUNS runs: the floor, then every row of ROWS."""
    floor = run_worker(__file__, {"phase": "floor", "model": str(model_dir), "train_json": str(train_json)}, work,
                       f"floor run {run}")
    print(f"floor: {floor['floor_s']:.1f} s ({floor['floor_s'] / floor['images']:.3f} s per image)", flush=True)
    return {"floor": floor, "rows": {row: fine_tune(row, run, model_dir, train_json, work) for row in ROWS}}


def threads_env():
    return {"OMP_NUM_THREADS": str(THREADS)} if THREADS else {}


@contextlib.contextmanager
def work_folder():
    if WORK_DIR:
        Path(WORK_DIR).mkdir(parents=True, exist_ok=True)
        yield Path(WORK_DIR).resolve()
    else:
        with tempfile.TemporaryDirectory(prefix="frozen-benchmark-") as work:
            yield Path(work)


def ratios(runs, row, key="total_s", floor_key="floor_s"):
    """Each run's `key` of `row` over that run's floor."""
    return [r["rows"][row][key] / r["floor"][floor_key] for r in runs]


def table(runs):
    """Each row's medians over the runs, its ratios' medians and ranges, and the verdict of its slowest run."""
    image_epochs = EPOCHS * runs[0]["floor"]["images"]
    lines = ["| row | fine_tune.py flags | total s, wall (CPU) | train_runtime s | outside it s | s per image and "
             "epoch (train_runtime) | total / floor, wall | total / floor, CPU | train_runtime / floor | target | "
             "met? (slowest run, wall) |", "|---" * 11 + "|"]
    for row in runs[0]["rows"]:
        each = [r["rows"][row] for r in runs]
        mid = {key: median(e[key] for e in each) for key in ("total_s", "total_cpu", "train_runtime")}
        wall, target = ratios(runs, row), TARGETS.get(row)
        cells = [f"{mid['total_s']:.1f} ({mid['total_cpu']:.1f})", f"{mid['train_runtime']:.1f}",
                 f"{median(e['total_s'] - e['train_runtime'] for e in each):.1f}",
                 f"{mid['train_runtime'] / image_epochs:.3f}", spread(wall),
                 spread(ratios(runs, row, "total_cpu", "floor_cpu")), spread(ratios(runs, row, "train_runtime")),
                 f"<= {target}x" if target else "-", verdict(wall, target) if target else ""]
        lines.append(f"| {row} | {' '.join(flag(k, v) for k, v in ROW_FLAGS[row].items())} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(runs):
    """Every run's floor and ratios, wall (CPU), in the order they ran."""
    rows = list(runs[0]["rows"])
    columns = [[f"{wall:.2f}x ({cpu:.2f}x)" for wall, cpu in zip(ratios(runs, row),
                                                                 ratios(runs, row, "total_cpu", "floor_cpu"))]
               for row in rows]
    lines = ["| run | floor s, wall (CPU) | " + " | ".join(f"{row}: total / floor" for row in rows) + " |",
             "|---" * (2 + len(rows)) + "|"]
    for i, (r, *cells) in enumerate(zip(runs, *columns), 1):
        lines.append(f"| {i} | {r['floor']['floor_s']:.1f} ({r['floor']['floor_cpu']:.1f}) | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def report(runs, started, load, elapsed):
    floors = [r["floor"] for r in runs]
    floor = floors[0]
    n = floor["images"]
    steps = sorted({rows["steps"] for r in runs for rows in r["rows"].values()})
    floor_s = [f["floor_s"] for f in floors]
    encode = median(f["encode_s"] for f in floors)
    return f"""# Speed: fine-tuning with a frozen vision encoder against the encoder's floor

{command("frozen.py")}

- {machine(started, elapsed)}, device {floor['device']}, torch threads {floor['threads']}; commit {commit()}.
  1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (above {os.cpu_count()}, other
  processes competed for the cores and stretched the wall-clock seconds).
- Runs: {len(runs)} (RUNS, fixed before the first), each the floor and then every row, each in a fresh process.
  The table gives medians over the runs and each ratio's median (min-max); a target is met only when the
  slowest run (the largest wall ratio) meets it. Every run's ratios follow the table.
- Model: {model_name(TINY)}, **randomly initialised**: this measures speed only, nothing about accuracy.
- Data: {n} training JPEGs of {SIZE} in class folders, made by the benchmark, split by generate_train_json.py;
  {EPOCHS} epochs, the classification question only (one row per image), batch {BATCH_SIZE}, gradient
  accumulation {ACCUMULATION}, {'/'.join(map(str, steps)) or '-'} optimizer steps; no validation or test images.
  Every other setting is fine_tune.py's default{' and ' + json.dumps(FINE_TUNE_FLAGS) if FINE_TUNE_FLAGS else ''}.
- Floor: one forward pass of the vision encoder and connector (get_image_features) over the {n} images, batch
  {BATCH_SIZE}, inference mode, float32 weights (autocast as fine_tune.py on CUDA), {floor['tiles']} tile(s) per
  image at fine_tune.py's default resolution, medians over the runs: **{spread(floor_s, '{:.1f}')} s** wall,
  {median(f['floor_cpu'] for f in floors):.1f} CPU s, {median(floor_s) / n:.3f} s per image. Encoding the images
  (decode, resize, normalise), timed apart and not in the floor: {encode:.1f} s ({encode / n:.3f} s per image).
- Total: the whole fine_tune.py process, wall clock (CPU seconds of it and its workers in brackets): start-up,
  loading the model, encoding the images, anything computed once before training (the head's pooled states,
  the encoder's cached output), {EPOCHS} epochs of training, saving (LoRA merged into the saved model).
  train_runtime is the Trainer's own figure for its training loop; "outside it" is the rest, a cost partly
  fixed (start-up, loading, saving) that weighs more in a run of few images. Ratios divide by the same run's
  floor (wall by wall, CPU by CPU); the targets are the total's, wall.

{table(runs)}

Every run, total / floor, wall (CPU):

{runs_table(runs)}
"""


def main():
    if JOB:
        return run_job(json.loads(JOB), {"floor": floor_job}, flags={}, threads=THREADS, seed=SEED, device=DEVICE)
    unknown = [row for row in ROWS if row not in ROW_FLAGS]
    if unknown:
        sys.exit(f"error: unknown row(s) {unknown}: use {list(ROW_FLAGS)}")
    check_runs(RUNS, TINY)
    started, load_before, start = now(), os.getloadavg()[0], time.perf_counter()
    os.environ.update(threads_env())  # the floor's process too
    with work_folder() as work:
        model_dir = work / "model"
        build_model(model_dir, seed=SEED, tiny=TINY)
        train_json = make_data(work)
        runs = [measure(run, model_dir, train_json, work) for run in range(1, RUNS + 1)]
    write_report(report(runs, started, (load_before, os.getloadavg()[0]), time.perf_counter() - start),
                 OUTPUT or ROOT / "benchmarks" / f"results-frozen{'-tiny' if TINY else ''}.md")


if __name__ == "__main__":
    configure(globals(), choices={"DEVICE": OneOf("cpu", "cuda")})
    run_main(main)
