"""benchmarks/accuracy.py's protocol: its scoring agrees with the reports, its intervals pair the runs, Holm's
adjustment, the pools and folds, the rule for the default, and a confirmation refuses whatever would let its splits
choose or its record be lost (benchmarks/ledger.py)."""
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402
import ledger  # noqa: E402
import paired  # noqa: E402
import tasks  # noqa: E402

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
    assert paired.paired_interval(same, base, "macro_f1", 200) == (0.0, 0.0, 0.0, 1.0)
    observed, low, high, p = paired.paired_interval(better, base, "accuracy", 200)
    assert 0 < low < observed < high and p == pytest.approx(2 / 201)  # no resample at or below 0
    assert observed == pytest.approx(sum(b["accuracy"] - a["accuracy"] for a, b in zip(base, better)) / splits)
    unpaired = [{**better[0], "paths": better[0]["paths"][::-1]}] + better[1:]
    with pytest.raises(SystemExit, match="different images"):
        paired.paired_interval(unpaired, base, "accuracy", 10)


def test_holm_adjusts_as_by_hand():
    # sorted: d 0.005 x 4 = 0.02, a 0.01 x 3 = 0.03, c 0.03 x 2 = 0.06, b 0.04 x 1 = 0.04 -> 0.06 (never below the last)
    adjusted = paired.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert paired.holm({"a": 0.6, "b": 0.5}) == pytest.approx({"a": 1.0, "b": 1.0})  # capped at 1


def test_aa_rate_counts_exclusions_with_an_exact_interval():
    inside, outside = paired.Interval(0.0, -0.1, 0.1, 0.9), paired.Interval(0.05, 0.01, 0.09, 0.01)
    excluding, draws, low, high = paired.aa_rate([inside] * 38 + [outside] * 2)
    assert (excluding, draws) == (2, 40) and low == pytest.approx(0.0061, abs=1e-3) and high == pytest.approx(
        0.1692, abs=1e-3)


def test_pools_are_disjoint_stable_and_shared_by_tasks_of_one_image_set():
    assert tasks.pool_of("0003.png") == "confirmation" and tasks.pool_of("0000.png") == "development"
    assert tasks.pool_of("cell0001.png") == "confirmation" and tasks.pool_of("cell0003.png") == "development"
    share = sum(tasks.pool_of(f"{i:04d}.png") == "confirmation" for i in range(1797)) / 1797
    assert 0.45 < share < 0.55


@pytest.fixture()
def small_digits(tmp_path):
    """A work folder whose digits images are 3 classes of 30 tiny PNGs each (images_of finds them made)."""
    from PIL import Image
    for c, name in enumerate(["one", "two", "three"]):
        (tmp_path / "digits" / "images" / name).mkdir(parents=True)
        for i in range(30):
            Image.new("RGB", (8, 8), (80 * c, i, 0)).save(tmp_path / "digits" / "images" / name / f"{c}{i:03d}.png")
    return tmp_path


def images(path):
    return {Path(s["image"]).name for s in json.loads(Path(path).read_text())["samples"]}


def test_development_splits_read_only_the_development_pool_and_score_disjoint_folds(small_digits):
    every = {p.name for p in (small_digits / "digits" / "images").rglob("*.png")}
    pools = {kind: {n for n in every if tasks.pool_of(n) == kind} for kind in ("development", "confirmation")}
    scored = {}
    for confirm, seeds in ((False, [0, 1, 2]), (True, [400, 401, 402, 403, 404])):
        kind = "confirmation" if confirm else "development"
        for seed in seeds:
            files = tasks.prepare_split("digits", seed, small_digits, confirm=confirm, size=8, threads=1)
            read = {part: images(f) for part, f in files.items()}
            assert set().union(*read.values()) <= pools[kind], kind  # never an image of the other pool
            assert not read["score"] & read["train"]
            assert read["validated_train"] | read["validated_val"] == read["train"]
            assert read["train"] == pools[kind] - read["score"]  # digits trains on every other fold
            scored[seed] = read["score"]
        folds = [scored[s] for s in seeds]
        assert sum(map(len, folds)) == len(pools[kind]) and set().union(*folds) == pools[kind]  # disjoint, whole
    again = tasks.prepare_split("digits", 1, small_digits, confirm=False, size=8, threads=1)
    assert images(again["score"]) == scored[1]


