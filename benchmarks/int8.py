"""Benchmark: CPU prediction with fp32 against int8 weights (QUANTIZE=int8): speed, memory and agreement.

Speed and memory: SmolVLM-256M-Instruct's architecture with random weights (as speed.py builds it), loaded as
the evaluation scripts load it with --quantize=none and --quantize=int8, score mode on one image at a time, each
(image size, weights) in a fresh process, all of it RUNS times, a number fixed before the first (at least 5):
medians and the speed ratio's median and range are reported, and the speed target is met only when the slowest run
meets it. Agreement: the classes and probabilities of the same elpv solar-cell test images predicted in fp32 and
with int8 weights, by a tiny SmolVLM fine-tuned by fine_tune.py on elpv and by the full-size architecture. The
table goes to stdout and to OUTPUT. benchmarks/README.md says what the numbers do and do not say.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int8.py --threads=1 --images=3   # ~1 h on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int8.py --tiny=true --agreement=false --images=1 --runs=2  # smoke

With --torchao=true a third weights column measures torchao's int8 (Int8DynamicActivationInt8WeightConfig, weights
and activations int8, applied to the fp32 model once loaded), the library torch points to as torch.ao.quantization's
successor: what QUANTIZE=int8 would become if the project moved.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

from common import CLASSES, ROOT, build_model, check_runs, command, every_run, gigabytes, machine, make_images, \
    mean, medians, memory_gb, model_name, now, peak_gb, ratio, ratios_of, run_job, run_worker, script_env, \
    seconds, spread, timed, times_spread, verdict, write_report  # noqa: E402
from vlmcls.app import example_images  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402
from vlmcls.images import read_dataset_json  # noqa: E402
from vlmcls.inputs import PromptBatches  # noqa: E402
from vlmcls.models import quantize_model  # noqa: E402
from vlmcls.objectives import load_for_inference  # noqa: E402
from vlmcls.objectives.answer import score_mode  # noqa: E402
from vlmcls.prediction import evaluate  # noqa: E402
from vlmcls.prompt import classification_question  # noqa: E402
from vlmcls.saved import open_classifier  # noqa: E402

SIZES = ["300x300", "640x480"]  # image sizes, WIDTHxHEIGHT
WARMUP = 1  # untimed images before timing
IMAGES = 2  # timed images per measurement
RUNS = 5  # runs of the speed and memory measurements, fixed before the first (at least 5; fewer only with TINY)
THREADS = 0  # torch CPU threads in each measurement; 0: torch's default (one per core)
TINY = False  # the tests' tiny SmolVLM instead of the full-size one: a quick check that the benchmark runs
TORCHAO = False  # also torchao's int8 dynamic quantisation, beside torch.ao's (needs `pip install torchao`)
AGREEMENT = True  # also the agreement of fp32 and int8 predictions on elpv images (False: speed and memory only)
AGREEMENT_IMAGES = 40  # elpv test images on which the full-size model's fp32 and int8 predictions are compared
FINE_TUNE_STEPS = 300  # fine_tune.py steps of the tiny model on elpv images, whose predictions are compared
OUTPUT = ""  # where the table is also written; "": benchmarks/results-int8.md (results-int8-tiny.md with --tiny)
SEED = 0  # seed for the random weights and images
JOB = ""  # internal: one measurement as JSON, run by the benchmark in a fresh process

HEADS = {"int8": "int8 (torch.ao)", "torchao": "int8 (torchao)"}  # the table's columns of quantised weights
RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile")  # resident memory: all, anonymous, pages of mapped files


def quantizations():
    """The weights measured, fp32 first: the scripts' QUANTIZE values, and torchao's int8 with TORCHAO."""
    return ("none", "int8") + (("torchao",) if TORCHAO else ())


# ---------------------------------------------------------------- measuring, in the worker process

def int8_job(job, torch, ft, device):
    """Seconds per image in score mode and memory, with the model loaded as the evaluation scripts and the app
    load it with QUANTIZE=job["quantize"]: resident memory once loaded and after the images, each split into
    anonymous memory and pages of mapped files (the weights file among them), and the peak."""
    torchao = job["quantize"] == "torchao"
    processor, model = load_for_inference(open_classifier(job["model"]), device=device, dtype=torch.float32,
                                          quantize="none" if torchao else job["quantize"],
                                          image_longest_edge=ft.IMAGE_LONGEST_EDGE,
                                          image_splitting=ft.IMAGE_SPLITTING)
    if torchao:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
    loaded = {field: memory_gb(field) for field in RSS_FIELDS}
    images = make_images(job["size"], WARMUP + IMAGES, SEED)
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
    processor, model = load_for_inference(open_classifier(job["model"]), device="cpu", dtype=torch.float32, quantize="none",
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


# ---------------------------------------------------------------- orchestrating, in the main process

def worker(job, work, label):
    return run_worker(__file__, job, work, label)


def scripts(work, *steps):
    """Each (script, *flags) of `steps` run in `work` as a user runs it."""
    for script, *flags in steps:
        print(f"\n--- {script} {' '.join(flags)} ---", flush=True)
        subprocess.run([sys.executable, str(ROOT / script), *flags], cwd=work, env=script_env(), check=True)


def elpv_split(work):
    """elpv's solar-cell images downloaded and split as the pipeline splits them: train.json and test.json in
    `work`. Returns the test JSON."""
    if not (Path(work) / "test.json").is_file():
        scripts(work, ("download_dataset.py", "--source=elpv", "--dataset_dir=elpv"),
                ("generate_train_json.py", "--dataset_dir=elpv", "--train_json=train.json", "--test_json=test.json"))
    return Path(work) / "test.json"


def elpv_test_json(work):
    """elpv_split's images, and a tiny SmolVLM fine-tuned on them with fine_tune.py (a real fine-tune; the
    full-size model cannot be fine-tuned on 2 CPU cores in reasonable time). Returns (test JSON, fine-tuned model
    folder)."""
    from tiny_models import build_tiny_smolvlm
    test_json = elpv_split(work)
    scripts(work, ("fine_tune.py", f"--model_path={build_tiny_smolvlm(Path(work) / 'tiny')}", "--output_dir=tiny-elpv",
                   "--train_json=train.json", "--test_json=", f"--max_steps={FINE_TUNE_STEPS}",
                   "--gradient_accumulation_steps=1", "--learning_rate=3e-3", "--warmup_steps=20", f"--seed={SEED}"))
    return test_json, Path(work) / "tiny-elpv"


def resident(memory):
    return f"{memory['VmRSS']:.2f} ({memory['RssAnon']:.2f} + {memory['RssFile']:.2f})"


def int8_report(runs, agreement, started, elapsed):
    """The int8 comparison as markdown: speed and memory per image size (medians over the runs), agreement per
    model, targets."""
    speed = medians(runs)
    score = {size: [(r["none", size], r["int8", size]) for r in runs] for size in SIZES}  # each run's pair
    others = [how for how in quantizations() if how != "none"]
    lines = ["| image | measure | fp32 | " + " | ".join(HEADS[h] for h in others) + " | "
             + " | ".join(f"fp32 / {HEADS[h]}" for h in others) + " |", "|---" * (3 + 2 * len(others)) + "|"]
    for size in SIZES:
        fp32, cells = speed["none", size], [speed[how, size] for how in others]
        pairs = [[(r["none", size], r[how, size]) for r in runs] for how in others]

        def row(measure, cell, ratio_cell):
            return (f"| {size} | {measure} | {cell(fp32)} | " + " | ".join(cell(c) for c in cells) + " | "
                    + " | ".join(ratio_cell(c, p) for c, p in zip(cells, pairs)) + " |")
        lines += [row("score: s/image, wall (CPU)", seconds("score"), lambda c, p: times_spread(p, "score")),
                  *[row(f"RSS {when}, GB: all (anonymous + mapped files)", lambda r, key=key: resident(r[key]),
                        lambda c, p, key=key: ratio(fp32[key]["VmRSS"], c[key]["VmRSS"]))
                    for key, when in (("loaded", "once loaded"), ("after", "after the images"))],
                  row("peak RSS (VmHWM), GB", gigabytes, lambda c, p: ratio(fp32["peak_gb"], c["peak_gb"]))]
    lines += ["", "| model (weights) | images | identical predictions | largest probability difference | "
              "fp32 accuracy | int8 accuracy | classes predicted (fp32) |", "|---|---|---|---|---|---|---|"] \
        if agreement else ["", "Agreement: not measured in this run (--agreement=false)."]
    for name, r in agreement.items():
        lines.append(f"| {name} | {r['images']} | {r['identical'] / r['images']:.1%} ({r['identical']}/{r['images']}) "
                     f"| {r['max_prob_diff']:.4f} | {r['accuracy_none']:.3f} | {r['accuracy_int8']:.3f} "
                     f"| {r['predicted_classes']} of {r['classes']} |")
    checks = []  # (verdict, what)
    for size in SIZES:
        fp32, int8 = speed["none", size], speed["int8", size]
        pairs = score[size]
        checks += [(verdict(ratios_of(pairs, "score_s"), 1.4, at_most=False),
                    f"{size}: int8 at least 1.4x faster per image ({times_spread(pairs, 'score')})"),
                   (every_run([b["peak_gb"] < a["peak_gb"] for a, b in pairs]),
                    f"{size}: less peak memory with int8 ({int8['peak_gb']:.2f} vs {fp32['peak_gb']:.2f} GB, medians)"),
                   (every_run([b["after"]["VmRSS"] < a["after"]["VmRSS"] for a, b in pairs]),
                    f"{size}: less resident memory with int8 after the images ({int8['after']['VmRSS']:.2f} vs "
                    f"{fp32['after']['VmRSS']:.2f} GB, medians)")]
    checks += [("met" if r["identical"] >= 0.98 * r["images"] else "missed",
                f"{name}: at least 98% identical predictions ({r['identical'] / r['images']:.1%})")
               for name, r in agreement.items()]
    results = [*(m for r in runs for m in r.values()), *agreement.values()]
    first = next(iter(speed.values()))
    base_gb = max(r["base_gb"] for r in speed.values())
    return f"""# CPU prediction: fp32 against int8 weights (QUANTIZE=int8)

