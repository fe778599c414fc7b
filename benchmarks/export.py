"""Benchmark: the exported model (export_model.py) against PyTorch on the CPU: seconds per image, file sizes, peak
memory, and top-1 agreement of the int8 graph.

Speed and memory: SmolVLM-256M-Instruct's architecture with random weights and a random head (objective=head, the
default), exported by export_model.py with --quantize=int8; each runtime classifies the same random-pixel 1024x768
images one at a time, as the scripts do (preparing the prompt and pixels included), at one tile (512 px, no
splitting) and with splitting (1024 px: 2x1 tiles and the global view), THREADS threads, each (runtime, setting) in
a fresh process: PyTorch fp32 and int8 (the scripts' --quantize=int8), ONNX Runtime fp32 and int8
(vlmcls.onnx_runtime), OpenVINO fp32 (reading model.onnx). The floor is one pass of the vision encoder and
connector (Idefics3's get_image_features) over the same pixels in PyTorch fp32; every time is also given as a
multiple of it. Each process times RUNS images one by one after WARMUP untimed ones, a number fixed before the
first (at least 5): run k is the k-th timed image in every runtime; medians and ranges over the runs, and the speed
target is met only when the slowest run meets it. (One process per runtime and setting, not one per run: the
256M model's loading would otherwise take most of the time on 2 shared cores.) Agreement: a tiny SmolVLM fine-tuned by fine_tune.py on elpv
(benchmarks/int8.py's), exported, its elpv test images predicted by PyTorch fp32, ONNX Runtime fp32 and int8.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export.py                          # ~40 min on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export.py --tiny=true --runs=1 --agreement=false  # smoke
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

from common import CLASSES, ROOT, build_model, check_runs, command, machine, make_images, memory_gb, model_name, \
    now, script_env, spread, verdict, write_report  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402
from vlmcls.saved import open_classifier  # noqa: E402

SETTINGS = {"one tile": (512, False), "splitting": (1024, True)}  # (image_longest_edge, image_splitting)
RUNTIMES = ["pytorch fp32", "pytorch int8", "onnxruntime fp32", "onnxruntime int8", "openvino fp32"]
IMAGE_SIZE = "1024x512"  # WIDTHxHEIGHT of the random-pixel images
WARMUP = 1  # untimed images before timing, in each process
RUNS = 5  # timed images, one run each, in each process, fixed before the first (at least 5; fewer only with TINY)
THREADS = 2  # CPU threads of each runtime
TINY = False  # the tests' tiny SmolVLM instead of the full-size one: a quick check that the benchmark runs
AGREEMENT = True  # also the top-1 agreement on elpv of a tiny model fine-tuned there (False: speed only)
OUTPUT = ""  # where the table is also written; "": benchmarks/results-export.md (results-export-tiny.md with --tiny)
SEED = 0  # seed for the random weights and images
JOB = ""  # internal: one measurement as JSON, run by the benchmark in a fresh process


# ---------------------------------------------------------------- measuring, in the worker process

def clock(work):
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def speed_job(job):
    """Seconds per image (wall, CPU) of one runtime at one setting, one image at a time, preparing included;
    with PyTorch fp32 also the floor. Peak resident memory of the process."""
    edge, splitting = SETTINGS[job["setting"]]
    runtime, quantize = job["runtime"], "int8" if job["runtime"].endswith("int8") else "none"
    question = json.loads((Path(job["export"]) / "export.json").read_text())["question"]
    if runtime.startswith("pytorch"):
        import torch
        from vlmcls.runtime import load_predictor
        torch.set_num_threads(THREADS)
        base_gb = memory_gb("VmRSS")
        predictor = load_predictor(open_classifier(job["model"]), device="cpu", dtype=torch.float32, image_longest_edge=edge,
                                   image_splitting=splitting, quantize=quantize)
    elif runtime.startswith("onnxruntime"):
        from vlmcls.onnx_runtime import OnnxPredictor
        base_gb = memory_gb("VmRSS")
        predictor = OnnxPredictor(open_classifier(job["export"]), quantize=quantize, image_longest_edge=edge,
                                  image_splitting=splitting, threads=THREADS)
    else:
        import openvino
        from vlmcls.models import load_processor, set_resolution
        from vlmcls.onnx_runtime import ArrayEncoder
        from vlmcls.prompt import render_segments
        base_gb = memory_gb("VmRSS")
        processor = load_processor(job["export"])
        set_resolution(processor, edge, splitting)
        segments = render_segments(processor, [(question, None)])
        encoder = ArrayEncoder(processor, 10**9)
        compiled = openvino.Core().compile_model(str(Path(job["export"]) / "model.onnx"), "CPU",
                                                 {"INFERENCE_NUM_THREADS": THREADS})

    def classify(image):
        if runtime.startswith("openvino"):
            input_ids, pixel_values = encoder.example(image, segments)
            compiled({"input_ids": input_ids, "pixel_values": pixel_values})
        else:
            list(predictor.predict_batches([[image]], question, CLASSES, "score", 10**9))
    images = make_images(IMAGE_SIZE, WARMUP + RUNS, SEED)
    for image in images[:WARMUP]:
        classify(image)
    runs = [dict(zip(("s", "cpu"), clock(lambda: classify(image)))) for image in images[WARMUP:]]
    if runtime == "pytorch fp32":
        for run, floor in zip(runs, floor_of(predictor, images)):
            run.update(floor)
    return {"runs": runs, "peak_gb": memory_gb("VmHWM"), "base_gb": base_gb}


def floor_of(predictor, images):
    """Each timed image's seconds of one vision encoder and connector pass over its pixels, in PyTorch fp32."""
    import torch
    encoder = predictor.encoder(10**9)
    pixels = [encoder.encode_image(image)[1]["pixel_values"] for image in images]
    model = predictor.model
    with torch.inference_mode():
        model.get_image_features(pixel_values=pixels[0])
        times = [clock(lambda: model.get_image_features(pixel_values=p)) for p in pixels[WARMUP:]]
    return [{"floor_s": wall, "floor_cpu": cpu, "tiles": int(pixels[0].shape[1])} for wall, cpu in times]


