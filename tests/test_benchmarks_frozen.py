"""benchmarks/frozen.py's verdict: runs fixed in advance meet a target only when the slowest of them does (issue #34),
and too few runs for a claim are refused."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import frozen  # noqa: E402


def runs_at(ratios, row="lora_cached"):
    """Runs whose `row` took `ratios` times its run's floor (wall and CPU alike), floors of different lengths."""
    runs = []
    for i, ratio in enumerate(ratios):
        floor = 100.0 + 10 * i
        runs.append({"floor": {"images": 4, "floor_s": floor, "floor_cpu": floor},
                     "rows": {row: {"total_s": ratio * floor, "total_cpu": ratio * floor,
                                    "train_runtime": ratio * floor - 5, "steps": 3}}})
    return runs


def cells(table, row):
    return next(line for line in table.splitlines() if line.startswith(f"| {row} |")).split(" | ")


def test_one_slow_run_misses_the_target_whatever_the_median():
    row = cells(frozen.table(runs_at([2.4, 2.4, 2.4, 2.4, 2.6])), "lora_cached")
    assert row[-1] == "missed (slowest 2.60x; 1 of 5 runs over) |"
    assert "2.40x (2.40x-2.60x)" in row  # the median and range, wall


def test_the_target_is_met_when_every_run_meets_it():
    row = cells(frozen.table(runs_at([2.44, 2.5, 2.3, 2.41, 2.2])), "lora_cached")
    assert row[-1] == "met (slowest 2.50x) |"
    assert "2.41x (2.20x-2.50x)" in row


def test_every_run_is_recorded():
    text = frozen.runs_table(runs_at([2.52, 2.51, 2.45]))
    assert [line.split(" | ")[-1] for line in text.splitlines()[2:]] == ["2.52x (2.52x) |", "2.51x (2.51x) |",
                                                                        "2.45x (2.45x) |"]


@pytest.mark.parametrize("runs, tiny, refused", [(4, False, True), (5, False, False), (2, True, False),
                                                 (0, True, True)])
def test_fewer_than_five_runs_only_in_a_smoke_check(runs, tiny, refused):
    if refused:
        with pytest.raises(SystemExit, match="at least 5 runs"):
            frozen.check_runs(runs, tiny)
    else:
        frozen.check_runs(runs, tiny)
