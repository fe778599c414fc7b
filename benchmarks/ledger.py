"""The accuracy protocol's ledger: what binds an experiment (every tracked file that can change a number, the
effective settings, the package versions, the machine), which split seeds are spent, the refusals that keep
confirmation splits from ever choosing anything, and what a finished confirmation decided."""
import hashlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from common import ROOT

# every tracked file that can change a number (git pathspecs): the code in every folder, the pins and the fixtures
# (the stand-ins' tokenizer and processor)
HASHED = [":(glob)**/*.py", ":(glob)**/requirements*.txt", "tests/fixtures"]
# the development runs' choices (accuracy.py's, multilabel.py's): in a confirmation's settings (so outside the code
# hash, which keys cached runs), and committed like the code
CHOSEN = ["benchmarks/accuracy-choices.json", "benchmarks/multilabel-choices.json"]
PACKAGES = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers", "pillow", "numpy",
            "scikit-learn", "scipy", "elpv-dataset"]
# settings a confirmation may be given on the command line: where files go, and its two steps, change no number
HARMLESS = {"confirm", "plan", "work_dir", "output"}
FIRST_CONFIRMATION_SEED = 100  # seeds below are development seeds, and only they: never confirmed on
LEDGER_PATH = "benchmarks/confirmations.json"  # the ledger, relative to the checkout (git show HEAD:<it>)
STAMP = "confirmation.json"  # in a confirmation's work folder: which confirmation it is, so that it may resume there


def git(*args):
    """git's output in the checkout; a failing git call stops the run, since nothing it was to check is known."""
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"error: git {' '.join(args)} could not run ({e}); the ledger cannot bind this run")
    if proc.returncode:
        sys.exit(f"error: git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}; the ledger cannot "
                 "bind this run")
    return proc.stdout


def hashed_files():
    """The files of HASHED that git tracks, as paths relative to the checkout."""
    return sorted(f for f in git("ls-files", "-z", "--", *HASHED).split("\0") if f)


def code_hash():
    """The hash of every hashed file, names and bytes as they are in the checkout."""
    digest = hashlib.sha256()
    for name in hashed_files():
        path = Path(ROOT) / name
        if not path.is_file():
            sys.exit(f"error: {name} is tracked but missing from the checkout; the ledger cannot bind this run")
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
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


def committed(path=LEDGER_PATH):
    """The ledger at `path` (relative to the checkout) as the checkout's HEAD holds it."""
    return json.loads(git("show", f"HEAD:{path}"))


def uncommitted():
    """The hashed files that differ from the commit, and untracked files the hashed patterns would take in."""
    return git("status", "--porcelain", "--untracked-files=all", "--", *HASHED, *CHOSEN).strip()


def planned(entries, splits, resumed=None):
    """The entry of `entries` planned for these split seeds and not yet started, or None; with `resumed` (a work
    folder's stamp, as stamp_of reads it), also the entry that started with that stamp's fingerprint and seeds."""
    return next((e for e in entries if e["splits"] == splits and (
        e.get("status") == "planned" or resumed is not None and e.get("status") == "started"
        and resumed["splits"] == splits and e["fingerprint"]["digest"] == resumed["digest"])), None)


def refuse_confirmation(*, splits, development, overrides, ledger, changed, resumed=None):
    """The reason a confirmation may not be planned or run, or None. It must run committed code with the committed
    settings on split seeds that no development run and no earlier confirmation has used (its own plan aside, and
    with `resumed`, the stamp of its own work folder, its own start)."""
    if changed:
        return f"a confirmation runs committed code and records its commit; these files differ from it:\n{changed}"
    if given := sorted(set(overrides) - HARMLESS):
        return (f"a confirmation runs the committed settings; --{', --'.join(given)} given. Change a setting in a "
                "commit, on development splits, before confirming")
    if dev := sorted(s for s in splits if s in development or s < FIRST_CONFIRMATION_SEED):
        return (f"split seeds {dev} are development seeds (those of development_splits, and every seed below "
                f"{FIRST_CONFIRMATION_SEED}); choices were made on them, so they confirm nothing")
    own = planned(ledger, splits, resumed)
    spent = {s for entry in ledger if entry is not own for s in entry["splits"]}
    if used := sorted(set(splits) & spent):
        block = max(spent) // 100 * 100 + 100
        return (f"split seeds {used} are spent (the ledger holds them): a seed confirms once, whatever the "
                f"code. Commit fresh ones, e.g. CONFIRMATION_SPLITS = {list(range(block, block + len(splits)))}")
    return None


def check_run(*, confirm, plan, splits, development, overrides, path, folder, choices):
    """Stop a development run on confirmation seeds (refuse_development), and a --plan or --confirm run that
    refuse_confirmation refuses (`splits`, its ledger at `path`; a confirmation may resume in `folder`, its own) or
    whose development run's `choices` file is missing."""
    if not (confirm or plan):
        if refusal := refuse_development(development):
            sys.exit(f"error: {refusal}")
        return
    if refusal := refuse_confirmation(splits=splits, development=development, overrides=overrides, ledger=read(path),
                                      changed=uncommitted(), resumed=stamp_of(folder) if confirm else None):
        sys.exit(f"error: {refusal}")
    if not Path(choices).is_file():
        sys.exit(f"error: {choices} is missing: a development run makes the choices a confirmation runs with")