def test_scripts_get_only_the_allowed_environment(monkeypatch, tmp_path):
    seen = {}

    def fake(command, **kwargs):
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(command, 0)
    monkeypatch.setattr(tasks.subprocess, "run", fake)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    tasks.run("fine_tune.py", cwd=tmp_path, log=tmp_path / "log", threads=1)
    assert "ACCELERATE_MIXED_PRECISION" not in seen and "PYTHONPATH" not in seen
    assert seen["CUDA_VISIBLE_DEVICES"] == "" and seen["OMP_NUM_THREADS"] == "1" and seen["PATH"]


def interval(observed, half=0.01, p=0.0001):
    return paired.Interval(observed, observed - half, observed + half, p)


CELLS = [("smolvlm", "short", "elpv2"), ("smolvlm", "short", "digits"), ("smolvlm", "short", "digits_small"),
         ("llava", "short", "digits"), ("smolvlm", "long", "digits"), ("llava", "long", "digits")]


def compared_with(head, aa=0.0):
    """Synthetic comparisons: head's macro-F1 interval per cell (a number: a narrow interval around it)."""
    return {cell: {"head": (head.get(cell, interval(0.0, 0.05, 1.0)), None),
                   "aa_original": (interval(aa if cell == CELLS[0] else 0.0, 0.05, 1.0), None)} for cell in CELLS}


def test_the_rule_makes_a_recipe_the_default_only_if_worse_nowhere_and_better_somewhere(monkeypatch):
    monkeypatch.setattr(accuracy, "ROWS", {"original": {"objective": "answer"}, "head": {"objective": "head"}})
    better = {CELLS[1]: interval(0.3), CELLS[2]: interval(0.2)}
    rule = accuracy.decision(compared_with(better))
    assert rule["default"] == "head" and rule["settings"] == {"objective": "head"}
    assert "(data sets: digits)" in rule["lines"][0]  # digits and digits_small: one data set
    worse_once = {**better, CELLS[5]: interval(-0.05)}  # worse on one task of the other stand-in, longer budget
    rule = accuracy.decision(compared_with(worse_once))
    assert rule["default"] == "original" and rule["settings"] == {"objective": "answer"}
    unadjusted_only = {CELLS[1]: interval(0.3, p=0.02)}  # p 0.02 in a family of 6: Holm-adjusted 0.12
    assert accuracy.decision(compared_with(unadjusted_only))["default"] == "original"
    uncalibrated = {CELLS[0]: interval(0.3)}  # better only where the A/A row excludes 0
    assert accuracy.decision(compared_with(uncalibrated, aa=0.2))["default"] == "original"
    assert accuracy.decision(compared_with(uncalibrated))["default"] == "head"
    missing = compared_with(better)
    del missing[CELLS[4]]["head"]  # not run at the longer budget
    missing[CELLS[4]]["answer_classification"] = (interval(0.0, 0.05, 1.0), None)
    monkeypatch.setattr(accuracy, "ROWS", {"original": {}, "head": {"objective": "head"},
                                           "answer_classification": {"objective": "answer"}})
    assert accuracy.decision(missing)["default"] == "original"


def test_the_longer_budget_is_where_the_original_levels_off(monkeypatch):
    monkeypatch.setattr(accuracy, "BUDGET_LADDER", [24, 48, 96])
    curves = {"a": {24: 0.30, 48: 0.50, 96: 0.51}, "b": {24: 0.60, 48: 0.61, 96: 0.62}}
    asked = []

    def score_at(seconds):
        asked.append(seconds)
        return {cell: curve[seconds] for cell, curve in curves.items()}
    assert accuracy.long_budget(score_at)[:2] == (48, True)  # a still gains 0.20 from 24 s to 48 s
    assert asked == [24, 48, 96]
    curves["a"][96] = 0.60
    assert accuracy.long_budget(score_at)[:2] == (96, False)  # never levels off: the last rung, said so


