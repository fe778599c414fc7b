"""What the benchmarks of speed share: measurements in fresh processes, time and memory, the full-size
SmolVLM-256M architecture with random weights, test images, the cells of their tables, and runs fixed in advance
(a speed target met only when the slowest of at least MIN_RUNS runs meets it).

The project's own modules are imported where they are used, not here: input_path.py's measurement must import
them from the checkout it measures, which may be an older one.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
CLASSES = ["Bird-drop", "Clean", "Dusty", "Electrical-damage", "Physical-Damage", "Snow-Covered"]
SMOLVLM_256M_PARAMETERS = 256_484_928
MIN_RUNS = 5  # issue #34: a speed claim rests on at least this many runs, their number fixed before the first
SMOLVLM_FILES = ROOT / "tests" / "fixtures" / "smolvlm-256m-instruct"  # its config, tokenizer and processor files


def script_env(**extra):
    """The environment the project's scripts and the measurements run in: offline, quiet tokenizers."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


# ---------------------------------------------------------------- measuring, in the worker process

def memory_gb(field):
    """This process's resident memory from /proc (Linux): VmRSS now, or VmHWM, its peak so far."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GB
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_gb(torch, device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / GB
    return memory_gb("VmHWM")


def timed(torch, device, work):
    """Wall-clock and CPU seconds (all threads of the process) that work() takes. CPU time shows the work
    done even when other processes share the cores and stretch the wall-clock time."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def mean(pairs):
    return [sum(column) / len(pairs) for column in zip(*pairs)]


def fine_tune_settings(flags):
    """fine_tune.py's constants with `flags` (as on its command line) applied, as attributes in upper case."""
    import fine_tune
    from vlmcls.cli import settings_of
    settings = {**settings_of(vars(fine_tune)), **flags}
    return SimpleNamespace(**{name.upper(): value for name, value in settings.items()})


def make_images(size, count, seed):
    """`count` images of random pixels, WIDTHxHEIGHT."""
    import numpy as np
    from PIL import Image
    width, height = map(int, size.split("x"))
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def run_job(job, jobs, *, flags, threads, seed, device):
    """A worker process's one measurement: jobs[job["phase"]](job, torch, fine_tune.py's settings with `flags`,
    device), its result written as JSON to job["result"] with the memory the process held before any model."""
    import peft  # noqa: F401  (the libraries first, so that base_gb is the process before any model)
    import torch
    import trl  # noqa: F401
    from vlmcls.files import atomic_write
    from vlmcls.models import pick_device
    base_gb = memory_gb("VmRSS")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = pick_device(device)
    result = jobs[job["phase"]](job, torch, fine_tune_settings(flags), device)
    result.update(base_gb=base_gb, threads=torch.get_num_threads(), device=device, load=os.getloadavg()[0])
    atomic_write(job["result"], json.dumps(result))


# ---------------------------------------------------------------- orchestrating, in the main process

def build_model(folder, *, seed, tiny):
    """SmolVLM-256M-Instruct with random weights: its own config, tokenizer, chat template and processor files
    (tests/fixtures/smolvlm-256m-instruct, unchanged) and a model built from that config, saved to `folder` in
    float32 (with `tiny`: the tests' tiny SmolVLM, a quick check that a benchmark runs)."""
    import shutil

    import torch
    from tiny_models import build_tiny_smolvlm
    from transformers import AutoConfig, Idefics3ForConditionalGeneration
    torch.manual_seed(seed)
    if tiny:
        build_tiny_smolvlm(folder)
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for file in SMOLVLM_FILES.iterdir():
        if file.name != "README.md":
            shutil.copyfile(file, Path(folder) / file.name)
    model = Idefics3ForConditionalGeneration(AutoConfig.from_pretrained(folder)).float()
    count = sum(p.numel() for p in model.parameters())
    print(f"built SmolVLM-256M-Instruct with random weights: {count:,} parameters")
    if count != SMOLVLM_256M_PARAMETERS:
        raise RuntimeError(f"{count:,} parameters, not SmolVLM-256M-Instruct's {SMOLVLM_256M_PARAMETERS:,}")
    model.save_pretrained(folder)  # config.json as float32; the other files stay SmolVLM's own


def model_name(tiny):
    return "the tests' tiny SmolVLM" if tiny else \
        f"SmolVLM-256M-Instruct ({SMOLVLM_256M_PARAMETERS:,} parameters, its own config, tokenizer and processor files)"


