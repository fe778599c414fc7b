"""Suspected label errors: from the given labels and out-of-sample class probabilities, the images whose label the
model confidently disagrees with (confident learning, cleanlab), ranked, as label_issues.csv and a contact sheet of
the top ones; those probabilities for training images by a k-fold on their features that keeps copies in one fold;
and what identifies a model's training images, which an evaluation run leaves out of its audit."""
import io
import json
from collections import Counter
from pathlib import Path

from PIL import Image

from .cli import UserError
from .files import atomic_write, write_csv
from .images import load_image, lookalike_groups, pixel_hash
from .report import thumbnail_sheet

ISSUES_CSV = "label_issues.csv"
ISSUES_PNG = "label_issues.png"
ISSUE_HEADER = ["rank", "path", "given_class", "predicted_class", "predicted_probability", "given_class_probability",
                "label_quality"]
SHEET_COUNT = 24  # the top issues the contact sheet shows
SHEET_COLUMNS = 6
THUMB = 160  # pixels: a thumbnail's longest edge on the contact sheet
TRAINING_IMAGES = "training_images"  # classes.json's record of the images the model trained on


def ranked_issues(labels, probs, classes):
    """Confident learning (cleanlab.filter.find_label_issues, pruned by the estimated noise rates) over images
    with given labels `labels` (class names) and probabilities `probs` (one row per image, columns in `classes`
    order, out-of-sample: from a model that did not train on the image). Returns [(index, label quality)] of the
    suspected images, worst first: label quality is the probability of the given class (cleanlab's
    self-confidence), so the first are those the model most confidently gives to another class."""
    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    given = np.array([classes.index(label) for label in labels])
    p = np.asarray(probs, dtype=float)
    p = p / p.sum(axis=1, keepdims=True)  # rounded probabilities of a CSV sum to 1 only within rounding
    # n_jobs=1: the work is small, and a pool would fork a process holding a loaded model (or, where processes are
    # spawned, import the calling script again)
    found = find_label_issues(given, p, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence",
                              n_jobs=1)
    quality = get_label_quality_scores(given, p, method="self_confidence")
    return [(int(i), float(quality[i])) for i in found]


def write_label_issues(folder, paths, labels, probs, classes, *, what="images"):
    """label_issues.csv (every suspected image, worst first) and label_issues.png (a contact sheet of the first
    SHEET_COUNT) in `folder`, written whole; prints how many were found. `probs` as ranked_issues takes them.
    Returns the CSV's rows."""
    folder = Path(folder)
    issues = ranked_issues(labels, probs, classes) if paths else []  # every image left out: nothing to rank
    rows = []
    for rank, (i, quality) in enumerate(issues, 1):
        best = max(range(len(classes)), key=lambda c: probs[i][c])
        rows.append([rank, str(paths[i]), labels[i], classes[best], f"{probs[i][best]:.6f}",
                     f"{probs[i][classes.index(labels[i])]:.6f}", f"{quality:.6f}"])
    write_csv(folder / ISSUES_CSV, ISSUE_HEADER, rows)
    buffer = io.BytesIO()
    contact_sheet(rows[:SHEET_COUNT], len(rows), len(paths), what).save(buffer, "PNG")
    atomic_write(folder / ISSUES_PNG, buffer.getvalue())
    print(f"suspected label errors: {len(rows)} of {len(paths)} {what}, worst first in {folder / ISSUES_CSV}"
          + (f" (the first {min(len(rows), SHEET_COUNT)} in {folder / ISSUES_PNG})" if rows else ""))
    return rows


def hash_training_images(paths, max_pixels, progress=True):
    """What classes.json records under TRAINING_IMAGES of the images a model trains on: {"pixel_sha256": the
    hashes of their decoded pixels (images.pixel_hash), sorted hex digests, each picture once}. Pixels rather than
    file bytes, so that a copy re-saved in another format, or with other metadata, is still known; a resized or
    re-encoded copy is not. A file that cannot be used stops with its name and reason, as training would."""
    from tqdm import tqdm
    bar = tqdm(paths, desc="hashing training images", unit="img", disable=not progress)
    return {"pixel_sha256": sorted({pixel_hash(load_image(path, max_pixels)) for path in bar})}


def _pixel_hash(path, max_pixels):
    """images.pixel_hash of a file, or None where it cannot be used (it stays in the audit)."""
    try:
        return pixel_hash(load_image(path, max_pixels))
    except UserError:
        return None


def training_hashes(saved):
    """The pixel hashes of the images a model trained on, from its classes.json (`saved`, or None), as a set; None
    where it records none (saved before they were recorded, or a model fine_tune.py did not train)."""
    record = (saved or {}).get(TRAINING_IMAGES)
    return frozenset(record["pixel_sha256"]) if record is not None else None