def test_each_data_set_gets_its_own_longer_budget_and_its_rows_train_for_it(monkeypatch, tmp_path):
    monkeypatch.setattr(accuracy, "ARCHITECTURES", {"smolvlm": ["elpv2", "digits"], "llava": ["digits"]})
    monkeypatch.setattr(accuracy, "BUDGET_LADDER", [24, 48, 96])
    monkeypatch.setattr(accuracy, "CHOICES", tmp_path / "choices.json")
    curves = {"elpv2": {12: 0.50, 24: 0.60, 48: 0.61, 96: 0.58}, "digits": {12: 0.10, 24: 0.20, 48: 0.50, 96: 0.51}}
    asked = []

    def runner(units):  # the original levels off at 24 s on elpv and at 48 s on digits; 1e-3 is the best rate
        asked.extend(units)
        return {u: {"macro_f1": curves[u.task][u.seconds] + 0.01 * (u.rate == 1e-3)} for u in units}
    choices = accuracy.develop(runner)
    assert choices["long_seconds"] == {"digits": 48, "elpv": 24}  # one ladder for both would give elpv 48
    assert choices["levelled"] == {"digits": True, "elpv": True} and choices["protocol"] == accuracy.PROTOCOL
    assert set(choices["ladder"]["elpv"]) == {"24", "48"} and set(choices["ladder"]["digits"]) == {"24", "48", "96"}
    assert set(choices["ladder"]["digits"]["96"]) == {"smolvlm digits", "llava digits"}
    assert json.loads((tmp_path / "choices.json").read_text())["long_seconds"] == {"digits": 48, "elpv": 24}
    assert {(u.task, u.seconds) for u in asked if u.row == "head"} == {("elpv2", 12), ("elpv2", 24), ("digits", 12),
                                                                        ("digits", 48)}
    assert choices["learning_rates"]["long"]["llava"]["digits"]["head"]["chosen"] == 1e-3
    asked.clear()

    def scored(units):  # whole runs, each scored as train_and_score records it
        asked.extend(units)
        return {u: {**run(list("abcabc"), list("abcab" + "abc"[u.split])), "steps": 10, "train_s": u.seconds,
                    "process_s": 2.0, "score_s": 1.0, "images": 6} for u in units}
    results = accuracy.table_results(scored, choices, [0, 1, 2])
    assert {(u.task, u.seconds) for u in asked if u.row == "aa_original"} == {("elpv2", 12), ("elpv2", 24),
                                                                               ("digits", 12), ("digits", 48)}
    monkeypatch.setattr(accuracy, "BOOTSTRAP", 50)
    compared = accuracy.comparisons(results)
    text = accuracy.report(results, compared, choices, [0, 1, 2], "now", 60.0, {"digest": "d", "code": "c",
                           "versions": {}}, accuracy.decision(compared), "cpu")
    assert "digits 48 s (levelled off; the original's validation macro-F1 by rung: 24 s: smolvlm digits 0.210" in text
    assert "| llava | 48 s | digits | head |" in text and "| smolvlm | 24 s | elpv2 | cnn |" in text


def test_the_learning_rate_is_the_best_on_validation_first_in_the_grid_on_ties():
    assert accuracy.choose_rate({3e-4: 0.5, 1e-3: 0.7, 3e-3: 0.6}) == 1e-3
    assert accuracy.choose_rate({3e-4: 0.7, 1e-3: 0.7, 3e-3: 0.6}) == 3e-4


def git_repo(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)


HASHED = ["fine_tune.py", "vlmcls/models.py", "vlmcls/objectives/answer.py", "benchmarks/accuracy.py",
          "tests/tiny_models.py", "requirements.txt", "requirements-dev.txt", "tests/fixtures/m/tokenizer.json"]


def test_the_fingerprint_binds_every_tracked_file_that_can_change_a_number(tmp_path, monkeypatch):
    git_repo(tmp_path, {**{name: "x = 1\n" for name in HASHED}, "docs/notes.md": "words"})
    monkeypatch.setattr(ledger, "ROOT", tmp_path)
    before = ledger.code_hash()
    for name in HASHED:
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


