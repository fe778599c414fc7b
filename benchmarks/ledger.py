"""The accuracy protocol's ledger: what binds an experiment (every file that can change a number, the effective
settings, the package versions), which split seeds are spent, and the refusals that keep confirmation splits
from ever choosing anything."""
import hashlib
import json
from importlib import metadata
from pathlib import Path

from common import ROOT, git

# every file that can change a number: the scripts, the package, the benchmarks, the tiny model, the pins
HASHED = ["*.py", "vlmcls/*.py", "benchmarks/*.py", "tests/tiny_models.py", "requirements.txt"]
PACKAGES = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers", "pillow", "numpy",
            "scikit-learn", "elpv-dataset"]
# settings a confirmation may be given on the command line: where files go changes no number
HARMLESS = {"confirm", "work_dir", "output"}
FIRST_CONFIRMATION_SEED = 100  # seeds below are development seeds: never confirmed on


def code_hash():
    """The hash of every file in HASHED, names and bytes."""
    digest = hashlib.sha256()
    for f in sorted({f for pattern in HASHED for f in Path(ROOT).glob(pattern) if f.is_file()}):
        digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def versions():
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def fingerprint(settings):
    """What makes two experiments the same: the code, the effective settings after every override, and the
    package versions; with a short digest of the three."""
    bound = {"code": code_hash(), "settings": settings, "versions": versions()}
    bound["digest"] = hashlib.sha256(json.dumps(bound, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return bound


def read(path):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else []


def uncommitted():
    """The hashed files that differ from the commit (or are not in it)."""
    return git("status", "--porcelain", "--untracked-files=all", "--", *HASHED)


def refuse_confirmation(*, splits, development, overrides, ledger, changed):
    """The reason a confirmation may not run, or None. It must run committed code with the committed settings on
    split seeds that no development run and no earlier confirmation has used."""
    if changed:
        return (f"a confirmation runs committed code and records its commit; these files differ from it:\n{changed}")
    if given := sorted(set(overrides) - HARMLESS):
        return (f"a confirmation runs the committed settings; --{', --'.join(given)} given. Change a setting in a "
                "commit, on development splits, before confirming")
    if dev := sorted(s for s in splits if s in development or s < FIRST_CONFIRMATION_SEED):
        return (f"split seeds {dev} are development seeds (those of development_splits, and every seed below "
                f"{FIRST_CONFIRMATION_SEED}); choices were made on them, so they confirm nothing")
    spent = {s for entry in ledger for s in entry["splits"]}
    if used := sorted(set(splits) & spent):
        block = max(spent) // 100 * 100 + 100
        return (f"split seeds {used} are spent (benchmarks/confirmations.json): a seed confirms once, whatever the "
                f"code. Commit fresh ones, e.g. CONFIRMATION_SPLITS = {list(range(block, block + len(splits)))}")
    return None


def spend(path, entry):
    """Record a confirmation as started before its first run: seeds are spent whether or not it finishes."""
    from vlmcls.files import write_json
    write_json(path, read(path) + [{**entry, "status": "started"}])


def finish(path, entry, output):
    from vlmcls.files import write_json
    write_json(path, [{**e, "status": "finished", "output": output} if e["splits"] == entry["splits"] else e
                      for e in read(path)])