def label_issues_of_run(folder, rows, classes, trained, max_pixels, progress=True):
    """label_issues.csv and .png of an evaluation run with labels, from its predictions.csv rows (their
    `probabilities` column: each class's probability as JSON), on the images the model did not train on: those
    whose pixels hash to one of `trained` (training_hashes; images over `max_pixels` cannot be told) are left out,
    as the model memorised their labels, wrong ones included. With `trained` None it cannot tell them, says so,
    and audits every image. Returns what report.json records of it ({"audited", "training_images_left_out" (None:
    cannot tell), "listed"}). A run without class probabilities (generate mode) has none: it says so, removes those
    of an earlier run in the folder, which would no longer match, and returns None."""
    if not rows or any(not r.get("probabilities") for r in rows):
        for name in (ISSUES_CSV, ISSUES_PNG):
            (Path(folder) / name).unlink(missing_ok=True)
        print("no suspected label errors listed: they need each class's probability, which generate mode does not "
              "give (score mode does)")
        return None
    left_out, what = set(), "images"
    if trained is None:
        print("note: the model records no training images (saved before fine_tune.py recorded them, or not trained "
              "by it), so the label audit cannot leave them out: any among these look right, their labels memorised")
    elif trained:
        from tqdm import tqdm
        bar = tqdm([r["path"] for r in rows], desc="finding training images", unit="img", disable=not progress)
        left_out = {path for path in bar if _pixel_hash(path, max_pixels) in trained}
        what = f"images the model did not train on ({len(left_out)} training images left out)"
    audited = [r for r in rows if r["path"] not in left_out]
    probs = [[json.loads(r["probabilities"])[c] for c in classes] for r in audited]
    listed = write_label_issues(folder, [r["path"] for r in audited], [r["true_class"] for r in audited], probs,
                                classes, what=what)
    return {"audited": len(audited), "training_images_left_out": None if trained is None else len(left_out),
            "listed": len(listed)}


def check_folds(labels, classes, folds, groups=None):
    """Refuse a k-fold that cannot give every image an out-of-sample probability: fewer than 2 folds, or more
    folds than the rarest class has groups of images (every fold holds out at least one of every class; `groups`:
    one group id per image, copies and look-alikes sharing one; None: each image alone)."""
    if folds < 2:
        raise UserError(f"label_issue_folds={folds}: k-fold needs at least 2 folds (0 turns it off)")
    groups = range(len(labels)) if groups is None else groups
    counts = Counter(label for label, _ in set(zip(labels, groups)))
    present = [c for c in classes if counts[c]]
    if len(present) < 2:
        raise UserError(f"label_issue_folds={folds}: the training images hold {len(present)} class(es); a label "
                        "can only be doubted against another class")
    rarest = min(present, key=lambda c: counts[c])
    if counts[rarest] < folds:
        raise UserError(f"label_issue_folds={folds}: class {rarest!r} has only {counts[rarest]} training image(s), "
                        "copies and look-alikes counted once, and each fold holds out at least one image of every "
                        f"class: use at most {counts[rarest]} folds")


def fold_groups(samples, max_pixels, progress=True):
    """One group id per sample (a data set JSON's), shared by copies and look-alikes (images.lookalike_groups)."""
    paths = [s["image"] for s in samples]
    group_of = {path: n for n, group in enumerate(lookalike_groups(dict.fromkeys(paths), max_pixels, progress))
                for path in group}
    return [group_of[path] for path in paths]


def out_of_sample_probabilities(features, labels, classes, folds, seed, groups=None):
    """Each image's class probabilities from a linear classifier (multinomial logistic regression on standardised
    features: the frozen-backbone head, fitted to convergence) that did not see it: stratified k-fold by groups
    (`groups`: one id per image, None: each image alone), each fold predicted by a classifier fitted on the
    others. Copies and look-alikes must share a group: a copy in the training folds, wrong label and all, is
    memorised and vouches for its held-out twin. `features`: one row per image. Returns a list of rows in
    `classes` order."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    check_folds(labels, classes, folds, groups)
    x = np.asarray(features, dtype=np.float64)
    y = np.array([classes.index(label) for label in labels])
    probs = np.zeros((len(y), len(classes)))
    # cross_val_predict's columns are the classes present, in order; a class no image has keeps probability 0
    probs[:, np.unique(y)] = cross_val_predict(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), x, y, method="predict_proba",
        groups=np.arange(len(y)) if groups is None else groups,
        cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed))
    return probs.tolist()


def training_label_issues(folder, states, samples, classes, folds, seed, groups):
    """label_issues.csv and .png of the training images in `folder`, from out-of-sample probabilities by k-fold on
    their features `states` ({image path: feature}), copies and look-alikes in one fold (`groups`: fold_groups).
    Returns the CSV's rows."""
    paths = [s["image"] for s in samples]
    labels = [s["label"] for s in samples]
    features = [states[str(p)].float().numpy() for p in paths]
    probs = out_of_sample_probabilities(features, labels, classes, folds, seed, groups)
    return write_label_issues(folder, paths, labels, probs, classes, what="training images")


def _thumbnail(path):
    """The image shrunk to fit THUMB, or None where it cannot be read now."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB, THUMB))
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            return image
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def contact_sheet(rows, found, total, what):
    """A grid of thumbnails of the issues' images (label_issues.csv rows), each captioned with its rank, file name,
    given and predicted class and the predicted class's probability."""
    shown = f"the first {len(rows)} shown" if rows else "none to show"
    return thumbnail_sheet(f"Suspected label errors: {found} of {total} {what} ({shown})", [
        (_thumbnail(path), [(f"{rank}. {Path(path).name}", (90, 90, 90)), (f"given: {given}", (170, 20, 20)),
                            (f"model: {predicted} {float(probability):.2f}", (20, 110, 20))])
        for rank, path, given, predicted, probability, *_ in rows], THUMB, SHEET_COLUMNS)