def run_worker(script, job, work, label):
    """One measurement in a fresh process, so that its peak memory is its own: `script` (the benchmark) again,
    with the same settings and --job; returns its result."""
    result = Path(work) / f"{label.replace(' ', '-')}.json"
    print(f"\n--- {label} ---", flush=True)
    subprocess.run([sys.executable, str(script), *sys.argv[1:], f"--job={json.dumps({**job, 'result': str(result)})}"],
                   env=script_env(), check=True)
    return {**json.loads(result.read_text()), "job": label}


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def git(*args):
    """git's output in the project's checkout ("" where git fails)."""
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()


def commit():
    """The checkout's commit, for a report, and whether tracked files differ from it."""
    changed = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if changed else "")


def flag(name, value):
    """A script setting as its command line takes it: --name=value, booleans, numbers, lists and dicts as JSON."""
    return f"--{name}={value if isinstance(value, (str, Path)) else json.dumps(value)}"


def machine(started, elapsed):
    """When, how long and where a benchmark ran, for its report."""
    return (f"Run {started}, {elapsed / 60:.1f} min, on {platform.node()} ({platform.machine()}, "
            f"{os.cpu_count()} CPUs)")


def command(script, argv=None):
    """The results file's command line of this run, as anyone would type it in a checkout: a setting whose value
    is an absolute path (a work folder, an output file) is shown by its name instead, since this machine's paths
    mean nothing elsewhere and change no result."""
    args = []
    for arg in sys.argv[1:] if argv is None else argv:
        name, _, value = arg.partition("=")
        args.append(f"{name}={name.lstrip('-').upper()}" if value.startswith(("/", "~")) else arg)
    return f"Command: `HF_HUB_OFFLINE=1 python benchmarks/{script}{''.join(' ' + a for a in args)}`"


def ratio(a, b):
    return f"{a / b:.1f}x" if b else "n/a"


def seconds(key):
    """A time cell: wall-clock, then CPU seconds."""
    return lambda r: f"{r[key + '_s']:.2f} ({r[key + '_cpu']:.2f})"


def gigabytes(r):
    return f"{r['peak_gb']:.2f}"


# ---------------------------------------------------------------- runs fixed in advance (issue #34)

def check_runs(runs, tiny):
    """Stop unless `runs` may carry a speed claim: at least MIN_RUNS, fewer only in a smoke check (--tiny=true).
    Fixing the count before the first run is what makes it a measurement, not stopping when a run passes."""
    if runs < 1 or (runs < MIN_RUNS and not tiny):
        sys.exit(f"error: --runs={runs}: a speed claim needs at least {MIN_RUNS} runs, fixed before the first "
                 f"(fewer only in a smoke check, with --tiny=true)")


def spread(values, form="{:.2f}x"):
    """Several runs' figures as their median and range: "2.45x (2.41x-2.52x)"."""
    return f"{form.format(statistics.median(values))} ({form.format(min(values))}-{form.format(max(values))})"


def verdict(values, target, at_most=True):
    """Whether runs fixed in advance meet a speed target: only when the slowest of them does (issue #34), the
    largest of `values` for a ceiling (at_most: time over a floor), the smallest for a speed-up to reach."""
    slowest = max(values) if at_most else min(values)
    misses = sum(v > target if at_most else v < target for v in values)
    if not misses:
        return f"met (slowest {slowest:.2f}x)"
    return f"missed (slowest {slowest:.2f}x; {misses} of {len(values)} runs {'over' if at_most else 'under'})"


def every_run(oks):
    """Whether a target that is not a speed (memory) holds in each of the runs."""
    misses = len(oks) - sum(oks)
    return "met in every run" if not misses else f"missed in {misses} of {len(oks)} runs"


def median_result(results):
    """The results of several runs of one measurement as one: each number that varies their median (nested
    alike), anything else (counts, labels) the first run's."""
    def one(values):
        if isinstance(values[0], dict):
            return median_result(values)
        numbers = isinstance(values[0], (int, float)) and not isinstance(values[0], bool)
        return statistics.median(values) if numbers and len(set(values)) > 1 else values[0]
    return {key: one([r[key] for r in results]) for key in results[0]}


def medians(runs):
    """Runs of {measurement: result} as one: each measurement's numbers their median over the runs."""
    return {key: median_result([r[key] for r in runs]) for key in runs[0]}


def ratios_of(pairs, key):
    """Each run's a[key] / b[key], from its (a, b) pair of results."""
    return [a[key] / b[key] for a, b in pairs]


def times_spread(pairs, key):
    """A time ratio cell over runs: median (range) of wall-clock, then of CPU seconds."""
    return f"{spread(ratios_of(pairs, key + '_s'))}, CPU {spread(ratios_of(pairs, key + '_cpu'))}"


def write_report(text, output):
    """Print the report and write it to `output`, whole or not at all."""
    from vlmcls.files import atomic_write
    print("\n" + text)
    atomic_write(output, text)
    print(f"written to {output}")
