"""Benchmark: vlm_test.py over a whole folder, BASELINE's code against this checkout's, and one process against
PROCESSES under torchrun.

Builds a tiny SmolVLM (the tests' architecture, 64-px patches: 4 image tokens a tile, so that what is timed is the
script around the model) and class folders of WIDTHxHEIGHT JPEGs, then runs vlm_test.py as a user does, each run in
a fresh process: for each count in IMAGES with BASELINE's code (taken with `git archive` into a temporary folder),
with this checkout's, and with this checkout's as PROCESSES processes under torchrun; for the largest count also as
one process on one torch thread, as torchrun runs each of its processes. Measured: images per second end to end
(wall clock, model loading included), decodes per image (every image decode in the run's processes, data-loader
workers included, counted by a hook on Pillow's ImageFile.load) and the peak resident memory of the script's
process (under torchrun: of its largest process; data-loader workers not included). The table goes to stdout and
to OUTPUT.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prediction.py     # ~10 min on 2 shared CPU cores
"""
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from common import command, write_report  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402

IMAGES = [200, 2000]  # folder sizes measured; the largest also runs under torchrun
PROCESSES = 2  # torchrun's --nproc_per_node for the largest folder
BASELINE = "main"  # the git revision whose vlm_test.py is the "before" column
WIDTH, HEIGHT = 320, 240  # size of the JPEGs
BATCH_SIZE = 8  # vlm_test.py's BATCH_SIZE in every run
OUTPUT = ""  # where the table is also written; "": benchmarks/results-prediction.md

# Loaded into every Python process of a run (PYTHONPATH): counts decodes, one byte each in DECODES, and at exit
# records the peak memory of the script's own processes (torchrun's workers among them) in PEAKS.
PROBE = '''
import atexit, os, resource, sys
from PIL import ImageFile
_load = ImageFile.ImageFile.load
def _counting_load(self):
    if self.tile:  # not decoded yet: this call decodes
        with open(os.environ["DECODES"], "ab") as f:
            f.write(b".")
    return _load(self)
ImageFile.ImageFile.load = _counting_load
if sys.argv and sys.argv[0].endswith("vlm_test.py"):
    atexit.register(lambda: open(os.environ["PEAKS"], "a").write(
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n"))
'''


def make_data(folder, count):
    """Two class folders of noisy JPEGs, `count` in all."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(count):
        name, rgb = ("red", (200, 30, 30)) if i % 2 else ("blue", (30, 40, 200))
        (folder / name).mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name / f"{i:05d}.jpg", quality=90)
    return folder


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(tree, model, data, work, label, processes=1, env=None):
    """One vlm_test.py run of `tree` on `data`; returns its measurements."""
    decodes, peaks = work / f"{label}.decodes", work / f"{label}.peaks"
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                                   if processes > 1 else [])
    command = launcher + [str(tree / "vlm_test.py"), f"--model_path={model}", f"--dataset_dir={data}",
                          f"--report_dir={work / label}", f"--batch_size={BATCH_SIZE}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(work / "probe"),
           "DECODES": str(decodes), "PEAKS": str(peaks), **(env or {})}
    print(f"--- {label} ---", flush=True)
    wall, cpu = time.perf_counter(), children_cpu()
    subprocess.run(command, env=env, check=True, cwd=work, stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
    images = sum(1 for p in data.rglob("*.jpg"))
    return {"images": images, "per_s": images / wall, "wall_s": wall, "cpu_s": cpu,
            "decodes": (decodes.stat().st_size if decodes.exists() else 0) / images,
            "peak_mib": max(int(line) for line in peaks.read_text().split()) / 1024}


def table(results, started, load_before, load_after, baseline_commit):
    small, large = min(IMAGES), max(IMAGES)
    lines = [f"| run | {large} images: images/s | {large} images: wall s (CPU s) | decodes per image, {small} / "
             f"{large} images | peak RSS MiB, {small} / {large} images |", "|---|---|---|---|---|"]
    for run_name in results:
        r = results[run_name]
        lines.append(f"| {run_name.format(baseline=f'{BASELINE}, {baseline_commit}', processes=PROCESSES)} | "
                     f"{r[large]['per_s']:.1f} | {r[large]['wall_s']:.0f} ({r[large]['cpu_s']:.0f}) | "
                     + " / ".join(f"{r[n]['decodes']:.2f}" if n in r else "-" for n in (small, large)) + " | "
                     + " / ".join(f"{r[n]['peak_mib']:.0f}" if n in r else "-" for n in (small, large)) + " |")
    before, after, one_thread, torchrun = (results[name][large] for name in RUNS)
    return "\n".join([
        "# Prediction over a folder: streaming, resumable, torchrun", "",
        command("prediction.py"),
        "",
        f"Run {started} on this machine's {os.cpu_count()} CPU cores, shared with other engineers' jobs (load "
        f"average {load_before:.1f} at the start, {load_after:.1f} at the end): the seconds are noisy; the ratios "
        f"between runs made one after another in the same benchmark are the measure. Tiny SmolVLM (64-px patches, "
        f"random weights: its predictions mean nothing), {WIDTH}x{HEIGHT} JPEGs in two class folders, batch size "
        f"{BATCH_SIZE}, every other setting vlm_test.py's default. Peak RSS: the script's process (under torchrun "
        "its largest), data-loader workers not included.", "",
        *lines, "",
        f"Ratios at {large} images: after / before {after['per_s'] / before['per_s']:.2f}x images/s "
        f"({after['cpu_s'] / before['cpu_s']:.2f}x the CPU seconds); {PROCESSES} processes under torchrun / 1 process "
        f"{torchrun['per_s'] / after['per_s']:.2f}x, / 1 process on 1 torch thread "
        f"{torchrun['per_s'] / one_thread['per_s']:.2f}x.", ""])


# The runs, in the order they are made: label: (code, processes, environment, on every count of IMAGES or the largest)
RUNS = {"before ({baseline}), 1 process": ("before", 1, {}, True),
        "after, 1 process": ("after", 1, {}, True),
        "after, 1 process, 1 torch thread (OMP_NUM_THREADS=1, as torchrun sets)": ("after", 1, {"OMP_NUM_THREADS": "1"},
                                                                                    False),
        "after, {processes} processes (torchrun)": ("after", PROCESSES, {}, True)}


def main():
    import tiny_models
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="prediction-benchmark-") as tmp:
        work = Path(tmp)
        (work / "probe").mkdir()
        (work / "probe" / "sitecustomize.py").write_text(PROBE)
        trees = {"before": work / "before", "after": ROOT}
        trees["before"].mkdir()
        commit = subprocess.run(["git", "rev-parse", "--short", BASELINE], cwd=ROOT, check=True, capture_output=True,
                                text=True).stdout.strip()
        archive = subprocess.run(["git", "archive", BASELINE], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(trees["before"])], input=archive, check=True)
        model = tiny_models.build_tiny_smolvlm(work / "tiny", image_longest_edge=512, patch_size=64)
        folders = {count: make_data(work / f"images-{count}", count) for count in IMAGES}
        results = {name: {} for name in RUNS}
        for count in sorted(IMAGES):
            for i, (name, (code, processes, env, every_count)) in enumerate(RUNS.items()):
                if every_count or count == max(IMAGES):
                    results[name][count] = run(trees[code], model, folders[count], work, f"{i}-{count}", processes,
                                               env)
    text = table(results, started, load_before, os.getloadavg()[0], commit)
    write_report(text, OUTPUT or ROOT / "benchmarks" / "results-prediction.md")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
