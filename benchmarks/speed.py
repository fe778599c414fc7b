"""Benchmark: training and evaluation speed and peak memory, the original's image settings against the defaults.

Builds a randomly initialised model of SmolVLM-256M-Instruct's exact architecture, saves it and reloads
it as the scripts do, then measures at batch size 1 for each configuration and image size: seconds per
training step (forward, backward, gradient clipping and AdamW, with fine_tune.py's gradient
checkpointing), seconds per evaluated image in score and generate mode, and peak memory. Every
(configuration, image size, phase) runs in a fresh process, so each peak is its own. The table goes to
stdout and to OUTPUT.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py              # full run: ~15 min on 2 idle CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py --tiny=true  # smoke check with the tests' tiny model

On a machine that other processes load, --threads=1 avoids the stalls of two threads waiting on each other
for a core; the CPU seconds reported next to each time are the least disturbed measure of the work.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

import fine_tune  # noqa: E402
from vlmcls.cli import configure, run_main, settings_of  # noqa: E402
from vlmcls.files import atomic_write  # noqa: E402
from vlmcls.app import example_images  # noqa: E402
from vlmcls.images import read_dataset_json  # noqa: E402
from vlmcls.inputs import InputEncoder  # noqa: E402
from vlmcls.models import end_token_ids, load_for_inference, load_model, load_processor, pick_device, pick_dtype, \
    quantize_model, set_resolution  # noqa: E402
from vlmcls.prediction import PromptBatches, evaluate, predict_generate, predict_scores, score_mode  # noqa: E402
from vlmcls.prompt import classification_question, render_segments  # noqa: E402
from vlmcls.training import answer_only_collator, prepare_model  # noqa: E402

CONFIGS = ["original", "defaults", "lora"]  # names from CONFIG_FLAGS; the first is the baseline of the ratios
SIZES = ["300x300", "640x480"]  # image sizes, WIDTHxHEIGHT
STEPS = 2  # timed training steps per configuration and size, mean reported (0: no training)
WARMUP = 1  # untimed training steps, and untimed score-mode images, before timing
IMAGES = 2  # timed images per evaluation mode (0: no evaluation)
MAX_NEW_TOKENS = 32  # generate mode's limit, as vlmcls.prediction.predict_generate's default
DEVICE = "auto"  # auto, cpu, cuda or mps
THREADS = 0  # torch CPU threads in each measurement; 0: torch's default (one per core)
TINY = False  # the tests' tiny SmolVLM instead of the full-size one: a quick check that the benchmark runs
OUTPUT = ""  # where the table is also written; "": benchmarks/results.md (results-tiny.md with --tiny)
INPUT_IMAGES = 100  # 800x600 JPEGs whose Q&A pairs the training input path turns into batches (0: skip)
EPOCHS = 3  # epochs of that input-path run
EVAL_IMAGES = 200  # 800x600 JPEGs that vlm_benchmark_test_dataset.py evaluates with the tiny model (0: skip)
BASELINE = "ea2cf45"  # the commit whose input path and evaluation script are the "before" of those comparisons
SEED = 0  # seed for the random weights and images
INT8 = False  # instead of the above: fp32 against int8 weights (QUANTIZE=int8), speed, memory and agreement
AGREEMENT = True  # INT8: also the agreement of fp32 and int8 predictions on elpv images (False: speed and memory only)
AGREEMENT_IMAGES = 40  # INT8: elpv test images on which the full-size model's fp32 and int8 predictions are compared
FINE_TUNE_STEPS = 300  # INT8: fine_tune.py steps of the tiny model on elpv images, whose predictions are compared
JOB = ""  # internal: one measurement as JSON, run by the benchmark in a fresh process

ROOT = Path(__file__).resolve().parents[1]
# fine_tune.py settings of each configuration, passed to it as on its command line; skip_frozen_backward=False is
# the behaviour before the frozen vision encoder ran without autograd (vlmcls.training.prepare_model).
CONFIG_FLAGS = {
    "original": {"image_longest_edge": 2048, "image_splitting": True, "enlarge_images": True},
    "shipped": {"image_longest_edge": 2048, "image_splitting": True},
    "defaults": {},
    "lora": {"use_lora": True},
    "lora_before": {"use_lora": True, "skip_frozen_backward": False},
    "freeze_vision": {"freeze_vision": True},
    "freeze_vision_before": {"freeze_vision": True, "skip_frozen_backward": False},
    "lora_vision": {"use_lora": True, "lora_vision": True},
}
RESOLUTION_FLAGS = ("image_longest_edge", "image_splitting", "enlarge_images")
CLASSES = ["Bird-drop", "Clean", "Dusty", "Electrical-damage", "Physical-Damage", "Snow-Covered"]
SMOLVLM_256M_PARAMETERS = 256_484_928
VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              image_size=512, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
TEXT = dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu", rms_norm_eps=1e-5,
            rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=False)
GB = 1e9
RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile")  # resident memory: all, anonymous, pages of mapped files


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
    """fine_tune.py's constants with this configuration's flags applied, as attributes in upper case."""
    settings = {**settings_of(vars(fine_tune)), **flags}
    return SimpleNamespace(**{name.upper(): value for name, value in settings.items()})


def make_images(size, count):
    import numpy as np
    from PIL import Image
    width, height = map(int, size.split("x"))
    rng = np.random.default_rng(SEED)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def train_job(job, torch, ft, device):
    """Mean seconds of a training step, as SFTTrainer runs one, on one image with a classification answer."""
    dtype = pick_dtype(device, ft.DTYPE)
    processor = load_processor(job["model"])
    set_resolution(processor, ft.IMAGE_LONGEST_EDGE, ft.IMAGE_SPLITTING)
    model = prepare_model(load_model(job["model"], torch.float32), freeze_vision=ft.FREEZE_VISION,
                          use_lora=ft.USE_LORA, lora_vision=ft.LORA_VISION, lora_r=ft.LORA_R, lora_alpha=ft.LORA_ALPHA,
                          lora_dropout=ft.LORA_DROPOUT, lora_target_modules=ft.LORA_TARGET_MODULES,
                          skip_frozen_backward=getattr(ft, "SKIP_FROZEN_BACKWARD", True)).to(device).train()
    if ft.GRADIENT_CHECKPOINTING:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "peft_config"):
            model.enable_input_require_grads()  # as SFTTrainer does for PEFT models
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Trainer's default optimizer (adamw_torch_fused) and gradient clipping (max_grad_norm 1.0).
    optimizer = torch.optim.AdamW(trainable, lr=ft.LEARNING_RATE, weight_decay=ft.WEIGHT_DECAY, fused=True)
    path = Path(job["result"]).with_suffix(".png")
    make_images(job["size"], 1)[0].save(path)
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
    images = make_images(job["size"], WARMUP + IMAGES)
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


def run_job(job):
    import peft  # noqa: F401  (the libraries first, so that base_gb is the process before any model)
    import torch
    import trl  # noqa: F401
    base_gb = memory_gb("VmRSS")
    if THREADS:
        torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    ft = fine_tune_settings(CONFIG_FLAGS[job["config"]])
    device = pick_device(DEVICE)
    jobs = {"train": train_job, "eval": eval_job, "int8": int8_job, "agreement": agreement_job}
    result = jobs[job["phase"]](job, torch, ft, device)
    result["base_gb"] = base_gb
    result.update(threads=torch.get_num_threads(), device=device, load=os.getloadavg()[0])
    atomic_write(job["result"], json.dumps(result))


# ---------------------------------------------------------------- orchestrating, in the main process

def build_model(folder):
    """SmolVLM-256M's architecture with random weights, with the tests' SmolVLM tokenizer and processor.

    The tokenizer is small, so the image token's id is not SmolVLM's 49190; any id inside the
    49,280-token vocabulary costs the same.
    """
    import torch
    from tiny_models import build_tiny_smolvlm
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    torch.manual_seed(SEED)
    build_tiny_smolvlm(folder)  # the processor, with SmolVLM's shipped settings, and the tiny model
    if TINY:
        return
    tokenizer = load_processor(folder).tokenizer
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = Idefics3Config(vision_config=VISION, text_config={**TEXT, **ids}, scale_factor=4,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
                            **ids)
    model = Idefics3ForConditionalGeneration(config)
    count = sum(p.numel() for p in model.parameters())
    print(f"built SmolVLM-256M-Instruct's architecture: {count:,} parameters")
    if count != SMOLVLM_256M_PARAMETERS:
        raise RuntimeError(f"{count:,} parameters, not SmolVLM-256M-Instruct's {SMOLVLM_256M_PARAMETERS:,}")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)  # replaces the tiny model's weights and config


def run_worker(phase, config, size, model_dir, work, label="", **extra):
    """One measurement in a fresh process, so that its peak memory is its own; `extra` goes into its job."""
    label = label or f"{phase} {config} {size}"
    result = Path(work) / f"{label.replace(' ', '-')}.json"
    job = {"phase": phase, "config": config, "size": size, "model": str(model_dir), "result": str(result), **extra}
    print(f"\n--- {label} ---", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, __file__, *sys.argv[1:], f"--job={json.dumps(job)}"], env=env, check=True)
    return {**json.loads(result.read_text()), "job": label}


def measure(model_dir, work):
    """{(phase, config, size): result}. Evaluation depends only on the resolution (LoRA is merged into the
    saved model), so configurations with the same resolution share one evaluation run."""
    results, evaluated = {}, {}
    for size in SIZES:
        for config in CONFIGS:
            if STEPS:
                results["train", config, size] = run_worker("train", config, size, model_dir, work)
            resolution = tuple(CONFIG_FLAGS[config].get(k) for k in RESOLUTION_FLAGS)
            if IMAGES and resolution not in evaluated:
                evaluated[resolution] = run_worker("eval", config, size, model_dir, work)
            if IMAGES:
                results["eval", config, size] = evaluated[resolution]
        evaluated.clear()
    return results


def ratio(a, b):
    return f"{a / b:.1f}x" if b else "n/a"


def seconds(key):
    """A time cell, wall-clock then CPU seconds, and its ratio cell in the same form."""
    return (lambda r: f"{r[key + '_s']:.2f} ({r[key + '_cpu']:.2f})",
            lambda a, b: f"{ratio(a[key + '_s'], b[key + '_s'])} ({ratio(a[key + '_cpu'], b[key + '_cpu'])})")


def gigabytes(r):
    return f"{r['peak_gb']:.2f}"


def gigabytes_ratio(a, b):
    return ratio(a["peak_gb"], b["peak_gb"])


def table(results):
    """One markdown table: each configuration side by side, then the baseline's ratio to each other one."""
    base, others = CONFIGS[0], CONFIGS[1:]
    rows = [  # label, phase, cell, ratio cell (None: no ratio)
        ("tiles / tokens of the prompt", "eval", lambda r: f"{r['tiles']} / {r['prompt_tokens']}", None),
        ("tokens of the training example", "train", lambda r: str(r["train_tokens"]), None),
        ("train: s/step, wall (CPU)", "train", *seconds("step")),
        ("train: peak memory GB", "train", gigabytes, gigabytes_ratio),
        ("score: s/image, wall (CPU)", "eval", *seconds("score")),
        ("generate: s/image, wall (CPU)", "eval", *seconds("generate")),
        ("generate: new tokens per image", "eval", lambda r: f"{r['new_tokens']:.0f}", None),
        ("eval peak memory GB (both modes)", "eval", gigabytes, gigabytes_ratio),
        ("images/s: score vs generate (ratio)", "eval",
         lambda r: f"{1 / r['score_s']:.3f} vs {1 / r['generate_s']:.3f} ({r['generate_s'] / r['score_s']:.1f}x)",
         None),
    ]
    lines = ["| image | measure | " + " | ".join(CONFIGS + [f"{base} / {o}" for o in others]) + " |",
             "|---" * (2 + len(CONFIGS) + len(others)) + "|"]
    for size in SIZES:
        for label, phase, cell, ratio_cell in [row for row in rows if (row[1], CONFIGS[0], size) in results]:
            values = [cell(results[phase, c, size]) for c in CONFIGS]
            ratios = [ratio_cell(results[phase, base, size], results[phase, o, size]) if ratio_cell else ""
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


def targets(results):
    """The hoped-for results that were measured, each with its numbers (time ratios: wall-clock, then CPU)."""
    lines = []

    def check(text, ok):
        lines.append(f"- {'met' if ok else 'MISSED'}: {text}")

    for size in SIZES:
        o, d = results.get(("train", "original", size)), results.get(("train", "defaults", size))
        if o and d:
            check(f"{size}: training step >= 10x faster with defaults ({seconds('step')[1](o, d)})",
                  o["step_s"] >= 10 * d["step_s"])
            check(f"{size}: peak training memory with defaults below the original's "
                  f"({d['peak_gb']:.2f} vs {o['peak_gb']:.2f} GB)", d["peak_gb"] < o["peak_gb"])
        oe, de = results.get(("eval", "original", size)), results.get(("eval", "defaults", size))
        if oe and de:
            for mode in ("score", "generate"):
                check(f"{size}: {mode} evaluation >= 10x faster with defaults ({seconds(mode)[1](oe, de)})",
                      oe[mode + "_s"] >= 10 * de[mode + "_s"])
        for before, now in (("lora_before", "lora"), ("freeze_vision_before", "freeze_vision")):
            b, n = results.get(("train", before, size)), results.get(("train", now, size))
            if b and n:
                check(f"{size}: {now} training step >= 2x faster than before the frozen encoder ran without "
                      f"autograd ({seconds('step')[1](b, n)})", b["step_s"] >= 2 * n["step_s"])
        oe, se = results.get(("eval", "original", size)), results.get(("eval", "shipped", size))
        if oe and se and size == "300x300":
            check(f"{size}: base model at its shipped settings, score evaluation >= 8x faster without enlarging "
                  f"({seconds('score')[1](oe, se)})", oe["score_s"] >= 8 * se["score_s"])
        for lora in ("lora", "lora_vision"):
            lo = results.get(("train", lora, size))
            if o and lo:
                check(f"{size}: peak training memory with {lora} at most a third of the original's "
                      f"({lo['peak_gb']:.2f} vs {o['peak_gb'] / 3:.2f} GB)", 3 * lo["peak_gb"] <= o["peak_gb"])
    return "\n".join(lines)


def report(results, started, load_before, elapsed):
    first = next(iter(results.values()))
    threads = sorted({r["threads"] for r in results.values()})
    loads = ", ".join(f"{r['job']} {r['load']:.1f}" for r in {r["job"]: r for r in results.values()}.values())
    model = "the tests' tiny SmolVLM" if TINY else \
        f"SmolVLM-256M-Instruct's architecture ({SMOLVLM_256M_PARAMETERS:,} parameters)"
    flags = "\n".join(f"- {c}: " + (" ".join(f"--{k}={json.dumps(v)}" for k, v in CONFIG_FLAGS[c].items())
                                    or "fine_tune.py's defaults (image_longest_edge 512, no splitting)")
                      for c in CONFIGS)
    memory = "" if first["device"] != "cpu" or not STEPS else f"""
Where training memory goes (GB; weights, gradients and AdamW state computed from the parameter counts; the
weights are memory-mapped from the saved file and count in RSS once read):

{memory_table(results)}
"""
    return f"""# Speed and memory: the original's image settings against the project's defaults

Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py {' '.join(sys.argv[1:])}`

- Run {started}, {elapsed / 60:.1f} min, on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs),
  device {first['device']}, torch threads {threads}.
- 1-minute load average before {load_before[0]:.1f}, then at the end of each measurement (other processes
  share the CPUs; above {os.cpu_count()} they competed for them): {loads}.
- Model: {model}, random weights in float32 (autocast on CUDA, as fine_tune.py), batch size 1.
- Training step: forward, backward, gradient clipping and fused AdamW with gradient checkpointing, as
  SFTTrainer runs it; {WARMUP} warm-up + {STEPS} timed steps, mean.
- Evaluation: vlmcls.prediction's predict_scores and predict_generate (up to {MAX_NEW_TOKENS} new tokens), one image
  at a time; {WARMUP} warm-up + {IMAGES} timed images per mode, mean. Random weights rarely end an answer
  early; a trained model stops after the class name. A LoRA configuration evaluates as its full-size twin
  (fine_tune.py merges LoRA into the saved model), so that is measured once.
- Times: wall-clock seconds, and in brackets CPU seconds of all the process's threads, which other
  processes' load stretches less. Peak memory: the process's peak RSS (VmHWM) on CPU,
  torch.cuda.max_memory_allocated on CUDA; each measurement runs in its own process.

Configurations (fine_tune.py settings):
{flags}

{table(results)}
{memory}
Targets:
{targets(results)}
"""

# ---------------------------------------------------------------- fp32 against int8 weights (--int8=true)

def int8_job(job, torch, ft, device):
    """Seconds per image in score mode and memory, with the model loaded as the evaluation scripts and the app
    load it with QUANTIZE=job["quantize"]: resident memory once loaded and after the images, each split into
    anonymous memory and pages of mapped files (the weights file among them), and the peak."""
    processor, model = load_for_inference(job["model"], device=device, dtype=torch.float32, quantize=job["quantize"],
                                          image_longest_edge=ft.IMAGE_LONGEST_EDGE,
                                          image_splitting=ft.IMAGE_SPLITTING)
    loaded = {field: memory_gb(field) for field in RSS_FIELDS}
    images = make_images(job["size"], WARMUP + IMAGES)
    question = classification_question(CLASSES)
    prompts = PromptBatches(processor, question, 10**9, ft.ENLARGE_IMAGES)
    for image in images[:WARMUP]:
        score_mode(model, processor, prompts([image]), question, CLASSES)
    score_s, score_cpu = mean([timed(torch, device,
                                     lambda: score_mode(model, processor, prompts([im]), question, CLASSES))
                               for im in images[WARMUP:]])
    return {"score_s": score_s, "score_cpu": score_cpu, "loaded": loaded,
            "after": {field: memory_gb(field) for field in RSS_FIELDS}, "peak_gb": peak_gb(torch, device)}


def agreement_job(job, torch, ft, device):
    """One model's score-mode predictions on the same test images in fp32, then with int8 weights."""
    data = read_dataset_json(job["test_json"])
    paths = example_images(job["model"], job["test_json"], job["limit"] or len(data["samples"]))
    label = {s["image"]: s["label"] for s in data["samples"]}
    processor, model = load_for_inference(job["model"], device="cpu", dtype=torch.float32, quantize="none",
                                          image_longest_edge=ft.IMAGE_LONGEST_EDGE,
                                          image_splitting=ft.IMAGE_SPLITTING)
    runs = {}
    for how in ("none", "int8"):
        model = quantize_model(model, how, "cpu")
        runs[how] = evaluate(model, processor, paths, data["question"], data["classes"], "score", 8,
                             data["max_image_pixels"], desc=f"agreement, {how}")
    pairs = list(zip(runs["none"], runs["int8"]))
    return {"images": len(paths), "identical": sum(a["pred"] == b["pred"] for a, b in pairs),
            "max_prob_diff": max(abs(a["probs"][c] - b["probs"][c]) for a, b in pairs for c in data["classes"]),
            **{f"accuracy_{how}": sum(r["pred"] == label[p] for p, r in zip(paths, results)) / len(paths)
               for how, results in runs.items()},
            "predicted_classes": len({r["pred"] for r in runs["none"]}), "classes": len(data["classes"]),
            "peak_gb": peak_gb(torch, device)}


def elpv_test_json(work):
    """elpv's solar-cell images split as the pipeline splits them, and a tiny SmolVLM fine-tuned on them with
    fine_tune.py (a real fine-tune; the full-size model cannot be fine-tuned on 2 CPU cores in reasonable time).
    Returns (test JSON, fine-tuned model folder)."""
    from tiny_models import build_tiny_smolvlm
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for script, *flags in [
            ("download_dataset.py", "--source=elpv", "--dataset_dir=elpv"),
            ("generate_train_json.py", "--dataset_dir=elpv", "--train_json=train.json", "--test_json=test.json"),
            ("fine_tune.py", f"--model_path={build_tiny_smolvlm(Path(work) / 'tiny')}", "--output_dir=tiny-elpv",
             "--train_json=train.json", "--test_json=", f"--max_steps={FINE_TUNE_STEPS}",
             "--gradient_accumulation_steps=1", "--learning_rate=3e-3", "--warmup_steps=20", f"--seed={SEED}")]:
        print(f"\n--- {script} {' '.join(flags)} ---", flush=True)
        subprocess.run([sys.executable, str(ROOT / script), *flags], cwd=work, env=env, check=True)
    return Path(work) / "test.json", Path(work) / "tiny-elpv"


def resident(memory):
    return f"{memory['VmRSS']:.2f} ({memory['RssAnon']:.2f} + {memory['RssFile']:.2f})"


def int8_report(speed, agreement, started, elapsed):
    """The int8 comparison as markdown: speed and memory per image size, agreement per model, targets."""
    lines = ["| image | measure | fp32 | int8 | fp32 / int8 |", "|---|---|---|---|---|"]
    for size in SIZES:
        fp32, int8 = speed["none", size], speed["int8", size]
        lines += [f"| {size} | score: s/image, wall (CPU) | {seconds('score')[0](fp32)} | {seconds('score')[0](int8)} "
                  f"| {seconds('score')[1](fp32, int8)} |",
                  *[f"| {size} | RSS {when}, GB: all (anonymous + mapped files) | {resident(fp32[key])} | "
                    f"{resident(int8[key])} | {ratio(fp32[key]['VmRSS'], int8[key]['VmRSS'])} |"
                    for key, when in (("loaded", "once loaded"), ("after", "after the images"))],
                  f"| {size} | peak RSS (VmHWM), GB | {gigabytes(fp32)} | {gigabytes(int8)} "
                  f"| {gigabytes_ratio(fp32, int8)} |"]
    lines += ["", "| model (weights) | images | identical predictions | largest probability difference | "
              "fp32 accuracy | int8 accuracy | classes predicted (fp32) |", "|---|---|---|---|---|---|---|"] \
        if agreement else ["", "Agreement: not measured in this run (--agreement=false)."]
    for name, r in agreement.items():
        lines.append(f"| {name} | {r['images']} | {r['identical'] / r['images']:.1%} ({r['identical']}/{r['images']}) "
                     f"| {r['max_prob_diff']:.4f} | {r['accuracy_none']:.3f} | {r['accuracy_int8']:.3f} "
                     f"| {r['predicted_classes']} of {r['classes']} |")
    checks = []
    for size in SIZES:
        fp32, int8 = speed["none", size], speed["int8", size]
        checks += [(f"{size}: int8 at least 1.4x faster per image ({seconds('score')[1](fp32, int8)})",
                    fp32["score_s"] >= 1.4 * int8["score_s"]),
                   (f"{size}: less peak memory with int8 ({int8['peak_gb']:.2f} vs {fp32['peak_gb']:.2f} GB)",
                    int8["peak_gb"] < fp32["peak_gb"]),
                   (f"{size}: less resident memory with int8 after the images ({int8['after']['VmRSS']:.2f} vs "
                    f"{fp32['after']['VmRSS']:.2f} GB)", int8["after"]["VmRSS"] < fp32["after"]["VmRSS"])]
    checks += [(f"{name}: at least 98% identical predictions ({r['identical'] / r['images']:.1%})",
                r["identical"] >= 0.98 * r["images"]) for name, r in agreement.items()]
    first = next(iter(speed.values()))
    base_gb = max(r["base_gb"] for r in speed.values())
    model = "the tests' tiny SmolVLM" if TINY else \
        f"SmolVLM-256M-Instruct's architecture ({SMOLVLM_256M_PARAMETERS:,} parameters)"
    return f"""# CPU prediction: fp32 against int8 weights (QUANTIZE=int8)

Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py {' '.join(sys.argv[1:])}`

- Run {started}, {elapsed / 60:.1f} min, on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs),
  torch threads {first['threads']}; 1-minute load average at the end of each measurement:
  {", ".join(f"{r['job']} {r['load']:.1f}" for r in [*speed.values(), *agreement.values()])}.
- int8: torch's dynamic quantisation of every linear layer (int8 weights, activations quantised per batch),
  loaded as the scripts load it with --quantize=int8 (vlmcls.models.load_int8_model: each linear layer
  quantised as its weights are read, so the float32 weights are never all held).
- Speed and memory: {model}, random weights, score mode (vlmcls.prediction.score_mode) on one image at a
  time, {WARMUP} warm-up + {IMAGES} timed images, mean; fine_tune.py's image settings (512 px, one tile).
  Each measurement in a fresh process, which holds about {base_gb:.2f} GB before any model (the libraries).
  Memory is the process's resident set (/proc/self/status) once the model is loaded and again after the
  images: VmRSS, split into anonymous memory (RssAnon) and pages of mapped files (RssFile: fp32 maps the
  weights file and reads its pages in as the first image uses them), and the peak (VmHWM).
- Agreement: the same elpv solar-cell test images (download_dataset.py --source=elpv, split by
  generate_train_json.py), predicted in fp32 and then with int8 weights by the same model in one process.
  "tiny, fine-tuned" is the tests' tiny SmolVLM fine-tuned by fine_tune.py for {FINE_TUNE_STEPS} steps on
  the elpv training images, all test images; "256M, random weights" is the full-size architecture above,
  untrained, on {AGREEMENT_IMAGES} of them (taken from each class in turn). Random weights put the classes'
  probabilities close together, so they are a harder test of agreement than a trained model; the full-size
  model could not be fine-tuned on this machine in reasonable time.

{chr(10).join(lines)}

Targets:
{chr(10).join(f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks)}
"""


def compare_int8(model_dir, work):
    """fp32 against int8: speed and memory for each image size, agreement of the two on elpv images."""
    started, start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    speed = {(how, size): run_worker("int8", "defaults", size, model_dir, work, label=f"{size} {how}",
                                     quantize=how) for size in SIZES for how in ("none", "int8")}
    agreement = {}
    if AGREEMENT:
        test_json, fine_tuned = elpv_test_json(work)
        agreement = {name: run_worker("agreement", "defaults", "elpv", model, work, label=f"agreement {label}",
                                      test_json=str(test_json), limit=limit)
                     for name, label, model, limit in [("tiny, fine-tuned", "tiny", fine_tuned, 0),
                                                       ("256M, random weights", "256M", model_dir, AGREEMENT_IMAGES)]}
    return int8_report(speed, agreement, started, time.perf_counter() - start)


def baseline_tree(work):
    """The BASELINE commit's files, for the "before" side of the input-path and evaluation comparisons."""
    tree = Path(work) / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def jpeg_data_set(work, train_count, test_count):
    """800x600 JPEGs in two class folders, split by generate_train_json.py: (train JSON, test JSON)."""
    folder = Path(work) / "jpegs"
    for i, image in enumerate(make_images("800x600", train_count + test_count)):
        (folder / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        image.save(folder / "ab"[i % 2] / f"{i}.jpg", quality=90)
    train, test = Path(work) / "train.json", Path(work) / "test.json"
    subprocess.run([sys.executable, str(ROOT / "generate_train_json.py"), f"--dataset_dir={folder}",
                    f"--train_json={train}", f"--test_json={test}",
                    f"--train_ratio={train_count / (train_count + test_count)}"], check=True,
                   capture_output=True)
    return train, test


def children_cpu():
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def input_comparisons(work):
    """Before and now, in one run: the training input path over EPOCHS epochs (Q&A pairs per CPU-second), and
    vlm_benchmark_test_dataset.py end to end with two tiny models: the tests' (16-px patches: its vision tower
    attends over 1,024 patches a tile, a cost of its own), and one with 64-px patches (4 image tokens a tile), whose
    forward pass costs almost nothing, so that what is timed is the script around it."""
    from tiny_models import build_tiny_smolvlm
    trees = {"before": baseline_tree(work), "now": ROOT}
    model = build_tiny_smolvlm(Path(work) / "tiny", image_longest_edge=512)
    models = {"tiny": model, "near-free": build_tiny_smolvlm(Path(work) / "free", image_longest_edge=512,
                                                             patch_size=64)}
    train, test = jpeg_data_set(work, max(INPUT_IMAGES, 2), max(EVAL_IMAGES, 2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for name, tree in trees.items():
        if INPUT_IMAGES:
            print(f"\n--- training input path: {name} ---", flush=True)
            out = Path(work) / f"input-{name}.json"
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "input_path.py"), str(tree), str(train),
                            str(model), str(EPOCHS), str(out)], env=env, check=True)
            results["input", name] = json.loads(out.read_text())
    for label, eval_model in models.items() if EVAL_IMAGES else ():
        for name, tree in trees.items():
            print(f"\n--- evaluation script, {label} model: {name} ---", flush=True)
            wall, cpu = time.perf_counter(), children_cpu()
            # One torch thread: on a shared machine two threads stall on each other for every small op.
            subprocess.run([sys.executable, str(Path(tree) / "vlm_benchmark_test_dataset.py"),
                            f"--model_path={eval_model}", f"--test_json={test}",
                            f"--report_dir={Path(work) / ('report-' + name)}"],
                           env={**env, "OMP_NUM_THREADS": "1"}, check=True, cwd=work)
            images = len(json.loads(test.read_text())["samples"])
            results["eval", label, name] = {"wall_s": (time.perf_counter() - wall) / images,
                                            "cpu_s": (children_cpu() - cpu) / images, "images": images}
    return results


def input_table(results):
    lines = [f"| measure | before ({BASELINE}) | now | now / before |", "|---|---|---|---|"]
    if ("input", "now") in results:
        b, n = results["input", "before"], results["input", "now"]
        lines += [f"| training input, {n['pairs'] // (4 * EPOCHS)} 800x600 JPEGs x 4 Q&A pairs, {EPOCHS} epochs: "
                  f"Q&A pairs per CPU-second | {b['pairs'] / b['cpu_s']:.1f} | {n['pairs'] / n['cpu_s']:.1f} | "
                  f"{ratio(n['pairs'] / n['cpu_s'], b['pairs'] / b['cpu_s'])} |",
                  f"| same: wall seconds (CPU seconds, all processes) | {b['wall_s']:.1f} ({b['cpu_s']:.1f}) | "
                  f"{n['wall_s']:.1f} ({n['cpu_s']:.1f}) | {ratio(b['wall_s'], n['wall_s'])} faster |"]
    for label in ("tiny", "near-free"):
        if ("eval", label, "now") in results:
            b, n = results["eval", label, "before"], results["eval", label, "now"]
            lines.append(f"| vlm_benchmark_test_dataset.py end to end, {label} model, {n['images']} 800x600 JPEGs: "
                         f"s/image, wall (CPU) | {b['wall_s']:.3f} ({b['cpu_s']:.3f}) | {n['wall_s']:.3f} "
                         f"({n['cpu_s']:.3f}) | {ratio(b['wall_s'], n['wall_s'])} faster "
                         f"(CPU {ratio(b['cpu_s'], n['cpu_s'])}) |")
    return "\n".join(lines)


def main():
    if JOB:
        return run_job(json.loads(JOB))
    unknown = [c for c in CONFIGS if c not in CONFIG_FLAGS]
    if unknown:
        sys.exit(f"error: unknown configuration(s) {unknown}: use {list(CONFIG_FLAGS)}")
    started, load_before, start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), os.getloadavg(), \
        time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="speed-benchmark-") as work:
        if INT8:
            model_dir = Path(work) / "model"
            build_model(model_dir)
            text = compare_int8(model_dir, work)
        else:
            inputs = input_comparisons(work) if INPUT_IMAGES or EVAL_IMAGES else {}
            results = {}
            if STEPS or IMAGES:
                model_dir = Path(work) / "model"
                build_model(model_dir)
                results = measure(model_dir, work)
            text = (report(results, started, load_before, time.perf_counter() - start) if results else
                    f"# Input path and evaluation: before and now\n\nCommand: `HF_HUB_OFFLINE=1 .venv/bin/python "
                    f"benchmarks/speed.py {' '.join(sys.argv[1:])}`\n") + \
                (f"\n## Input path and evaluation end to end, before and now (run {started})\n\n"
                 f"{input_table(inputs)}\n" if inputs else "")
    print("\n" + text)
    name = ("results-int8" if INT8 else "results") + ("-tiny" if TINY else "")
    output = OUTPUT or ROOT / "benchmarks" / f"{name}.md"
    atomic_write(output, text)
    print(f"written to {output}")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
