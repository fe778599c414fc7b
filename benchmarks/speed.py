"""Benchmark: training and evaluation speed and peak memory, the original's image settings against the defaults.

Builds a randomly initialised model of SmolVLM-256M-Instruct's exact architecture, saves it and reloads
it as the scripts do, then measures at batch size 1 for each configuration and image size: seconds per
training step (forward, backward, gradient clipping and AdamW, with fine_tune.py's gradient
checkpointing), seconds per evaluated image in score and generate mode, and peak memory. Every
(configuration, image size, phase) runs in a fresh process, so each peak is its own. All of it RUNS times, a
number fixed before the first (at least 5): the table gives medians, each ratio its median and range over the runs,
and a speed target is met only when the slowest run meets it. The table goes to stdout and to OUTPUT.
benchmarks/README.md says what the numbers do and do not say.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py              # full run: ~75 min on 2 idle CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py --tiny=true --runs=2  # smoke check, the tests' tiny model

On a machine that other processes load, --threads=1 avoids the stalls of two threads waiting on each other
for a core; the CPU seconds reported next to each time are the least disturbed measure of the work.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

from common import CLASSES, GB, ROOT, build_model, check_runs, command, commit, every_run, gigabytes, machine, \
    make_images, mean, medians, model_name, now, peak_gb, ratios_of, run_job, run_worker, seconds, spread, \
    timed, times_spread, verdict, write_report  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402
from vlmcls.inputs import InputEncoder  # noqa: E402
from vlmcls.models import end_token_ids, load_model, load_processor, pick_dtype, set_resolution  # noqa: E402
from vlmcls.inputs import PromptBatches  # noqa: E402
from vlmcls.objectives.answer import answer_only_collator, predict_generate, predict_scores  # noqa: E402
from vlmcls.prompt import classification_question, render_segments  # noqa: E402
from vlmcls.training import checkpointing, prepare_model  # noqa: E402

CONFIGS = ["original", "defaults", "lora"]  # names from CONFIG_FLAGS; the first is the baseline of the ratios
SIZES = ["300x300", "640x480"]  # image sizes, WIDTHxHEIGHT
STEPS = 2  # timed training steps per configuration and size, mean reported (0: no training)
WARMUP = 1  # untimed training steps, and untimed score-mode images, before timing
IMAGES = 2  # timed images per evaluation mode (0: no evaluation)
RUNS = 5  # runs of every measurement, fixed before the first (at least 5; fewer only with TINY)
MAX_NEW_TOKENS = 32  # generate mode's limit, as vlmcls.prediction.predict_generate's default
DEVICE = "auto"  # auto, cpu, cuda or mps
THREADS = 0  # torch CPU threads in each measurement; 0: torch's default (one per core)
TINY = False  # the tests' tiny SmolVLM instead of the full-size one: a quick check that the benchmark runs
OUTPUT = ""  # where the table is also written; "": benchmarks/results-speed.md (results-speed-tiny.md with --tiny)
SEED = 0  # seed for the random weights and images
JOB = ""  # internal: one measurement as JSON, run by the benchmark in a fresh process

# fine_tune.py settings of each configuration, passed to it as on its command line; skip_frozen_backward=False is
# the behaviour before the frozen vision encoder ran without autograd (vlmcls.training.prepare_model).
CONFIG_FLAGS = {
    "original": {"image_longest_edge": 2048, "image_splitting": True, "enlarge_images": True},
    "shipped": {"image_longest_edge": 2048, "image_splitting": True},
    "defaults": {},
    "lora": {"use_lora": True},
    "lora_checkpointing": {"use_lora": True, "gradient_checkpointing": True},  # the default before "auto"
    "lora_before": {"use_lora": True, "skip_frozen_backward": False},
    "freeze_vision": {"freeze_vision": True},
    "freeze_vision_before": {"freeze_vision": True, "skip_frozen_backward": False},
    "lora_vision": {"use_lora": True, "lora_vision": True},
}
RESOLUTION_FLAGS = ("image_longest_edge", "image_splitting", "enlarge_images")


# ---------------------------------------------------------------- measuring, in the worker process

def train_job(job, torch, ft, device):
    """Mean seconds of a training step, as SFTTrainer runs one, on one image with a classification answer."""
    dtype = pick_dtype(device, ft.DTYPE)
    processor = load_processor(job["model"])
    set_resolution(processor, ft.IMAGE_LONGEST_EDGE, ft.IMAGE_SPLITTING)
    model = prepare_model(load_model(job["model"], torch.float32), freeze_vision=ft.FREEZE_VISION,
                          use_lora=ft.USE_LORA, lora_vision=ft.LORA_VISION, lora_r=ft.LORA_R, lora_alpha=ft.LORA_ALPHA,
                          lora_dropout=ft.LORA_DROPOUT, lora_target_modules=ft.LORA_TARGET_MODULES,
                          skip_frozen_backward=getattr(ft, "SKIP_FROZEN_BACKWARD", True)).to(device).train()
    if checkpointing(ft.GRADIENT_CHECKPOINTING, model):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "peft_config"):
            model.enable_input_require_grads()  # as SFTTrainer does for PEFT models
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Trainer's default optimizer (adamw_torch_fused) and gradient clipping (max_grad_norm 1.0).
    optimizer = torch.optim.AdamW(trainable, lr=ft.LEARNING_RATE, weight_decay=ft.WEIGHT_DECAY, fused=True)
    path = Path(job["result"]).with_suffix(".png")
    make_images(job["size"], 1, SEED)[0].save(path)
    segments = render_segments(processor, [(classification_question(CLASSES), CLASSES[1])],
                               end_token_ids(processor, model))
    example = InputEncoder(processor, 10**9, enlarge=ft.ENLARGE_IMAGES).example(path, segments,
                                                                                end_token_ids(processor, model))
    batch = {k: v.to(device) for k, v in answer_only_collator(processor)([example]).items()}

    def step():
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(WARMUP):
        step()
    step_s, step_cpu = mean([timed(torch, device, step) for _ in range(STEPS)])
    return {"step_s": step_s, "step_cpu": step_cpu, "peak_gb": peak_gb(torch, device),
            "params": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable),
            "train_tokens": batch["input_ids"].shape[1]}


def eval_job(job, torch, ft, device):
    """Mean seconds per image in score and in generate mode, one image at a time, as vlm_test.py runs them."""
    processor = load_processor(job["model"])
    set_resolution(processor, ft.IMAGE_LONGEST_EDGE, ft.IMAGE_SPLITTING)
    model = load_model(job["model"], pick_dtype(device), device).eval()
    question = classification_question(CLASSES)
    images = make_images(job["size"], WARMUP + IMAGES, SEED)
    calls = []  # (input tokens, image tiles) of each forward: the prompt's, then one per generated token

    def record(module, args, kwargs):
        pixels = kwargs.get("pixel_values")
        calls.append((kwargs["input_ids"].shape[1], 0 if pixels is None else pixels.shape[1]))
    model.register_forward_pre_hook(record, with_kwargs=True)

    prompts = PromptBatches(processor, question, 10**9, ft.ENLARGE_IMAGES)

    def score(image):
        return predict_scores(model, processor, prompts([image]), question, CLASSES)

    def generate(image):
        return predict_generate(model, processor, prompts([image]), MAX_NEW_TOKENS)

    for image in images[:WARMUP]:
        score(image)
    timed_images = images[WARMUP:]
    score_s, score_cpu = mean([timed(torch, device, lambda: score(im)) for im in timed_images])
    prompt_tokens, tiles = calls[0]
    calls.clear()
    generate_s, generate_cpu = mean([timed(torch, device, lambda: generate(im)) for im in timed_images])
    return {"score_s": score_s, "score_cpu": score_cpu, "generate_s": generate_s, "generate_cpu": generate_cpu,
            "new_tokens": len(calls) / len(timed_images), "peak_gb": peak_gb(torch, device),
            "tiles": tiles, "prompt_tokens": prompt_tokens}


# ---------------------------------------------------------------- orchestrating, in the main process

def worker(phase, config, size, model_dir, work, run):
    return run_worker(__file__, {"phase": phase, "config": config, "size": size, "model": str(model_dir)}, work,
                      f"{phase} {config} {size} run {run}")


def measure(model_dir, work, run):
    """One of the RUNS runs: {(phase, config, size): result}. Evaluation depends only on the resolution (LoRA is
    merged into the saved model), so configurations with the same resolution share one evaluation run."""
    results, evaluated = {}, {}
    for size in SIZES:
        for config in CONFIGS:
            if STEPS:
                results["train", config, size] = worker("train", config, size, model_dir, work, run)
            resolution = tuple(CONFIG_FLAGS[config].get(k) for k in RESOLUTION_FLAGS)
            if IMAGES and resolution not in evaluated:
                evaluated[resolution] = worker("eval", config, size, model_dir, work, run)
            if IMAGES:
                results["eval", config, size] = evaluated[resolution]
        evaluated.clear()
    return results


def table(runs):
    """One markdown table: each configuration side by side (medians over the runs), then the baseline's ratio to
    each other one (median and range over the runs' ratios)."""
    base, others = CONFIGS[0], CONFIGS[1:]

    def memory(pairs):
        return spread(ratios_of(pairs, "peak_gb"))

    rows = [  # label, phase, cell, ratio cell over the runs' (baseline, other) pairs (None: no ratio)
        ("tiles / tokens of the prompt", "eval", lambda r: f"{r['tiles']} / {r['prompt_tokens']}", None),
        ("tokens of the training example", "train", lambda r: str(r["train_tokens"]), None),
        ("train: s/step, wall (CPU)", "train", seconds("step"), lambda pairs: times_spread(pairs, "step")),
        ("train: peak memory GB", "train", gigabytes, memory),
        ("score: s/image, wall (CPU)", "eval", seconds("score"), lambda pairs: times_spread(pairs, "score")),
        ("generate: s/image, wall (CPU)", "eval", seconds("generate"), lambda pairs: times_spread(pairs, "generate")),
        ("generate: new tokens per image", "eval", lambda r: f"{r['new_tokens']:.0f}", None),
        ("eval peak memory GB (both modes)", "eval", gigabytes, memory),
        ("images/s: score vs generate (ratio)", "eval",
         lambda r: f"{1 / r['score_s']:.3f} vs {1 / r['generate_s']:.3f} ({r['generate_s'] / r['score_s']:.1f}x)",
         None),
    ]
    lines = ["| image | measure | " + " | ".join(CONFIGS + [f"{base} / {o}" for o in others]) + " |",
             "|---" * (2 + len(CONFIGS) + len(others)) + "|"]
    middle = medians(runs)
    for size in SIZES:
        for label, phase, cell, ratio_cell in [row for row in rows if (row[1], base, size) in middle]:
            values = [cell(middle[phase, c, size]) for c in CONFIGS]
            ratios = [ratio_cell([(r[phase, base, size], r[phase, o, size]) for r in runs]) if ratio_cell else ""
                      for o in others]
            lines.append(f"| {size} | {label} | " + " | ".join(values + ratios) + " |")
    return "\n".join(lines)


def memory_table(results):
    """Where training memory goes: the process before the model, the weights and the gradients and AdamW state
    (4 and 3 x 4 bytes per parameter, fp32), and the rest: activations, temporaries, allocator."""
    lines = ["| config | image | process before model | weights | trainable params | grads + AdamW state | "
             "rest (activations etc.) | peak |", "|---" * 8 + "|"]
    for size in SIZES:
        for config in CONFIGS:
            r = results["train", config, size]
            weights, state = 4 * r["params"] / GB, 12 * r["trainable"] / GB
            rest = r["peak_gb"] - r["base_gb"] - weights - state
            lines.append(f"| {config} | {size} | {r['base_gb']:.2f} | {weights:.2f} | {r['trainable']:,} | "
                         f"{state:.2f} | {rest:.2f} | {r['peak_gb']:.2f} |")
    return "\n".join(lines)


def targets(runs):
    """The hoped-for results that were measured, each over the runs: a speed-up met only when the slowest run
    reaches it (its ratios: median (range), wall-clock, then CPU), a memory bound only when every run keeps it."""
    lines, middle = [], medians(runs)

    def faster(text, slow, fast, key, times):
        pairs = [(r[slow], r[fast]) for r in runs]
        lines.append(f"- {verdict(ratios_of(pairs, key + '_s'), times, at_most=False)}: {text} "
                     f"({times_spread(pairs, key)})")

    def memory(text, holds):
        lines.append(f"- {every_run([holds(r) for r in runs])}: {text}")

    def gb(key):
        return f"{middle[key]['peak_gb']:.2f}"

    for size in SIZES:
        o, d = ("train", "original", size), ("train", "defaults", size)
        if o in middle and d in middle:
            faster(f"{size}: training step >= 10x faster with defaults", o, d, "step", 10)
            memory(f"{size}: peak training memory with defaults below the original's ({gb(d)} vs {gb(o)} GB, "
                   f"medians)", lambda r: r[d]["peak_gb"] < r[o]["peak_gb"])
        oe, de = ("eval", "original", size), ("eval", "defaults", size)
        if oe in middle and de in middle:
            for mode in ("score", "generate"):
                faster(f"{size}: {mode} evaluation >= 10x faster with defaults", oe, de, mode, 10)
        for before, after in (("lora_before", "lora"), ("freeze_vision_before", "freeze_vision")):
            b, n = ("train", before, size), ("train", after, size)
            if b in middle and n in middle:
                faster(f"{size}: {after} training step >= 2x faster than before the frozen encoder ran without "
                       f"autograd", b, n, "step", 2)
        se = ("eval", "shipped", size)
        if oe in middle and se in middle and size == "300x300":
            faster(f"{size}: base model at its shipped settings, score evaluation >= 8x faster without enlarging",
                   oe, se, "score", 8)
        for lora in ("lora", "lora_vision"):
            lo = ("train", lora, size)
            if o in middle and lo in middle:
                memory(f"{size}: peak training memory with {lora} at most a third of the original's "
                       f"({gb(lo)} vs {middle[o]['peak_gb'] / 3:.2f} GB, medians)",
                       lambda r: 3 * r[lo]["peak_gb"] <= r[o]["peak_gb"])
    return "\n".join(lines)


def report(runs, started, load_before, elapsed):
    results = [r for run in runs for r in run.values()]
    first = results[0]
    threads = sorted({r["threads"] for r in results})
    flags = "\n".join(f"- {c}: " + (" ".join(f"--{k}={json.dumps(v)}" for k, v in CONFIG_FLAGS[c].items())
                                    or "fine_tune.py's defaults (image_longest_edge 512, no splitting)")
                      for c in CONFIGS)
    memory = "" if first["device"] != "cpu" or not STEPS else f"""
Where training memory goes (GB; weights, gradients and AdamW state computed from the parameter counts; the
weights are memory-mapped from the saved file and count in RSS once read):

{memory_table(medians(runs))}
"""
    return f"""# Speed and memory: the original's image settings against the project's defaults

{command("speed.py")}

- {machine(started, elapsed)},
  device {first['device']}, torch threads {threads}; commit {commit()}.
- 1-minute load average before {load_before[0]:.1f}, then at the end of each measurement, median (range)
  (other processes share the CPUs; above {os.cpu_count()} they competed for them):
  {spread([r['load'] for r in results], '{:.1f}')}.
- Runs: {len(runs)} (RUNS, fixed before the first), each measuring every configuration and size in turn. The
  table gives medians over the runs and each ratio's median (min-max) over the runs' ratios; a speed target is
  met only when the slowest run meets it, a memory bound only when every run keeps it.
- Model: {model_name(TINY)}, random weights in float32 (autocast on CUDA, as fine_tune.py), batch size 1.
- Training step: forward, backward, gradient clipping and fused AdamW, with gradient checkpointing where
  fine_tune.py's GRADIENT_CHECKPOINTING has it, as SFTTrainer runs it; {WARMUP} warm-up + {STEPS} timed steps, mean.
- Evaluation: vlmcls.prediction's predict_scores and predict_generate (up to {MAX_NEW_TOKENS} new tokens), one image
  at a time; {WARMUP} warm-up + {IMAGES} timed images per mode, mean. Random weights rarely end an answer
  early; a trained model stops after the class name. A LoRA configuration evaluates as its full-size twin
  (fine_tune.py merges LoRA into the saved model), so that is measured once.
- Times: wall-clock seconds, and in brackets CPU seconds of all the process's threads, which other
  processes' load stretches less. Peak memory: the process's peak RSS (VmHWM) on CPU,
  torch.cuda.max_memory_allocated on CUDA; each measurement runs in its own process.

Configurations (fine_tune.py settings):
{flags}

{table(runs)}
{memory}
Targets:
{targets(runs)}
"""


def main():
    if JOB:
        job = json.loads(JOB)
        return run_job(job, {"train": train_job, "eval": eval_job}, flags=CONFIG_FLAGS[job["config"]],
                       threads=THREADS, seed=SEED, device=DEVICE)
    unknown = [c for c in CONFIGS if c not in CONFIG_FLAGS]
    if unknown:
        sys.exit(f"error: unknown configuration(s) {unknown}: use {list(CONFIG_FLAGS)}")
    check_runs(RUNS, TINY)
    started, load_before, start = now(), os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="speed-benchmark-") as work:
        model_dir = Path(work) / "model"
        build_model(model_dir, seed=SEED, tiny=TINY)
        runs = [measure(model_dir, work, run) for run in range(1, RUNS + 1)]
    write_report(report(runs, started, load_before, time.perf_counter() - start),
                 OUTPUT or ROOT / "benchmarks" / f"results-speed{'-tiny' if TINY else ''}.md")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