def test_a_failing_git_call_refuses_the_run(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'fatal: broken' >&2\nexit 128\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SystemExit, match="failed"):
        ledger.uncommitted()  # "" before: nothing differs, as far as it knew
    with pytest.raises(SystemExit, match="failed"):
        ledger.code_hash()


def refusal(**changes):
    given = {"splits": [300, 301], "development": [0, 1, 2], "overrides": [], "ledger": [], "changed": ""}
    return ledger.refuse_confirmation(**{**given, **changes})


def test_a_confirmation_refuses_uncommitted_code_overrides_development_and_spent_seeds():
    assert refusal() is None
    assert "differ from it" in refusal(changed=" M vlmcls/training.py")
    assert "--learning_rates, --short_seconds given" in refusal(overrides=["short_seconds", "learning_rates"])
    assert refusal(overrides=["work_dir", "confirm", "plan", "output"]) is None  # where files go changes no number
    assert "[2] are development seeds" in refusal(splits=[2, 300])
    assert "[42] are development seeds" in refusal(splits=[42])  # below 100, even if not listed
    spent = [{"commit": "abc1234", "splits": [300, 305]}, {"commit": "def5678", "splits": [400]}]
    message = refusal(ledger=spent)  # spent whatever the code: no "same code may run them again"
    assert "[300] are spent" in message and "CONFIRMATION_SPLITS = [500, 501]" in message
    assert refusal(ledger=[{"commit": "abc1234", "splits": [300, 301], "status": "planned"}]) is None  # its own plan


CHOICES = {"protocol": accuracy.PROTOCOL, "long_seconds": {"elpv": 48, "digits": 96}}  # a development's, in brief


@pytest.fixture()
def confirming(tmp_path, monkeypatch):
    """accuracy.main set up to confirm seeds 700-704 with a ledger and choices in tmp_path, the code committed."""
    book = tmp_path / "confirmations.json"
    book.write_text(json.dumps([{"commit": "abc1234", "splits": [100, 101]}]))
    choices = tmp_path / "choices.json"
    choices.write_text(json.dumps(CHOICES))
    for name, value in (("LEDGER", book), ("CHOICES", choices), ("CONFIRMATION_SPLITS", [700, 701, 702, 703, 704]),
                        ("WORK_DIR", str(tmp_path / "work"))):
        monkeypatch.setattr(accuracy, name, value)
    monkeypatch.setattr(ledger, "uncommitted", lambda: "")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # a confirmation that got as far as its first model, stopped there
    monkeypatch.setattr(accuracy, "build_model", interrupted)
    monkeypatch.setattr(accuracy, "prepare_split", lambda *args, **kwargs: {})
    monkeypatch.setattr(accuracy, "rate_of", lambda *args: 1e-3)  # the choices file holds the budget alone
    return book


