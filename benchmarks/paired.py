"""Paired comparisons of the accuracy benchmark: macro-F1 of integer class arrays (vlmcls.report's), the mean
difference of two rows over splits with its bootstrap interval and p-value, Holm's adjustment of a family of
p-values, and how often A/A intervals exclude 0."""
import statistics
import sys
from typing import NamedTuple


class Interval(NamedTuple):
    """A paired difference: its mean over the splits, the 95% bootstrap interval, and the bootstrap's two-sided
    p-value for "no difference" (twice the smaller tail beyond 0, counted as (k + 1) / (resamples + 1))."""
    observed: float
    low: float
    high: float
    p: float


def macro_f1(true, pred, n):
    """Macro-F1 of integer class arrays (a prediction of n, no class, counts as wrong), by vlmcls.report's one
    definition from the per-class counts, counted here vectorised for the bootstrap."""
    import numpy as np
    from vlmcls.report import macro_f1 as from_counts
    return from_counts(np.bincount(true[true == pred], minlength=n)[:n], np.bincount(pred[pred < n], minlength=n)[:n],
                       np.bincount(true, minlength=n)[:n])


def paired_interval(runs, baseline, metric, resamples, seed=0):
    """Mean difference (row - baseline) of `metric` over the splits, and its 95% bootstrap interval: each resample
    draws splits with replacement, then the held-out images of each drawn split with replacement, and scores both
    rows on the same drawn images."""
    import numpy as np
    units = []
    for run, base in zip(runs, baseline, strict=True):
        if run["paths"] != base["paths"]:
            sys.exit("error: paired runs hold out different images")
        index = {c: i for i, c in enumerate(run["classes"])}
        units.append(tuple(np.array([index.get(c, len(index)) for c in values])
                           for values in (run["true"], run["pred"], base["pred"])))
    n = len(runs[0]["classes"])
    for (true, row, base), run, base_run in zip(units, runs, baseline):  # the scoring agrees with the reports'
        if max(abs(macro_f1(true, row, n) - run["macro_f1"]), abs(macro_f1(true, base, n) - base_run["macro_f1"])) > 1e-9:
            sys.exit("error: the benchmark's macro-F1 differs from the one its prediction report recorded")

    def score(true, pred):
        return float(np.mean(true == pred)) if metric == "accuracy" else macro_f1(true, pred, n)
    return bootstrap(units, lambda true, row, base: score(true, row) - score(true, base), resamples, seed)


def bootstrap(units, difference, resamples, seed=0):
    """The mean over splits of difference(*unit) (row - baseline), each unit a split's arrays over the same
    images (first axis), and its 95% bootstrap interval: each resample draws splits with replacement, then the
    images of each drawn split with replacement, and scores both rows on the same drawn images."""
    import numpy as np
    rng = np.random.default_rng(seed)
    observed = statistics.mean(difference(*u) for u in units)
    draws = []
    for _ in range(resamples):
        chosen = [units[i] for i in rng.integers(len(units), size=len(units))]
        picks = [(u, rng.integers(len(u[0]), size=len(u[0]))) for u in chosen]
        draws.append(statistics.mean(difference(*(a[p] for a in u)) for u, p in picks))
    low, high = np.percentile(draws, [2.5, 97.5])
    tail = min(sum(d <= 0 for d in draws), sum(d >= 0 for d in draws))
    return Interval(observed, float(low), float(high), min(1.0, 2 * (tail + 1) / (resamples + 1)))


def holm(pvalues):
    """Holm's step-down adjustment of a family of p-values ({name: p}): the adjusted p-values, each compared with
    the level as it stands (at most the family-wise error rate of that level over the whole family)."""
    adjusted, running, m = {}, 0.0, len(pvalues)
    for rank, (name, p) in enumerate(sorted(pvalues.items(), key=lambda item: item[1])):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[name] = running
    return adjusted


def excludes_zero(interval):
    return interval.low > 0 or interval.high < 0


def better(interval, adjusted_p=None, level=0.05):
    """Whether a paired difference shows the row better: its interval above 0, or with a Holm-adjusted p-value, a
    positive difference whose adjusted p is below the level."""
    return interval.low > 0 if adjusted_p is None else interval.observed > 0 and adjusted_p < level


def verdict(interval, adjusted_p=None, level=0.05):
    """The difference, its 95% interval and what it shows; with a Holm-adjusted p-value, "better" only where that
    is below the level (the adjusted p beside it)."""
    word = "**better**" if better(interval, adjusted_p, level) else "**worse**" if interval.high < 0 \
        else "no difference shown"
    holm_p = "" if adjusted_p is None else f" (Holm p {adjusted_p:.3f})"
    return f"{interval.observed:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]{holm_p} {word}"


def aa_rate(intervals, level=0.05):
    """How often A/A intervals (the same recipe from other seeds) exclude 0, with the Clopper-Pearson 95% interval
    of that rate: (excluding, draws, low, high)."""
    from scipy.stats import binomtest
    draws = len(intervals)
    excluding = sum(excludes_zero(i) for i in intervals)
    if not draws:
        return 0, 0, 0.0, 1.0
    low, high = binomtest(excluding, draws, level).proportion_ci(0.95, method="exact")
    return excluding, draws, float(low), float(high)


def mean_spread(values, digits=3):
    """Mean ± sample standard deviation (± 0 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"
