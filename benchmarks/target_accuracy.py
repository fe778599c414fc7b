"""Benchmark: how often TARGET_ACCURACY's threshold misses its target on new images, the old rule (the lowest
validation confidence whose kept validation images reach the target) against the new (vlmcls.calibration.certify:
a Clopper–Pearson bound at CONFIDENCE_LEVEL, thresholds tested in a fixed order), by simulation.

The model is perfectly calibrated: a two-class model whose top probability c is uniform on [0.5, 1] and right with
probability c. So on new images a threshold t keeps the share min(1, 2 (1 - t)) and is right (1 + max(t, 0.5)) / 2
of the time on those kept, exactly. Each run draws VALIDATION_IMAGES validation images, chooses a threshold by each
rule from the same draw, and counts as below target where that threshold's exact accuracy is below it. A run where
no threshold is certified keeps nothing (every prediction `uncertain`): never below target, and kept 0; the old
rule stopped with an error there (counted alike). The runs are fixed in advance (RUNS per cell, seeded).

    HF_HUB_OFFLINE=1 python benchmarks/target_accuracy.py   # about 12 s of CPU
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, command, git, write_report  # noqa: E402
from vlmcls.calibration import certify  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402

VALIDATION_IMAGES = [50, 100, 300, 1000]  # validation images per run
TARGETS = [0.8, 0.9, 0.95]  # target accuracies
CONFIDENCE_LEVEL = 0.9  # the new rule's level: the target should be missed in at most 1 - this of the runs
RUNS = 2000  # simulated runs per cell, fixed in advance
SEED = 0  # each cell's draws are seeded by (SEED, validation images, target)
OUTPUT = ""  # where the table is also written; "": benchmarks/results-target-accuracy.md


def draw(rng, runs, images):
    """(confidences, right): `runs` x `images` validation results of the calibrated model."""
    confidences = rng.uniform(0.5, 1.0, (runs, images))
    return confidences, rng.random((runs, images)) < confidences


def accuracy_on_new(thresholds):
    """The calibrated model's accuracy on the new images each threshold keeps (nan where it keeps none)."""
    return np.where(np.isfinite(thresholds), (1 + np.clip(thresholds, 0.5, 1.0)) / 2, np.nan)


def kept_on_new(thresholds):
    """The share of new images each threshold keeps (0 where it keeps none)."""
    return np.where(np.isfinite(thresholds), np.clip(2 * (1 - thresholds), 0.0, 1.0), 0.0)


def old_rule(confidences, right, target):
    """Per run, the rule before issue 41: the lowest validation confidence at which the validation images at least
    that confident are right `target` of the time or more (inf where none is)."""
    order = np.argsort(-confidences, axis=1)
    ranked = np.take_along_axis(confidences, order, axis=1)
    reached = np.cumsum(np.take_along_axis(right, order, axis=1), axis=1) / np.arange(1, confidences.shape[1] + 1) \
        >= target
    last = confidences.shape[1] - 1 - np.argmax(reached[:, ::-1], axis=1)  # the most images kept that reach it
    return np.where(reached.any(axis=1), ranked[np.arange(len(ranked)), last], np.inf)


def new_rule(confidences, right, target, level):
    """Per run, the threshold vlmcls.calibration.certify chooses (inf where none is certified)."""
    thresholds = [certify(list(zip(c, ok)), target, level)["threshold"] for c, ok in zip(confidences, right)]
    return np.array([np.inf if t is None else t for t in thresholds])


def simulate(images, target, level, runs, seed):
    """Both rules on the same `runs` draws of `images` validation images: per rule, the share of runs whose
    threshold is below `target` on new images and the mean share of new images kept; and the share of runs where
    the new rule certified no threshold."""
    confidences, right = draw(np.random.default_rng([seed, images, round(target * 1000)]), runs, images)
    outcome = {}
    for name, thresholds in (("old", old_rule(confidences, right, target)),
                             ("new", new_rule(confidences, right, target, level))):
        below = np.nan_to_num(accuracy_on_new(thresholds), nan=1.0) < target
        outcome[name] = {"below": below.mean(), "kept": kept_on_new(thresholds).mean()}
        if name == "new":
            outcome["none"] = np.isinf(thresholds).mean()
    return outcome


def table(results):
    lines = ["| validation images | target | runs below target: old | new | new images kept: old | new | ideal | "
             "no threshold certified (new) |", "|---" * 8 + "|"]
    for (images, target), r in results.items():
        ideal = min(1.0, 2 * (1 - (2 * target - 1)))  # the threshold whose accuracy on new images is the target
        lines.append(f"| {images} | {target} | {r['old']['below']:.1%} | {r['new']['below']:.1%} | "
                     f"{r['old']['kept']:.1%} | {r['new']['kept']:.1%} | {ideal:.0%} | {r['none']:.1%} |")
    return "\n".join(lines)


def main():
    start = time.perf_counter()
    results = {}
    for images in VALIDATION_IMAGES:
        for target in TARGETS:
            results[images, target] = simulate(images, target, CONFIDENCE_LEVEL, RUNS, SEED)
            print(f"{images} images, target {target}: {results[images, target]}", flush=True)
    allowed = 1 - CONFIDENCE_LEVEL
    text = f"""# TARGET_ACCURACY: how often the threshold misses its target on new images, old rule and new

{command("target_accuracy.py")}

- Commit {git("rev-parse", "--short", "HEAD")}; {RUNS} runs per cell (seeded by {SEED}, the validation images and
  the target), {time.perf_counter() - start:.0f} s. A simulation, no model: a perfectly calibrated two-class model,
  top probability uniform on [0.5, 1] and right with that probability, so every accuracy on new images is exact.
- old: the lowest validation confidence whose kept validation images reach the target (before issue 41). new:
  `vlmcls.calibration.certify` at confidence level {CONFIDENCE_LEVEL}, which should be below target in at most
  {allowed:.0%} of runs (binomial spread over {RUNS} runs: about ±{2 * (allowed * (1 - allowed) / RUNS) ** 0.5:.1%}).
- "new images kept": the mean share of new images the threshold keeps (the price); "ideal": the share the
  threshold whose accuracy on new images is exactly the target keeps. Where no threshold is certified, every
  prediction is `uncertain`: nothing kept, and no run below target.

{table(results)}
"""
    write_report(text, OUTPUT or ROOT / "benchmarks" / "results-target-accuracy.md")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
