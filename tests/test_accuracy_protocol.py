"""benchmarks/accuracy.py's protocol: its scoring agrees with the reports, its intervals pair the runs, and spent
confirmation splits are refused."""
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402

from vlmcls.report import metrics  # noqa: E402

CLASSES = ["a", "b", "c"]


def run(true, pred):
    """A stored run as train_and_test records it."""
    result = metrics(true, pred, CLASSES)
    return {"classes": CLASSES, "paths": [f"{i}.png" for i in range(len(true))], "true": true, "pred": pred,
            "accuracy": result["accuracy"], "macro_f1": result["macro_f1"]}


def test_the_bootstrap_scores_as_the_reports_do():
    import numpy as np
    rng = random.Random(0)
    for _ in range(20):
        true = [rng.choice(CLASSES[:2] if _ % 3 == 0 else CLASSES) for _ in range(30)]  # sometimes a class absent
        pred = [rng.choice(CLASSES) for _ in range(30)]
        index = {c: i for i, c in enumerate(CLASSES)}
        assert accuracy.macro_f1(np.array([index[c] for c in true]), np.array([index[c] for c in pred]), 3) == \
            pytest.approx(metrics(true, pred, CLASSES)["macro_f1"])


def test_paired_intervals_say_better_only_where_the_row_is():
    rng = random.Random(1)
    splits, base, same, better = 3, [], [], []
    for _ in range(splits):
        true = [rng.choice(CLASSES) for _ in range(60)]
        guess = [t if rng.random() < 0.5 else rng.choice(CLASSES) for t in true]
        base.append(run(true, guess))
        same.append(run(true, guess))
        better.append(run(true, [t if rng.random() < 0.9 else g for t, g in zip(true, guess)]))
    assert accuracy.paired_interval(same, base, "macro_f1", 200) == (0.0, 0.0, 0.0)
    observed, low, high = accuracy.paired_interval(better, base, "accuracy", 200)
    assert 0 < low < observed < high
    assert observed == pytest.approx(sum(b["accuracy"] - a["accuracy"] for a, b in zip(base, better)) / splits)
    unpaired = [{**better[0], "paths": better[0]["paths"][::-1]}] + better[1:]
    with pytest.raises(SystemExit, match="different images"):
        accuracy.paired_interval(unpaired, base, "accuracy", 10)


def test_confirmation_splits_seen_with_other_code_are_refused(tmp_path, monkeypatch):
    ledger = tmp_path / "confirmations.json"
    ledger.write_text(json.dumps([{"commit": "abc1234", "code": "old", "splits": [100, 101, 102]}]))
    monkeypatch.setattr(accuracy, "LEDGER", ledger)
    monkeypatch.setattr(accuracy, "git", lambda *args: "")  # a clean working tree
    monkeypatch.setattr(accuracy, "CONFIRMATION_SPLITS", [101, 102, 103])
    monkeypatch.setattr(accuracy, "code_hash", lambda: "new")
    spent = r"split seeds \[101, 102\] were confirmed at commit abc1234.*\[200, 201, 202\]"
    with pytest.raises(SystemExit, match=spent):
        accuracy.check_confirmation("def5678")
    monkeypatch.setattr(accuracy, "code_hash", lambda: "old")  # the same code may run them again
    assert accuracy.check_confirmation("abc1234")[0]["commit"] == "abc1234"
    monkeypatch.setattr(accuracy, "CONFIRMATION_SPLITS", [200, 201, 202])  # fresh seeds with the new code
    monkeypatch.setattr(accuracy, "code_hash", lambda: "new")
    accuracy.check_confirmation("def5678")
    monkeypatch.setattr(accuracy, "git", lambda *args: " M vlmcls/training.py")
    with pytest.raises(SystemExit, match="needs the code committed"):
        accuracy.check_confirmation("def5678")
