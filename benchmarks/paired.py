"""Paired comparisons of the accuracy benchmark: macro-F1 of integer class arrays (vlmcls.report's), and the mean
difference of two rows over splits with its bootstrap interval."""
import statistics
import sys


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

    def difference(picks):
        return statistics.mean(score(true[p], row[p]) - score(true[p], base[p])
                               for (true, row, base), p in picks)
    rng = np.random.default_rng(seed)
    observed = difference([(u, slice(None)) for u in units])
    draws = []
    for _ in range(resamples):
        chosen = [units[i] for i in rng.integers(len(units), size=len(units))]
        draws.append(difference([(u, rng.integers(len(u[0]), size=len(u[0]))) for u in chosen]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return observed, float(low), float(high)


def excludes_zero(interval):
    _, low, high = interval
    return low > 0 or high < 0


def verdict(interval):
    observed, low, high = interval
    word = "**better**" if low > 0 else "**worse**" if high < 0 else "no difference shown"
    return f"{observed:+.3f} [{low:+.3f}, {high:+.3f}] {word}"


def mean_spread(values, digits=3):
    """Mean ± sample standard deviation (± 0 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"
