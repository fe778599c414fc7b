"""benchmarks/multilabel.py: its pictures (2 to 4 digits, labels the digits present, two pools, no digit used twice),
its mAP interval (the report's mAP, paired by image), the rates chosen on development, and a confirmation that
refuses whatever would let its splits choose (benchmarks/ledger.py's checks) and runs the choices on its own pool."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "benchmarks")]
import ledger  # noqa: E402
import multilabel  # noqa: E402
from tasks import DIGIT_NAMES, pool_of  # noqa: E402


def test_pictures_hold_two_to_four_digits_labelled_by_the_digits_present_each_in_its_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(multilabel, "IMAGES", 24)
    multilabel.write_pictures(tmp_path)
    listed = {}
    for pool in ("development", "confirmation"):
        with open(tmp_path / pool / "labels.csv", newline="") as f:
            for row in csv.DictReader(f):
                assert pool_of(Path(row["image"]).name) == pool
                listed[row["image"]] = row["labels"].split(";")
    assert len(listed) == 24
    for image, labels in listed.items():
        pool = pool_of(Path(image).name)
        pixels = np.array(Image.open(tmp_path / pool / image).convert("L"))
        cell = pixels.shape[0] // 2
        inked = sum((pixels[y:y + cell, x:x + cell] < 128).any() for y in (0, cell) for x in (0, cell))
        assert pixels.shape == (128, 128) and 2 <= inked <= 4 and 1 <= len(labels) <= inked
        assert labels == sorted(set(labels)) and set(labels) <= set(DIGIT_NAMES)


def runs_of(probabilities, truth):
    return [{"paths": [f"{i}.png" for i in range(len(t))], "truth": t.tolist(), "probs": p.tolist(),
             "mean_average_precision": float(np.mean([average_precision_score(t[:, j], p[:, j])
                                                      for j in range(t.shape[1])]))}
            for p, t in zip(probabilities, truth)]


def test_the_map_interval_is_paired_by_image_and_says_better_only_where_the_row_is(monkeypatch):
    monkeypatch.setattr(multilabel, "BOOTSTRAP", 200)
    rng = np.random.default_rng(0)
    truth = [rng.random((40, 3)) < 0.4 for _ in range(3)]
    noise = [rng.random((40, 3)) for _ in range(3)]
    base = runs_of(noise, truth)
    better = runs_of([0.5 * n + 0.5 * t for n, t in zip(noise, truth)], truth)
    assert multilabel.map_interval(base, base) == (0.0, 0.0, 0.0, 1.0)
    observed, low, high, _ = multilabel.map_interval(better, base)
    assert 0 < low < observed < high
    assert observed == pytest.approx(np.mean([b["mean_average_precision"] - a["mean_average_precision"]
                                              for a, b in zip(base, better)]))
    with pytest.raises(SystemExit, match="different images"):
        multilabel.map_interval([{**better[0], "paths": better[0]["paths"][::-1]}] + better[1:], base)
    with pytest.raises(SystemExit, match="report.json"):
        multilabel.map_interval([{**better[0], "mean_average_precision": 0.1}] + better[1:], base)


def test_each_row_s_rate_is_its_best_mean_map_over_the_splits_the_first_on_ties():
    runs = {("head", 3e-4): [0.5, 0.7], ("head", 1e-3): [0.8, 0.6], ("head", 3e-3): [0.9, 0.3],
            ("answer", 3e-4): [0.4, 0.4], ("answer", 1e-3): [0.2, 0.6], ("answer", 3e-3): [0.1, 0.1]}
    chosen = multilabel.choose({key: [{"mean_average_precision": m} for m in maps] for key, maps in runs.items()})
    assert chosen["head"] == {"chosen": 1e-3, "validation": {3e-4: 0.6, 1e-3: 0.7, 3e-3: pytest.approx(0.6)}}
    assert chosen["answer"]["chosen"] == 3e-4  # 0.4 twice: the first rate of the grid


class Started(Exception):
    """The runs began (their pictures were being made): every refusal comes before."""


def stop(*args):
    raise Started


def test_development_refuses_confirmation_seeds(monkeypatch):
    monkeypatch.setattr(multilabel, "DEVELOPMENT_SPLITS", [2, 100])
    monkeypatch.setattr(multilabel, "write_pictures", stop)
    with pytest.raises(SystemExit, match=r"\[100\] are confirmation seeds"):
        multilabel.main()


def test_a_split_reads_only_its_own_pool(tmp_path, monkeypatch):
    given = []
    monkeypatch.setattr(multilabel, "run", lambda script, *args, **kwargs: given.extend(args))
    multilabel.split(tmp_path, "confirmation", 100)
    assert f"--labels_csv={tmp_path / 'confirmation' / 'labels.csv'}" in given and "--seed=100" in given


CHOSEN = {"head": {"chosen": 1e-3, "validation": {"0.0003": 0.5, "0.001": 0.6, "0.003": 0.4}},
          "answer": {"chosen": 3e-4, "validation": {"0.0003": 0.4, "0.001": 0.3, "0.003": 0.2}}}


@pytest.fixture()
def confirming(tmp_path, monkeypatch):
    """multilabel.main set up to confirm, with its ledger and the choices (made on this code) in tmp_path, the code
    and choices committed; making the pictures stops it."""
    book, choices = tmp_path / "ledger.json", tmp_path / "choices.json"
    choices.write_text(json.dumps({"learning_rates": CHOSEN, "splits": [0, 1, 2], "code": "c0de"}))
    for name, value in (("LEDGER", book), ("CHOICES", choices), ("WORK_DIR", str(tmp_path / "work")),
                        ("OUTPUT", str(tmp_path / "results.md")), ("BOOTSTRAP", 50), ("CONFIRM", True)):
        monkeypatch.setattr(multilabel, name, value)
    monkeypatch.setattr(ledger, "code_hash", lambda: "c0de")
    monkeypatch.setattr(ledger, "uncommitted", lambda: "")
    monkeypatch.setattr(multilabel, "write_pictures", stop)
    return book


def test_a_confirmation_refuses_missing_uncommitted_or_other_code_choices_and_development_seeds(confirming,
                                                                                                 monkeypatch):
    choices = Path(multilabel.CHOICES)
    chosen = choices.read_text()
    choices.unlink()
    with pytest.raises(SystemExit, match="is missing"):
        multilabel.main()
    choices.write_text(chosen.replace("c0de", "other"))
    with pytest.raises(SystemExit, match="chosen on code other, not this checkout's c0de"):
        multilabel.main()
    choices.write_text(chosen)
    with pytest.raises(SystemExit, match="--learning_rates given"):
        multilabel.main(overrides=["learning_rates"])
    monkeypatch.setattr(multilabel, "CONFIRMATION_SPLITS", [2, 100])
    with pytest.raises(SystemExit, match=r"\[2\] are development seeds"):
        multilabel.main()
    monkeypatch.setattr(ledger, "uncommitted", lambda: " M benchmarks/multilabel-choices.json")
    with pytest.raises(SystemExit, match="differ from it"):
        multilabel.main()


def test_the_choices_file_counts_as_uncommitted_until_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger, "ROOT", tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    choices = tmp_path / "benchmarks" / "multilabel-choices.json"
    choices.parent.mkdir()
    choices.write_text("{}")
    assert "multilabel-choices.json" in ledger.uncommitted()  # untracked
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
                   check=True)
    assert ledger.uncommitted() == ""
    choices.write_text('{"learning_rates": {}}')
    assert "multilabel-choices.json" in ledger.uncommitted()


def test_a_confirmation_runs_only_what_head_planned_in_an_empty_folder_or_its_own(confirming, monkeypatch):
    monkeypatch.setattr(ledger, "committed", lambda *path: [])
    with pytest.raises(SystemExit, match="no entry planned"):  # no --plan=true committed: nothing may run
        multilabel.main()
    monkeypatch.setattr(multilabel, "CONFIRM", False)
    monkeypatch.setattr(multilabel, "PLAN", True)
    multilabel.main()
    planned = json.loads(confirming.read_text())[-1]
    assert planned["status"] == "planned" and planned["splits"] == multilabel.CONFIRMATION_SPLITS
    assert planned["fingerprint"]["settings"]["choices"]["learning_rates"] == CHOSEN
    with pytest.raises(SystemExit, match="planned already"):
        multilabel.main()
    monkeypatch.setattr(multilabel, "PLAN", False)
    monkeypatch.setattr(multilabel, "CONFIRM", True)
    head = json.loads(confirming.read_text())
    monkeypatch.setattr(ledger, "committed", lambda *path: head)  # the plan, committed
    work = Path(multilabel.WORK_DIR)
    (work / "multilabel-digits").mkdir(parents=True)  # another run's pictures, splits or models
    with pytest.raises(SystemExit, match="empty work folder"):
        multilabel.main()
    (work / "multilabel-digits").rmdir()
    with pytest.raises(Started):
        multilabel.main()
    assert json.loads(confirming.read_text())[-1]["status"] == "started"
    assert json.loads((work / ledger.STAMP).read_text())["digest"] == planned["fingerprint"]["digest"]
    with pytest.raises(Started):  # interrupted, it resumes in its own folder
        multilabel.main()
    monkeypatch.setattr(multilabel, "WORK_DIR", str(work.parent / "elsewhere"))
    with pytest.raises(SystemExit, match=r"\[100, 101, 102\] are spent"):  # and nowhere else: it ran
        multilabel.main()


def test_a_confirmation_runs_every_row_at_its_chosen_rate_on_the_confirmation_pool_and_records_its_table(
        confirming, monkeypatch):
    monkeypatch.setattr(multilabel, "PLAN", True)
    monkeypatch.setattr(multilabel, "CONFIRM", False)
    multilabel.main()
    monkeypatch.setattr(multilabel, "PLAN", False)
    monkeypatch.setattr(multilabel, "CONFIRM", True)
    head = json.loads(confirming.read_text())
    monkeypatch.setattr(ledger, "committed", lambda *path: head)
    monkeypatch.setattr(multilabel, "write_pictures", lambda data: [(data / pool / "images").mkdir(parents=True)
                                                                   for pool in ("development", "confirmation")])
    rng = np.random.default_rng(0)
    truth = [rng.random((30, 3)) < 0.4 for _ in multilabel.CONFIRMATION_SPLITS]
    seen = {}

    def fake(plan, pool, splits, work, data):  # the head learns, the answer guesses
        seen.update(plan=plan, pool=pool, splits=splits)
        return {(row, rates[0]): [{**r, "classes": ["a", "b", "c"], "micro_f1": 0.5, "exact_set_accuracy": 0.1,
                                   "steps": 10, "train_s": 12.0}
                                  for r in runs_of([rng.random(t.shape) + t * row.endswith("head") for t in truth],
                                                   truth)]
                for row, rates in plan.items()}
    monkeypatch.setattr(multilabel, "runs_of", fake)
    multilabel.main()
    assert seen == {"pool": "confirmation", "splits": [100, 101, 102], "plan": {
        "head": [1e-3], "answer": [3e-4], "aa_head": [1e-3], "aa_answer": [3e-4]}}
    text = Path(multilabel.OUTPUT).read_text()
    assert "**The claim** (answer - head, paired): the answer objective is **worse than** the head" in text
    entry = json.loads(confirming.read_text())[-1]
    assert entry["status"] == "finished" and entry["output"] == "results.md" and len(entry["table_sha256"]) == 64
