"""benchmarks/accuracy.py's protocol: its scoring agrees with the reports, its intervals pair the runs, the A/A row
withholds claims, and a confirmation refuses whatever would let its splits choose (benchmarks/ledger.py)."""
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402
import ledger  # noqa: E402
import paired  # noqa: E402

from vlmcls.report import metrics  # noqa: E402

CLASSES = ["a", "b", "c"]


def run(true, pred):
    """A stored run as train_and_score records it."""
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
        assert paired.macro_f1(np.array([index[c] for c in true]), np.array([index[c] for c in pred]), 3) == \
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
    assert paired.paired_interval(same, base, "macro_f1", 200) == (0.0, 0.0, 0.0)
    observed, low, high = paired.paired_interval(better, base, "accuracy", 200)
    assert 0 < low < observed < high
    assert observed == pytest.approx(sum(b["accuracy"] - a["accuracy"] for a, b in zip(base, better)) / splits)
    unpaired = [{**better[0], "paths": better[0]["paths"][::-1]}] + better[1:]
    with pytest.raises(SystemExit, match="different images"):
        paired.paired_interval(unpaired, base, "accuracy", 10)


def test_an_aa_interval_that_excludes_zero_withholds_every_claim_on_its_task(monkeypatch):
    monkeypatch.setattr(accuracy, "TASKS", ["t1", "t2", "t3"])
    monkeypatch.setattr(accuracy, "ROWS", {"original": {}, "head": {"objective": "head"}})
    better, same = ((0.1, 0.05, 0.15), None), ((0.0, -0.01, 0.01), None)
    compared = {t: {"head": better, "aa": same} for t in ("t1", "t2", "t3")}
    assert accuracy.calibrated(compared) == ["t1", "t2", "t3"]
    assert "the rule's default: **head**" in accuracy.decision(compared)
    for t in ("t1", "t2"):  # the same recipe from other seeds "differs": these tasks' intervals are not honest
        compared[t]["aa"] = ((0.05, 0.01, 0.09), None)
    assert accuracy.calibrated(compared) == ["t3"]
    text = accuracy.decision(compared)
    assert "head: better on t3," in text and "the rule's default: **original**" in text


def refusal(**changes):
    given = {"splits": [300, 301], "development": [0, 1, 2], "overrides": [], "ledger": [], "changed": ""}
    return ledger.refuse_confirmation(**{**given, **changes})


def test_a_confirmation_refuses_uncommitted_code_overrides_development_and_spent_seeds():
    assert refusal() is None
    assert "differ from it" in refusal(changed=" M vlmcls/training.py")
    assert "--learning_rate, --train_seconds given" in refusal(overrides=["train_seconds", "learning_rate"])
    assert refusal(overrides=["work_dir", "confirm", "output"]) is None  # where files go changes no number
    assert "[2] are development seeds" in refusal(splits=[2, 300])
    assert "[42] are development seeds" in refusal(splits=[42])  # below 100, even if not listed
    spent = [{"commit": "abc1234", "splits": [300, 305]}, {"commit": "def5678", "splits": [400]}]
    message = refusal(ledger=spent)  # spent whatever the code: no "same code may run them again"
    assert "[300] are spent" in message and "CONFIRMATION_SPLITS = [500, 501]" in message


def test_the_fingerprint_binds_benchmarks_package_settings_and_versions(tmp_path, monkeypatch):
    for name in ("fine_tune.py", "vlmcls/models.py", "benchmarks/accuracy.py", "tests/tiny_models.py",
                 "requirements.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("words")
    monkeypatch.setattr(ledger, "ROOT", tmp_path)
    before = ledger.code_hash()
    for name in ("fine_tune.py", "vlmcls/models.py", "benchmarks/accuracy.py", "tests/tiny_models.py",
                 "requirements.txt"):
        (tmp_path / name).write_text("x = 2\n")
        assert ledger.code_hash() != before, name
        before = ledger.code_hash()
    (tmp_path / "docs" / "notes.md").write_text("other words")  # text that runs nowhere
    assert ledger.code_hash() == before
    bound = ledger.fingerprint({"train_seconds": 15})
    assert bound["versions"]["torch"] and bound["code"] == before
    assert ledger.fingerprint({"train_seconds": 16})["digest"] != bound["digest"]
    monkeypatch.setattr(ledger, "versions", lambda: {**bound["versions"], "torch": "0.0"})
    assert ledger.fingerprint({"train_seconds": 15})["digest"] != bound["digest"]


def test_a_confirmation_spends_its_seeds_before_its_first_run(tmp_path, monkeypatch):
    book = tmp_path / "confirmations.json"
    book.write_text(json.dumps([{"commit": "abc1234", "splits": [100, 101]}]))
    monkeypatch.setattr(accuracy, "LEDGER", book)
    monkeypatch.setattr(accuracy, "CONFIRM", True)
    monkeypatch.setattr(accuracy, "CONFIRMATION_SPLITS", [700, 701])
    monkeypatch.setattr(accuracy, "WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setattr(ledger, "uncommitted", lambda: "")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # a confirmation stopped halfway
    monkeypatch.setattr(accuracy, "build_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        accuracy.main()
    entries = json.loads(book.read_text())
    assert entries[-1]["splits"] == [700, 701] and entries[-1]["status"] == "started"
    assert entries[-1]["fingerprint"]["settings"]["train_seconds"] == accuracy.TRAIN_SECONDS
    with pytest.raises(SystemExit, match=r"\[700, 701\] are spent"):  # it cannot be run again on them
        accuracy.main()
    with pytest.raises(SystemExit, match="--train_seconds given"):
        accuracy.main(overrides=["train_seconds"])