def test_a_confirmation_runs_only_what_head_has_planned_and_spends_its_seeds_first(confirming, monkeypatch):
    monkeypatch.setattr(accuracy, "CONFIRM", True)
    monkeypatch.setattr(ledger, "committed", lambda: json.loads(confirming.read_text()), raising=False)
    with pytest.raises(SystemExit, match="no entry planned"):  # no --plan=true committed: nothing may run
        accuracy.main()
    monkeypatch.setattr(accuracy, "CONFIRM", False)
    monkeypatch.setattr(accuracy, "PLAN", True)
    accuracy.main()
    planned = json.loads(confirming.read_text())[-1]
    assert planned["status"] == "planned" and planned["splits"] == [700, 701, 702, 703, 704]
    assert planned["fingerprint"]["settings"]["choices"] == CHOICES
    monkeypatch.setattr(accuracy, "PLAN", False)
    monkeypatch.setattr(accuracy, "CONFIRM", True)
    head = json.loads(confirming.read_text())
    monkeypatch.setattr(ledger, "committed", lambda: head)  # the plan, committed
    monkeypatch.setattr(accuracy, "SHORT_SECONDS", 13)
    with pytest.raises(SystemExit, match="fingerprint"):  # a setting changed since the plan
        accuracy.main()
    monkeypatch.setattr(accuracy, "SHORT_SECONDS", 12)
    older = Path(accuracy.CHOICES).read_text()
    Path(accuracy.CHOICES).write_text(json.dumps({**CHOICES, "protocol": accuracy.PROTOCOL - 1}))
    with pytest.raises(SystemExit, match="choices of protocol"):  # another protocol's choices: not these rules
        accuracy.main()
    Path(accuracy.CHOICES).write_text(older)
    with pytest.raises(KeyboardInterrupt):
        accuracy.main()
    assert json.loads(confirming.read_text())[-1]["status"] == "started"
    work = Path(accuracy.WORK_DIR)
    assert json.loads((work / ledger.STAMP).read_text())["digest"] == planned["fingerprint"]["digest"]
    with pytest.raises(KeyboardInterrupt):  # interrupted, it resumes in its own folder, and the ledger says so
        accuracy.main()
    assert len(json.loads(confirming.read_text())[-1]["resumed"]) == 1
    monkeypatch.setattr(accuracy, "WORK_DIR", str(work.parent / "elsewhere"))
    with pytest.raises(SystemExit, match=r"\[700, 701, 702, 703, 704\] are spent"):  # nowhere else: it ran
        accuracy.main()
    monkeypatch.setattr(accuracy, "WORK_DIR", str(work))
    with pytest.raises(SystemExit, match="--short_seconds given"):
        accuracy.main(overrides=["short_seconds"])


def test_a_confirmation_refuses_a_work_folder_that_is_not_empty(confirming, monkeypatch, tmp_path):
    monkeypatch.setattr(accuracy, "CONFIRM", True)
    entry = {"splits": [700, 701, 702, 703, 704], "status": "planned", "fingerprint": {"digest": "x"}}
    monkeypatch.setattr(ledger, "fingerprint", lambda settings: {"digest": "x"})
    monkeypatch.setattr(ledger, "committed", lambda: [entry], raising=False)
    confirming.write_text(json.dumps([entry]))
    (tmp_path / "work" / "digits").mkdir(parents=True)  # a previous run's splits, models or results
    with pytest.raises(SystemExit, match="empty work folder"):
        accuracy.main()
    # a folder stamped by another confirmation (another fingerprint) is not this one's to resume
    (tmp_path / "work" / ledger.STAMP).write_text(json.dumps({"digest": "y", "splits": entry["splits"]}))
    with pytest.raises(SystemExit, match="empty work folder"):
        accuracy.main()


def test_development_refuses_confirmation_seeds(monkeypatch):
    monkeypatch.setattr(accuracy, "DEVELOPMENT_SPLITS", [300, 301, 302])
    monkeypatch.setattr(accuracy, "build_model", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit, match=r"\[300, 301, 302\] are confirmation seeds"):
        accuracy.main()


def test_a_finished_confirmation_records_the_rule_and_a_hash_of_its_table(tmp_path):
    book = tmp_path / "confirmations.json"
    ledger.plan(book, {"commit": "abc1234", "splits": [700], "protocol": 3})
    ledger.finish(book, [700], "results.md", {"default": "head", "settings": {"objective": "head"}}, "| table |")
    entry = json.loads(book.read_text())[-1]
    assert entry["status"] == "finished" and entry["decision"]["default"] == "head"
    assert entry["table_sha256"] == hashlib.sha256(b"| table |").hexdigest()


def test_the_readme_lists_every_ledger_entry():
    listed = ledger.listing(ledger.read(accuracy.LEDGER))
    assert listed in (accuracy.ROOT / "benchmarks" / "README.md").read_text(), \
        f"benchmarks/README.md's ledger list must read:\n{listed}"


def test_the_shipped_defaults_are_the_latest_confirmation_s_decision():
    import fine_tune
    from vlmcls.cli import settings_of
    decision = ledger.latest_decision(ledger.read(accuracy.LEDGER))
    assert decision, "no finished confirmation recorded a decision"
    shipped = settings_of(vars(fine_tune))
    assert {k: shipped[k] for k in decision["settings"]} == decision["settings"]
    assert accuracy.ROWS[accuracy.DEFAULT_ROW] == accuracy.ROWS[decision["default"]]