def refuse_unplanned(splits, digest, head, resumed=None, path=LEDGER_PATH):
    """The reason a confirmation may not start, or None: its entry (--plan=true) must be in the ledger of HEAD
    (`head`, the ledger at `path`), planned for these seeds with this fingerprint (or, resumed, started), so that no
    one can run it and then delete the record."""
    entry = planned(head, splits, resumed)
    if entry is None:
        return (f"no entry planned for split seeds {splits} in HEAD's {path}: run with --plan=true, commit "
                f"{path}, then --confirm=true")
    if entry["fingerprint"]["digest"] != digest:
        return (f"the planned entry's fingerprint {entry['fingerprint']['digest']} is not this run's {digest}: code, "
                "settings or packages changed since --plan=true")
    return None


def refuse_development(splits):
    """The reason a development run may not use these seeds, or None: confirmation seeds are for --confirm only."""
    if spent := sorted(s for s in splits if s >= FIRST_CONFIRMATION_SEED):
        return (f"split seeds {spent} are confirmation seeds (from {FIRST_CONFIRMATION_SEED} on): only --confirm=true "
                "runs them")
    return None


def stamp_of(folder):
    """The stamp a confirmation left in its work folder when it started ({"digest", "splits", "commit",
    "started"}), or None: it lets that confirmation, interrupted, resume there and nothing else use the folder."""
    stamp = Path(folder) / STAMP if folder else None
    return json.loads(stamp.read_text()) if stamp and stamp.is_file() else None


def refuse_work_dir(folder, digest, splits):
    """The reason a confirmation may not use this work folder, or None: it starts from an empty one, so that no
    split, model or result of another run is reused unchecked, or resumes in the folder it started in (its stamp
    holds this fingerprint and these seeds)."""
    if not folder or not Path(folder).exists() or not any(Path(folder).iterdir()):
        return None
    stamp = stamp_of(folder)
    if stamp is None or stamp["digest"] != digest or stamp["splits"] != splits:
        return (f"{folder}: a confirmation starts from an empty work folder (or none: a temporary one), or resumes in "
                f"its own (whose {STAMP} holds its fingerprint {digest} and seeds {splits}); this one is neither")
    return None


def start(path, folder, splits, digest, started, machine):
    """Record a confirmation's start in the ledger and stamp its work folder (none: a temporary folder, which
    cannot be resumed); a resumed confirmation (its folder stamped already) adds this start to the entry's
    "resumed" list instead."""
    from vlmcls.files import write_json
    resumed = stamp_of(folder)
    if resumed is None:
        with_status(path, splits, status="started", started=started, machine=machine)
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            write_json(Path(folder) / STAMP, {"digest": digest, "splits": splits, "started": started,
                                              "commit": git("rev-parse", "--short", "HEAD").strip()})
        return
    entry = planned(read(path), splits, resumed)
    with_status(path, splits, status="started", resumed=entry.get("resumed", []) + [started], machine=machine)


def begin(path, head, folder, splits, digest, started, machine):
    """Start a confirmation (start), or stop with the reason it may not: HEAD's ledger (`head`, the one at `path`)
    must hold its plan with this fingerprint, and its work folder must be empty or its own."""
    for refusal in (refuse_unplanned(splits, digest, head, stamp_of(folder), path=path),
                    refuse_work_dir(folder, digest, splits)):
        if refusal:
            sys.exit(f"error: {refusal}")
    start(path, folder, splits, digest, started, machine)


def with_status(path, splits, **changes):
    """The ledger with the changes applied to the latest entry of these split seeds, written whole."""
    from vlmcls.files import write_json
    entries = read(path)
    last = max(i for i, e in enumerate(entries) if e["splits"] == splits)
    entries[last] = {**entries[last], **changes}
    write_json(path, entries)


def plan(path, entry):
    """Record a confirmation before it runs: its seeds are spent from now on, whether or not it ever finishes. Seeds
    planned already stop it: that plan is to be committed and confirmed."""
    from vlmcls.files import write_json
    if planned(read(path), entry["splits"]):
        sys.exit(f"error: split seeds {entry['splits']} are planned already: commit {Path(path).name} and confirm")
    write_json(path, read(path) + [{**entry, "status": "planned"}])
    print(f"planned: split seeds {entry['splits']}. Commit {path}, then run --confirm=true")


def finish(path, splits, output, decision, table):
    """A finished confirmation: its results file, the rule's output and a hash of its table."""
    with_status(path, splits, status="finished", output=output, decision=decision,
                table_sha256=hashlib.sha256(table.encode()).hexdigest())


def latest_decision(entries):
    """The decision of the latest finished entry that recorded one."""
    return next((e["decision"] for e in reversed(entries) if e.get("status") == "finished" and e.get("decision")),
                None)


def listing(entries):
    """The ledger as benchmarks/README.md lists it: one line per entry, oldest first."""
    return "\n".join(
        f"- {e['commit']}, seeds {e['splits'][0]}-{e['splits'][-1]}, protocol {e['protocol']}, "
        f"{e.get('status', 'finished')}" + (f", fingerprint {e['fingerprint']['digest']}" if 'fingerprint' in e else "")
        + (f", default by the rule: {e['decision']['default']}" if e.get("decision") else "")
        + (f": `{e['output']}`" if e.get("output") else "") for e in entries)
