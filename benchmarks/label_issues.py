"""Benchmark: how many planted flipped labels fine_tune.py's LABEL_ISSUE_FOLDS finds among elpv's training images.

For every development split and noise level, NOISE of the split's training images get the other class (seeded),
and fine_tune.py --label_issue_folds=FOLDS lists the suspected label errors (its training is cut to one step: only
label_issues.csv is read). Recall is the share of the flipped images listed, precision the share of the listed
images that were flipped. Two backbones give the states the k-fold's linear head is fitted on:

- "stand-in": a tiny SmolVLM (Idefics3) trained from scratch with fine_tune.py (objective head) on the split's
  scored images with their own labels, images the checked ones never include: it stands in for the pretrained model,
  which learnt elsewhere and never saw the labels being checked. No machine here can load the pretrained model, so
  the numbers compare settings and say nothing absolute.
- "untrained": the same tiny model with its random initial weights, the floor: what the k-fold finds from features
  that learnt nothing.

elpv's own labels are experts' judgements and hold errors of their own: a listed image that was not flipped is not
necessarily a false alarm.

    HF_HUB_OFFLINE=1 python benchmarks/label_issues.py                    # development splits 0-2, ~10 min
    HF_HUB_OFFLINE=1 python benchmarks/label_issues.py --splits='[0]' --noise='[0.1]' --pretrain_seconds=5
"""
import csv
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

from common import ROOT, command, git, write_report  # noqa: E402
from tasks import build_model, prepare_split, run  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402
from vlmcls.files import write_json  # noqa: E402

TASK = "elpv2"  # tasks.TASK_DATA's elpv with two classes (functional, defective)
SPLITS = [0, 1, 2]  # development split seeds only (accuracy.py's DEVELOPMENT_SPLITS); never confirmation seeds
NOISE = [0.05, 0.1]  # shares of the training images given the other class
FOLDS = 5  # fine_tune.py's --label_issue_folds
BACKBONES = ["stand-in", "untrained"]  # where the states come from (see above)
PRETRAIN_SECONDS = 60  # the stand-in's training time on the split's scored images
LEARNING_RATE = 5e-4  # the stand-in's peak learning rate (accuracy.py's for elpv)
BATCH = 16  # the stand-in's training images per step
IMAGE_SIZE = 128  # pixels: the tiny model's tile, as accuracy.py
PATCH_SIZE = 16
SCALE_FACTOR = 2
VISION = [64, 2]  # the tiny vision encoder's hidden size and layers, as accuracy.py
TEXT = [64, 2]  # the tiny language model's hidden size and layers
JOBS = 2  # runs at a time
THREADS = 1  # torch threads per script
WORK_DIR = ""  # data, models and runs; "": a temporary folder, removed at the end
OUTPUT = ""  # where the table is also written; "": benchmarks/results-label-issues.md


def flip_labels(train_json, out, share, seed):
    """The training JSON with `share` of its images given another class (their Q&A pairs: the classification
    question with that class). Returns {flipped image's resolved path: its true class}, and the image count."""
    data = json.loads(Path(train_json).read_text())
    rng = random.Random(seed)
    flipped = {i: data["samples"][i]["label"]
               for i in rng.sample(range(len(data["samples"])), round(share * len(data["samples"])))}
    for i in flipped:
        sample = data["samples"][i]
        sample["label"] = rng.choice([c for c in data["classes"] if c != sample["label"]])
        sample["qa"] = [{"question": data["question"], "answer": sample["label"]}]
    for sample in data["samples"]:
        sample["image"] = str((Path(train_json).parent / sample["image"]).resolve())
    write_json(out, data)
    return {data["samples"][i]["image"]: true for i, true in flipped.items()}, len(data["samples"])


def pretrain(model, files, split, work):
    """The stand-in backbone: the tiny model trained from scratch on the split's scored images."""
    out = work / f"stand-in-{PRETRAIN_SECONDS}s-split{split}"
    if not (out / "train_log_history.json").is_file():
        run("fine_tune.py", f"--model_path={model}", f"--output_dir={out}", "--resume=overwrite",
            f"--train_json={files['score']}", "--val_json=", "--test_json=", "--max_steps=1000000000",
            f"--max_train_seconds={PRETRAIN_SECONDS}", f"--per_device_train_batch_size={BATCH}",
            "--gradient_accumulation_steps=1", f"--learning_rate={LEARNING_RATE}", "--warmup_steps=25",
            "--logging_steps=50", "--save_steps=1000000000", f"--image_longest_edge={IMAGE_SIZE}",
            "--gradient_checkpointing=false", f"--seed={split}", cwd=work, log=work / f"{out.name}.log",
            threads=THREADS)
    return out


def check_labels(backbone, model, files, split, share, work):
    """One run: flipped labels planted, fine_tune.py's k-fold, the listed images scored against the planted ones."""
    name = f"{backbone}-split{split}-noise{share}"
    noisy = work / f"{name}.json"
    flipped, total = flip_labels(files["train"], noisy, share, seed=1000 * split + round(100 * share))
    out = work / name
    seconds = run("fine_tune.py", f"--model_path={model}", f"--output_dir={out}",
                  "--resume=overwrite", f"--train_json={noisy}", "--val_json=", "--test_json=", "--max_steps=1",
                  f"--label_issue_folds={FOLDS}", f"--image_longest_edge={IMAGE_SIZE}",
                  "--per_device_eval_batch_size=32", "--gradient_checkpointing=false", f"--seed={split}", cwd=work,
                  log=work / f"{name}.log", threads=THREADS)
    with open(out / "label_issues.csv", newline="") as f:
        ranked = [str(Path(r["path"]).resolve()) for r in csv.DictReader(f)]  # worst first
    listed = set(ranked)
    hits = len(listed & set(flipped))
    by_class = {c: [p for p, true in flipped.items() if true == c] for c in sorted(set(flipped.values()))}
    result = {"backbone": backbone, "split": split, "noise": share, "images": total, "flipped": len(flipped),
              "listed": len(listed), "recall": hits / len(flipped), "precision": hits / len(listed) if listed else 0.0,
              "top_precision": len(set(ranked[:len(flipped)]) & set(flipped)) / len(flipped),
              "recall_by_class": {c: len(listed & set(paths)) / len(paths) for c, paths in by_class.items()},
              "seconds": seconds}
    print(f"{backbone} split {split} noise {share}: {hits} of {len(flipped)} flipped found, {len(listed)} listed",
          flush=True)
    return result