def agreement_job(job):
    """The elpv test images classified by the fine-tuned tiny model in PyTorch fp32, and by its export in ONNX
    Runtime fp32 and int8."""
    import torch
    from vlmcls.images import read_dataset_json
    from vlmcls.prediction import evaluate_with
    from vlmcls.runtime import load_predictor
    data = read_dataset_json(job["test_json"])
    paths = [s["image"] for s in data["samples"]]
    labels = [s["label"] for s in data["samples"]]
    runs = {}
    for name, folder, quantize in [("pytorch fp32", job["model"], "none"), ("onnxruntime fp32", job["export"], "none"),
                                   ("onnxruntime int8", job["export"], "int8")]:
        predictor = load_predictor(folder, device="cpu", dtype=torch.float32, image_longest_edge=None,
                                   image_splitting=None, quantize=quantize)
        runs[name] = evaluate_with(predictor, paths, data["question"], data["classes"], "score", 8,
                                   data["max_image_pixels"], desc=name)
    reference = runs["pytorch fp32"]
    return {"images": len(paths), "classes": len(data["classes"]),
            **{name: {"identical": sum(a["pred"] == b["pred"] for a, b in zip(reference, results)),
                      "max_prob_diff": max(abs(a["probs"][c] - b["probs"][c]) for a, b in zip(reference, results)
                                           for c in data["classes"]),
                      "accuracy": sum(r["pred"] == label for r, label in zip(results, labels)) / len(paths)}
               for name, results in runs.items()}}


# ---------------------------------------------------------------- orchestrating, in the main process

def worker(job, work, label):
    """One measurement in a fresh process, so that its peak memory is its own."""
    result = Path(work) / f"{label.replace(' ', '-')}.json"
    print(f"\n--- {label} ---", flush=True)
    subprocess.run([sys.executable, __file__, *sys.argv[1:], f"--job={json.dumps({**job, 'result': str(result)})}"],
                   env=script_env(), check=True)
    return json.loads(result.read_text())


