"""Benchmark: has the original recipe levelled off at the accuracy protocol's longer budget? (development only)

accuracy.py fixes its longer budget on development by a ladder written before the run (BUDGET_LADDER, at most
96 s). This script trains the original recipe (BASELINE) at that budget and at longer ones, on the development
pool's seeds, at each cell's short-budget rate from accuracy-choices.json, and prints each cell's mean validation
macro-F1: the evidence for or against "levelled off" beyond the ladder. It reads no confirmation seed. Stand-ins
trained from scratch: the numbers compare budgets, nothing absolute.

    HF_HUB_OFFLINE=1 python benchmarks/accuracy_ladder.py --work_dir=WORK_DIR --jobs=2
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402

SECONDS = [96, 192]  # training budgets to compare (the first: the protocol's longer budget)
WORK_DIR = ""  # accuracy.py's development work folder (runs of the same code and settings are reused); "": temporary
JOBS = 2  # runs at a time


def main():
    accuracy.JOBS = JOBS
    choices = json.loads(Path(accuracy.CHOICES).read_text())["learning_rates"]["short"]
    rates = {(a, t): choices[a][t][accuracy.BASELINE]["chosen"] for a, b, t in accuracy.cells() if b == "short"}
    with tempfile.TemporaryDirectory(prefix="accuracy-ladder-") as temporary:
        work = Path(WORK_DIR or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        runner = accuracy.Runner(work)
        scores = {s: accuracy.original_at(runner, rates, s) for s in SECONDS}
    print("| stand-in | task | rate | " + " | ".join(f"{s} s" for s in SECONDS) + " |")
    print("|---|---|---|" + "---|" * len(SECONDS))
    for (a, t), rate in rates.items():
        print(f"| {a} | {t} | {rate:g} | " + " | ".join(f"{scores[s][f'{a} {t}']:.3f}" for s in SECONDS) + " |")

if __name__ == "__main__":
    configure(globals())
    run_main(main)
