"""Benchmark: fine_tune.py's training input path and vlm_benchmark_test_dataset.py end to end, before and now.

Both versions in one run on the same machine: "before" is the BASELINE commit's files (from git), "now" this
checkout. The training input path alone (no model): turning INPUT_IMAGES 800x600 JPEGs with four Q&A pairs each
into batches for EPOCHS epochs, as fine_tune.py's data loader does with each version's defaults, timed in a fresh
process (Q&A pairs per CPU-second, the workers' CPU included). Then vlm_benchmark_test_dataset.py end to end on
EVAL_IMAGES such JPEGs with two tiny models: the tests' (its vision encoder sees 1,024 patches a tile, not free)
and a near-free one (64-px patches, 4 image tokens a tile), so that the script around the model is what is
timed. The table goes to stdout and to OUTPUT. benchmarks/README.md says what the numbers do and do not say.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/input_path.py                                   # ~5 min
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/input_path.py --input_images=10 --eval_images=4  # smoke check

One measurement of the input path runs as `input_path.py --measure TREE TRAIN_JSON MODEL EPOCHS BATCH RESULT`, with
TREE's modules imported: this file imports none of the project's modules before it knows which checkout to use.
"""
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, command, make_images, now, ratio, script_env, write_report

INPUT_IMAGES = 100  # 800x600 JPEGs whose Q&A pairs the training input path turns into batches (0: skip)
EPOCHS = 3  # epochs of that input-path run
EVAL_IMAGES = 200  # 800x600 JPEGs that vlm_benchmark_test_dataset.py evaluates with each tiny model (0: skip)
BASELINE = "ea2cf45"  # the commit whose input path and evaluation script are the "before" of the comparisons
OUTPUT = ""  # where the table is also written; "": benchmarks/results-input-path.md
BATCH_SIZE = 4  # training rows per batch of the input path (fine_tune.py's PER_DEVICE_TRAIN_BATCH_SIZE)
SEED = 0  # seed for the images


# ---------------------------------------------------------------- one input-path measurement, in a fresh process

def cpu_seconds(*who):
    """CPU seconds of this process and its finished child processes (the input path's workers), or of `who`."""
    return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
               for w in who or (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def loader_before(data, processor, end_ids, batch_size):
    """Each Q&A pair a row, decoded and processed every time it is drawn, in the main process (NUM_WORKERS 0)."""
    from torch.utils.data import DataLoader
    from vlmcls.training import AnswerOnlyCollator, make_dataset
    dataset = make_dataset(data, data["max_image_pixels"])
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      collate_fn=AnswerOnlyCollator(processor, end_ids)), len(dataset)


def loader_now(data, processor, end_ids, batch_size):
    """Each image encoded once for all its Q&A pairs, by NUM_WORKERS processes, then reused every epoch."""
    from torch.utils.data import DataLoader
    from vlmcls.inputs import InputEncoder, auto_workers
    from vlmcls.objectives.answer import answer_only_collator, chat_dataset
    from vlmcls.prompt import chat_rows as rows
    workers = auto_workers(-1)
    encoder = InputEncoder(processor, data["max_image_pixels"])
    train_rows = rows(data)
    encoder.prepare([image for image, _ in train_rows], workers)
    dataset = chat_dataset(train_rows, encoder, processor, end_ids)
    # As fine_tune.py: batches of images encoded in memory need no loader workers.
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=answer_only_collator(processor)), \
        sum(len(pairs) for _, pairs in train_rows)


def measure(tree, train_json, model, epochs, batch_size, result_file):
    """The training input path of the checkout in `tree` over `epochs` epochs: Q&A pairs, wall and CPU seconds."""
    sys.path.insert(0, tree)
    import torch
    torch.set_num_threads(1)  # per core; also, on a shared machine multi-threaded copies stall
    from vlmcls.images import read_dataset_json
    from vlmcls.models import end_token_ids, load_model, load_processor, set_resolution
    data = read_dataset_json(train_json)
    processor = load_processor(model)
    set_resolution(processor, 512, False)  # fine_tune.py's defaults
    end_ids = end_token_ids(processor, load_model(model, None))
    import datasets  # noqa: F401  (imported before timing: loading a library is no part of the input path)
    try:
        import vlmcls.inputs  # noqa: F401
        make = loader_now
    except ImportError:
        make = loader_before
    wall, cpu = time.perf_counter(), cpu_seconds()
    loader, pairs_per_epoch = make(data, processor, end_ids, int(batch_size))
    for _ in range(int(epochs)):
        for _ in loader:
            pass
    result = {"pairs": pairs_per_epoch * int(epochs), "wall_s": time.perf_counter() - wall,
              "cpu_s": cpu_seconds() - cpu}
    with open(result_file, "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------- orchestrating, in the main process

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
    for i, image in enumerate(make_images("800x600", train_count + test_count, SEED)):
        (folder / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        image.save(folder / "ab"[i % 2] / f"{i}.jpg", quality=90)
    train, test = Path(work) / "train.json", Path(work) / "test.json"
    subprocess.run([sys.executable, str(ROOT / "generate_train_json.py"), f"--dataset_dir={folder}",
                    f"--train_json={train}", f"--test_json={test}",
                    f"--train_ratio={train_count / (train_count + test_count)}"], check=True,
                   capture_output=True)
    return train, test


def comparisons(work):
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
    results = {}
    for name, tree in trees.items():
        if INPUT_IMAGES:
            print(f"\n--- training input path: {name} ---", flush=True)
            out = Path(work) / f"input-{name}.json"
            subprocess.run([sys.executable, __file__, "--measure", str(tree), str(train), str(model), str(EPOCHS),
                            str(BATCH_SIZE), str(out)], env=script_env(), check=True)
            results["input", name] = json.loads(out.read_text())
    for label, eval_model in models.items() if EVAL_IMAGES else ():
        for name, tree in trees.items():
            print(f"\n--- evaluation script, {label} model: {name} ---", flush=True)
            wall, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
            # One torch thread: on a shared machine two threads stall on each other for every small op.
            subprocess.run([sys.executable, str(Path(tree) / "vlm_benchmark_test_dataset.py"),
                            f"--model_path={eval_model}", f"--test_json={test}",
                            f"--report_dir={Path(work) / ('report-' + name)}"],
                           env=script_env(OMP_NUM_THREADS="1"), check=True, cwd=work)
            images = len(json.loads(test.read_text())["samples"])
            results["eval", label, name] = {"wall_s": (time.perf_counter() - wall) / images, "images": images,
                                            "cpu_s": (cpu_seconds(resource.RUSAGE_CHILDREN) - cpu) / images}
    return results


def table(results):
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
    started = now()
    with tempfile.TemporaryDirectory(prefix="input-path-benchmark-") as work:
        results = comparisons(work)
    write_report(f"""# Input path and evaluation: before and now

{command("input_path.py")}

## Input path and evaluation end to end, before and now (run {started})

{table(results)}
""", OUTPUT or ROOT / "benchmarks" / "results-input-path.md")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(*sys.argv[2:8])
    else:
        sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
        from vlmcls.cli import configure, run_main
        configure(globals())
        run_main(main)