def head_model(folder):
    """The random-weight model made a head model over CLASSES (random head), as fine_tune.py saves one."""
    import torch
    from safetensors.torch import save_file
    from vlmcls.prompt import classification_question
    hidden = json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"]
    torch.manual_seed(SEED)
    save_file({"weight": torch.randn(len(CLASSES), hidden) * 0.05, "bias": torch.zeros(len(CLASSES))},
              str(folder / "classifier.safetensors"))
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES, "question": classification_question(CLASSES),
                                                     "objective": "head", "max_image_pixels": 10**9}))


def export(model, out, work, label):
    """export_model.py as a user runs it; returns its wall seconds and peak memory (GNU time is not assumed)."""
    import resource
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "export_model.py"), f"--model_path={model}", f"--output_dir={out}",
                    "--quantize=int8"], cwd=work, env=script_env(), check=True)
    return {"s": time.perf_counter() - start,
            "peak_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9, "label": label}


def elpv_models(work):
    """benchmarks/int8.py's tiny SmolVLM fine-tuned on elpv, and its export. Returns (test JSON, model, export)."""
    from int8 import elpv_test_json
    test_json, model = elpv_test_json(work)
    export(model, Path(work) / "tiny-elpv-onnx", work, "tiny elpv")
    return test_json, model, Path(work) / "tiny-elpv-onnx"


def report(results, exported, sizes, agreement, started, elapsed):
    runs = [{key: {**r["runs"][k], "peak_gb": r["peak_gb"]} for key, r in results.items()} for k in range(RUNS)]
    lines = ["| setting | runtime | s/image, wall (CPU) | x floor | PyTorch fp32 / this | peak RSS, GB |",
             "|---|---|---|---|---|---|"]
    checks = []
    for setting in SETTINGS:
        floors = [r[setting, "pytorch fp32"]["floor_s"] for r in runs]
        tiles = runs[0][setting, "pytorch fp32"]["tiles"]
        name = f"{setting} ({tiles} tile{'s' if tiles > 1 else ''})"
        lines.append(f"| {name} | floor: vision encoder pass | {spread(floors, '{:.2f}')} | 1 | | |")
        for runtime in RUNTIMES:
            seconds = [r[setting, runtime]["s"] for r in runs]
            cpu = [r[setting, runtime]["cpu"] for r in runs]
            over = [r[setting, runtime]["s"] / r[setting, "pytorch fp32"]["floor_s"] for r in runs]
            faster = [r[setting, "pytorch fp32"]["s"] / r[setting, runtime]["s"] for r in runs]
            faster_cpu = [r[setting, "pytorch fp32"]["cpu"] / r[setting, runtime]["cpu"] for r in runs]
            lines.append(f"| {setting} | {runtime} | {spread(seconds, '{:.2f}')} ({statistics.median(cpu):.2f}) | "
                         f"{spread(over)} | {spread(faster)}, CPU {statistics.median(faster_cpu):.2f}x | "
                         f"{runs[0][setting, runtime]['peak_gb']:.2f} |")
            if runtime == "onnxruntime int8":
                checks.append((verdict(faster, 2.0, at_most=False),
                               f"{setting}: ONNX Runtime int8 at least 2x faster per image than PyTorch fp32"))
    size_lines = [f"- {name}: {size / 1e6:.0f} MB" for name, size in sizes.items()]
    agree_lines = []
    if agreement:
        n = agreement["images"]
        agree_lines = ["| runtime (tiny elpv model) | identical top-1 with PyTorch fp32 | largest probability "
                       "difference | accuracy |", "|---|---|---|---|"]
        for name in ("pytorch fp32", "onnxruntime fp32", "onnxruntime int8"):
            a = agreement[name]
            agree_lines.append(f"| {name} | {a['identical'] / n:.1%} ({a['identical']}/{n}) | "
                               f"{a['max_prob_diff']:.2g} | {a['accuracy']:.3f} |")
        share = agreement["onnxruntime int8"]["identical"] / n
        checks.append(("met" if share >= 0.99 else "missed",
                       f"ONNX Runtime int8 keeps PyTorch fp32's top class on at least 99% of the elpv test images "
                       f"({share:.1%})"))
    else:
        agree_lines = ["Agreement: not measured in this run (--agreement=false)."]
    return f"""# The exported model (export_model.py) against PyTorch on the CPU

{command("export.py")}

- {machine(started, elapsed)}; {THREADS} threads in every runtime.
- Runs: {len(runs)} (RUNS, fixed before the first): each (setting, runtime) in a fresh process that classifies
  {WARMUP} untimed image, then {len(runs)} timed images one by one; run k is the k-th timed image everywhere.
  Cells: median (min-max) over the runs, wall-clock (CPU seconds of all threads, median); "x floor" and "PyTorch
  fp32 / this" are each run's own ratios (wall; CPU: the median of the CPU-time ratios, which other processes on
  the machine disturb less). The speed target is met only when the slowest run meets it.
- Model: {model_name(TINY)}, random weights and a random head over {len(CLASSES)} classes (objective=head),
  exported by export_model.py --quantize=int8 (model.onnx fp32, model.int8.onnx: onnxruntime's dynamic int8).
  PyTorch int8: the scripts' --quantize=int8 (torch's dynamic quantisation). OpenVINO reads model.onnx.
- Each image ({IMAGE_SIZE}, random pixels) classified alone as the scripts classify it, preparing its prompt and
  pixels included. One tile: 512 px without splitting; splitting: 1024 px, 2x1 tiles and the global view. The
  floor: one pass of the vision encoder and connector over the same pixels in PyTorch fp32 (no prompt, no
  language model).
- Peak RSS: the measuring process's VmHWM (its libraries included).
- Agreement: benchmarks/int8.py's tiny SmolVLM fine-tuned on elpv by fine_tune.py, exported the same way, on all
  its elpv test images. A tiny stand-in trained from scratch: its accuracy says nothing about the real model's.

{chr(10).join(lines)}

Files (export_model.py --quantize=int8 of the model above; export took {exported['s']:.0f} s, peak
{exported['peak_gb']:.1f} GB):
{chr(10).join(size_lines)}

{chr(10).join(agree_lines)}

Targets:
{chr(10).join(f"- {ok}: {text}" for ok, text in checks)}
"""


def main():
    if JOB:
        job = json.loads(JOB)
        result = (agreement_job if job["phase"] == "agreement" else speed_job)(job)
        Path(job["result"]).write_text(json.dumps(result))
        return
    check_runs(RUNS, TINY)
    started, start = now(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export-benchmark-") as work:
        model, out = Path(work) / "model", Path(work) / "model-onnx"
        build_model(model, seed=SEED, tiny=TINY)
        head_model(model)
        exported = export(model, out, work, "256M")
        sizes = {"PyTorch weights (model.safetensors)": (model / "model.safetensors").stat().st_size,
                 "model.onnx": (out / "model.onnx").stat().st_size,
                 "model.int8.onnx": (out / "model.int8.onnx").stat().st_size}
        results = {(setting, runtime): worker({"phase": "speed", "setting": setting, "runtime": runtime,
                                               "model": str(model), "export": str(out)}, work, f"{setting} {runtime}")
                   for setting in SETTINGS for runtime in RUNTIMES}
        agreement = None
        if AGREEMENT:
            test_json, tiny, tiny_export = elpv_models(work)
            agreement = worker({"phase": "agreement", "test_json": str(test_json), "model": str(tiny),
                                "export": str(tiny_export)}, work, "agreement")
        text = report(results, exported, sizes, agreement, started, time.perf_counter() - start)
    write_report(text, OUTPUT or ROOT / "benchmarks" / f"results-export{'-tiny' if TINY else ''}.md")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure(globals())
    run_main(main)
