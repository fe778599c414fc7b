"""Suspected label errors: from the given labels and out-of-sample class probabilities, the images whose label the
model confidently disagrees with (confident learning, cleanlab), ranked, as label_issues.csv and a contact sheet of
the top ones; and those probabilities for training images by k-fold on their features."""
import io
import json
from collections import Counter
from pathlib import Path

from PIL import Image

from .cli import UserError
from .files import atomic_write, write_csv
from .report import font

ISSUES_CSV = "label_issues.csv"
ISSUES_PNG = "label_issues.png"
ISSUE_HEADER = ["rank", "path", "given_class", "predicted_class", "predicted_probability", "given_class_probability",
                "label_quality"]
SHEET_COUNT = 24  # the top issues the contact sheet shows
SHEET_COLUMNS = 6
THUMB = 160  # pixels: a thumbnail's longest edge on the contact sheet


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
    issues = ranked_issues(labels, probs, classes)
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


def label_issues_of_run(folder, rows, classes):
    """label_issues.csv and .png of an evaluation run with labels, from its predictions.csv rows (their
    `probabilities` column: each class's probability as JSON). A run without class probabilities (generate mode)
    has none: it says so and removes those of an earlier run in the folder, which would no longer match."""
    if not rows or any(not r.get("probabilities") for r in rows):
        for name in (ISSUES_CSV, ISSUES_PNG):
            (Path(folder) / name).unlink(missing_ok=True)
        print("no suspected label errors listed: they need each class's probability, which generate mode does not "
              "give (score mode does)")
        return None
    probs = [[json.loads(r["probabilities"])[c] for c in classes] for r in rows]
    return write_label_issues(folder, [r["path"] for r in rows], [r["true_class"] for r in rows], probs, classes)


def check_folds(labels, classes, folds):
    """Refuse a k-fold that cannot give every image an out-of-sample probability: fewer than 2 folds, or more
    folds than the rarest class has images (every fold holds out at least one image of every class)."""
    if folds < 2:
        raise UserError(f"label_issue_folds={folds}: k-fold needs at least 2 folds (0 turns it off)")
    counts = Counter(labels)
    present = [c for c in classes if counts[c]]
    if len(present) < 2:
        raise UserError(f"label_issue_folds={folds}: the training images hold {len(present)} class(es); a label "
                        "can only be doubted against another class")
    rarest = min(present, key=lambda c: counts[c])
    if counts[rarest] < folds:
        raise UserError(f"label_issue_folds={folds}: class {rarest!r} has only {counts[rarest]} training image(s), "
                        f"and each fold holds out at least one image of every class: use at most {counts[rarest]} "
                        "folds")


def out_of_sample_probabilities(features, labels, classes, folds, seed):
    """Each image's class probabilities from a linear classifier (multinomial logistic regression on standardised
    features: the frozen-backbone head, fitted to convergence) that did not see it: stratified k-fold, each fold
    predicted by a classifier fitted on the others. `features`: one row per image. Returns a list of rows in
    `classes` order."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    check_folds(labels, classes, folds)
    x = np.asarray(features, dtype=np.float64)
    y = np.array([classes.index(label) for label in labels])
    probs = np.zeros((len(y), len(classes)))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
        probs[np.ix_(held, fitted[-1].classes_)] = fitted.predict_proba(x[held])
    return probs.tolist()


def training_label_issues(folder, states, samples, classes, folds, seed):
    """label_issues.csv and .png of the training images in `folder`, from out-of-sample probabilities by k-fold on
    their features `states` ({image path: feature}). Returns the CSV's rows."""
    paths = [s["image"] for s in samples]
    labels = [s["label"] for s in samples]
    features = [states[str(p)].float().numpy() for p in paths]
    probs = out_of_sample_probabilities(features, labels, classes, folds, seed)
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


def _fit(draw, text, font, width):
    """The text, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(rows, found, total, what):
    """A grid of thumbnails of the issues' images (label_issues.csv rows), each captioned with its rank, file name,
    given and predicted class and the predicted class's probability."""
    from PIL import ImageDraw
    large, small = font(15), font(12)
    cell_w, cell_h, pad, top = THUMB + 16, THUMB + 66, 8, 40
    columns = max(min(len(rows), SHEET_COLUMNS), 1)
    lines = -(-len(rows) // columns)
    sheet = Image.new("RGB", (max(columns * cell_w + 2 * pad, 520), top + max(lines, 1) * cell_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    shown = f"the first {len(rows)} shown" if rows else "none to show"
    draw.text((pad, 10), f"Suspected label errors: {found} of {total} {what} ({shown})", fill="black", font=large)
    for n, (rank, path, given, predicted, probability, *_) in enumerate(rows):
        x, y = pad + (n % columns) * cell_w, top + (n // columns) * cell_h
        thumb = _thumbnail(path)
        if thumb is None:
            draw.rectangle([x + 8, y, x + 8 + THUMB, y + THUMB], fill=(220, 220, 220))
            draw.text((x + 8 + THUMB // 2, y + THUMB // 2), "cannot be read", fill="black", font=small, anchor="mm")
        else:
            sheet.paste(thumb, (x + 8 + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        caption = [(f"{rank}. {Path(path).name}", (90, 90, 90)), (f"given: {given}", (170, 20, 20)),
                   (f"model: {predicted} {float(probability):.2f}", (20, 110, 20))]
        for k, (text, colour) in enumerate(caption):
            draw.text((x + 8, y + THUMB + 4 + 18 * k), _fit(draw, text, small, THUMB), fill=colour, font=small)
    return sheet
