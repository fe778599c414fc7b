"""Benchmark: the accuracy protocol's rows at a budget beyond its own, each against the original (development only).

Trains ROWS at SECONDS on the development seeds, each row at the rate the development run chose for it at the longer
budget (accuracy-choices.json), and scores them on the development pool's validation folds: each row's mean
validation macro-F1 and its paired difference from the original (95% bootstrap interval over splits and images).
It reads no confirmation seed and makes no claim; a protocol's budgets and rates stay its development run's. Runs of
the same code and settings that accuracy.py's --work_dir already holds are reused. Stand-ins trained from scratch:
the numbers compare recipes, they say nothing absolute.

    HF_HUB_OFFLINE=1 python benchmarks/accuracy_budget.py --work_dir=WORK_DIR --jobs=2
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
from paired import mean_spread, paired_interval, verdict  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402

SECONDS = 768  # training seconds of every run
CELLS = {"smolvlm": ["digits"], "llava": ["digits"]}  # stand-in -> tasks
ROWS = ["original", "head"]  # recipes of accuracy.ROWS; the first is the one the others are compared with
SPLITS = [0, 1, 2]  # development split seeds
WORK_DIR = ""  # accuracy.py's development work folder (its finished runs are reused); "": a temporary folder
JOBS = 2  # runs at a time
BOOTSTRAP = 5000  # resamples of each paired interval


def main():
    if SECONDS == accuracy.SHORT_SECONDS or any(s >= 100 for s in SPLITS):
        sys.exit(f"error: --seconds must differ from accuracy.py's short budget ({accuracy.SHORT_SECONDS} s) and "
                 f"--splits {SPLITS} must be development seeds (below 100)")
    accuracy.JOBS = JOBS
    rates = json.loads(Path(accuracy.CHOICES).read_text())["learning_rates"]["long"]
    units = {(a, t, r): [accuracy.Unit(a, SECONDS, t, r, rates[a][t][r]["chosen"], s) for s in SPLITS]
             for a, tasks in CELLS.items() for t in tasks for r in ROWS}
    with tempfile.TemporaryDirectory(prefix="accuracy-budget-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        done = accuracy.Runner(work)([u for us in units.values() for u in us])
    print(f"| stand-in | task | row | rate | validation macro-F1 at {SECONDS} s | difference from {ROWS[0]} [95% CI] |")
    print("|---" * 6 + "|")
    for (a, t, r), us in units.items():
        runs, base = [done[u] for u in us], [done[u] for u in units[a, t, ROWS[0]]]
        diff = verdict(paired_interval(runs, base, "macro_f1", BOOTSTRAP)) if r != ROWS[0] else "-"
        print(f"| {a} | {t} | {r} | {us[0].rate:g} | {mean_spread([x['macro_f1'] for x in runs])} | {diff} |")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