{command("int8.py")}

- {machine(started, elapsed)},
  torch threads {first['threads']}; 1-minute load average at the end of each measurement, median (range):
  {spread([r['load'] for r in results], '{:.1f}')}.
- Runs: {len(runs)} (RUNS, fixed before the first) of the speed and memory measurements, each measuring every
  (image size, weights) in turn. The table gives medians over the runs and the speed ratio's median (min-max)
  over the runs' ratios; the speed target is met only when the slowest run meets it, a memory one only when
  every run keeps it. Agreement, not a speed, is measured once.
- int8: torch's dynamic quantisation of every linear layer (int8 weights, activations quantised per batch),
  loaded as the scripts load it with --quantize=int8 (vlmcls.models.load_int8_model: each linear layer
  quantised as its weights are read, so the float32 weights are never all held).
- Speed and memory: {model_name(TINY)}, random weights, score mode (vlmcls.prediction.score_mode) on one image at a
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
{chr(10).join(f"- {ok}: {text}" for ok, text in checks)}
"""


def compare_int8(model_dir, work):
    """fp32 against int8: speed and memory for each image size, agreement of the two on elpv images."""
    started, start = now(), time.perf_counter()
    runs = [{(how, size): worker({"phase": "int8", "size": size, "model": str(model_dir), "quantize": how}, work,
                                 f"{size} {how} run {run}") for size in SIZES for how in quantizations()}
            for run in range(1, RUNS + 1)]
    agreement = {}
    if AGREEMENT:
        test_json, fine_tuned = elpv_test_json(work)
        agreement = {name: worker({"phase": "agreement", "model": str(model), "test_json": str(test_json),
                                   "limit": limit}, work, f"agreement {label}")
                     for name, label, model, limit in [("tiny, fine-tuned", "tiny", fine_tuned, 0),
                                                       ("256M, random weights", "256M", model_dir, AGREEMENT_IMAGES)]}
    return int8_report(runs, agreement, started, time.perf_counter() - start)


def main():
    if JOB:
        return run_job(json.loads(JOB), {"int8": int8_job, "agreement": agreement_job}, flags={}, threads=THREADS,
                       seed=SEED, device="cpu")
    check_runs(RUNS, TINY)
    with tempfile.TemporaryDirectory(prefix="int8-benchmark-") as work:
        model_dir = Path(work) / "model"
        build_model(model_dir, seed=SEED, tiny=TINY)
        text = compare_int8(model_dir, work)
    write_report(text, OUTPUT or ROOT / "benchmarks" / f"results-int8{'-tiny' if TINY else ''}.md")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