def spread(values, digits=2):
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def by_class(runs):
    """The mean recall of the flipped images of each true class, over the runs."""
    names = sorted({c for r in runs for c in r["recall_by_class"]})
    return ", ".join(f"{c} {statistics.mean(r['recall_by_class'][c] for r in runs if c in r['recall_by_class']):.2f}"
                     for c in names)


def report(results, started, elapsed):
    changed = git("status", "--porcelain", "--untracked-files=no")
    lines = ["| backbone | noise | images | flipped | listed | recall | precision | precision of the first n | "
             "recall by true class |", "|---" * 9 + "|"]
    for backbone in BACKBONES:
        for share in NOISE:
            runs = [r for r in results if r["backbone"] == backbone and r["noise"] == share]
            lines.append(f"| {backbone} | {share:.0%} | {statistics.mean(r['images'] for r in runs):.0f} | "
                         f"{statistics.mean(r['flipped'] for r in runs):.0f} | "
                         f"{spread([r['listed'] for r in runs], 0)} | {spread([r['recall'] for r in runs])} | "
                         f"{spread([r['precision'] for r in runs])} | {spread([r['top_precision'] for r in runs])} | "
                         f"{by_class(runs)} |")
    per_run = "\n".join(f"| {r['backbone']} | {r['split']} | {r['noise']:.0%} | {r['flipped']} | {r['listed']} | "
                        f"{r['recall']:.2f} | {r['precision']:.2f} | {r['top_precision']:.2f} | {r['seconds']:.0f} |"
                        for r in results)
    return f"""# Suspected label errors: planted flipped labels found by fine_tune.py's k-fold ({TASK})

{command("label_issues.py")}

- Commit {git("rev-parse", "--short", "HEAD")}{" with uncommitted changes" if changed else ""}, development split
  seeds {SPLITS} (never a confirmation seed); started {started}, {elapsed / 60:.1f} min, on {platform.machine()}
  ({os.cpu_count()} CPUs), {JOBS} runs at a time, {THREADS} thread(s) each.
- {TASK}'s training images of each split (tasks.py's development split), the noise share of them given the other
  class; `fine_tune.py --label_issue_folds={FOLDS}` lists the suspects (confident learning, cleanlab, on the
  out-of-sample probabilities of a {FOLDS}-fold linear head on the backbone's states). Recall: flipped images
  listed / flipped; precision: flipped images listed / listed; precision of the first n: of the n worst-ranked,
  n the number flipped; recall by true class: of the flipped images of each class before the flip. Mean ±
  standard deviation (range) over the splits.
- Stand-in backbone: a tiny SmolVLM trained from scratch, a stand-in for the pretrained model (vision
  {VISION[1]} layers x {VISION[0]}, language {TEXT[1]} layers x {TEXT[0]}, {IMAGE_SIZE} px), initialised from
  the split's seed and trained {PRETRAIN_SECONDS} s (objective head, learning rate {LEARNING_RATE}, batch {BATCH})
  on the split's scored images, never on the images checked. "untrained": the same model before that training.
  The numbers compare settings; they say nothing absolute about the pretrained model.
- elpv's own labels hold errors: a listed image that was not flipped is not necessarily a false alarm.

{chr(10).join(lines)}

Every run:

| backbone | split | noise | flipped | listed | recall | precision | precision of the first n | fine_tune.py s |
|---|---|---|---|---|---|---|---|---|
{per_run}
"""


def main():
    bad = [s for s in SPLITS if s >= 100]
    if bad:
        sys.exit(f"error: splits {bad}: development seeds only (confirmation seeds start at 300)")
    started, start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="label-issues-benchmark-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        files = {s: prepare_split(TASK, s, work, confirm=False, size=IMAGE_SIZE, threads=THREADS) for s in SPLITS}
        models = {s: build_model(work / f"model-{IMAGE_SIZE}px-v{VISION[0]}x{VISION[1]}-t{TEXT[0]}x{TEXT[1]}-seed{s}",
                                 s, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, scale_factor=SCALE_FACTOR,
                                 vision=VISION, text=TEXT) for s in SPLITS}
        with ThreadPoolExecutor(JOBS) as pool:
            backbones = {("untrained", s): models[s] for s in SPLITS}
            if "stand-in" in BACKBONES:
                trained = pool.map(lambda s: pretrain(models[s], files[s], s, work), SPLITS)
                backbones.update({("stand-in", s): path for s, path in zip(SPLITS, trained)})
            runs = [(b, s, n) for b in BACKBONES for s in SPLITS for n in NOISE]
            results = list(pool.map(lambda r: check_labels(r[0], backbones[r[0], r[1]], files[r[1]], r[1], r[2],
                                                           work), runs))
    text = report(results, started, time.perf_counter() - start)
    write_report(text, OUTPUT or ROOT / "benchmarks" / "results-label-issues.md")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
