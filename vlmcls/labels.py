"""Labels given in a CSV (`image,labels`, several labels per image, soft weights): reading and checking it, and the
split of multi-label data, stratified per label, copies and look-alikes kept together (docs/training.md)."""
import csv
import io
import math
from pathlib import Path

import numpy as np

from .cli import UserError

COLUMNS = ("image", "labels")  # the CSV's required columns; others are ignored
PRESENT = 0.5  # the measures and the thresholds' choice count a label present where its weight is at least this


def parse_labels(text, classes, where):
    """{label: weight} of one row's `labels` field ("Dusty:0.7;Clean:0.3"; no weight = 1)."""
    if not text or not text.strip():
        raise UserError(f"{where}: empty label list (give one or more labels joined by ';')")
    weights = {}
    for part in text.split(";"):
        name, *weight = [x.strip() for x in part.split(":")]
        if not name or len(weight) > 1:
            raise UserError(f"{where}: malformed label {part.strip()!r} in {text.strip()!r} (expected name or "
                            "name:weight, joined by ';')")
        if name in weights:
            raise UserError(f"{where}: label {name!r} given twice in {text.strip()!r}")
        if classes and name not in classes:
            raise UserError(f"{where}: unknown label {name!r} (the classes: {', '.join(classes)})")
        try:
            value = float(weight[0]) if weight else 1.0
        except ValueError:
            value = math.nan
        if not 0 < value <= 1:  # also refuses nan
            raise UserError(f"{where}: bad weight {weight[0]!r} of label {name!r} (a weight is a number in (0, 1])")
        weights[name] = value
    return weights


def read_labels_csv(csv_path, classes=()):
    """The images of a labels CSV and their labels. `classes`: the class names in order, a label outside them
    refused; empty: every label the CSV uses, sorted. Returns (classes, {path: {label: weight}} with the labels in
    class order, {path: the CSV line naming it}); each path is the CSV's folder joined with its `image`."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: no such file (the labels CSV, columns {','.join(COLUMNS)})")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{csv_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    if missing := [c for c in COLUMNS if c not in header]:
        raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)} (the header has: "
                        f"{', '.join(header) or 'nothing'}; expected {','.join(COLUMNS)})")
    reader.fieldnames = header
    weights_of, line_of, first_line = {}, {}, {}
    for row in reader:
        where = f"{csv_path} line {reader.line_num}"
        if None in row:  # more fields than the header: labels joined by ',' unquoted
            raise UserError(f"{where}: {len(header) + len(row[None])} fields, the header has {len(header)} "
                            "(join the labels with ';')")
        image = (row["image"] or "").strip()
        if not image:
            raise UserError(f"{where}: no image path")
        path = csv_path.parent / image
        if not path.is_file():
            raise UserError(f"{where}: {image}: no such file (paths are relative to the CSV's folder, "
                            f"{csv_path.parent})")
        if (key := path.resolve()) in first_line:
            raise UserError(f"{where}: {image} is listed again (first on line {first_line[key]}); give each image "
                            "one row")
        first_line[key] = line_of[path] = reader.line_num
        weights_of[path] = parse_labels(row["labels"], classes, where)
    if not weights_of:
        raise UserError(f"{csv_path}: no rows under the header {','.join(COLUMNS)}")
    classes = list(classes) or sorted({name for weights in weights_of.values() for name in weights})
    order = {name: i for i, name in enumerate(classes)}
    return classes, {p: dict(sorted(w.items(), key=lambda kv: order[kv[0]])) for p, w in weights_of.items()}, line_of


def single_labels(weights_of):
    """{path: its one label} where every image has exactly one label of weight 1 (the data of a class-folder
    layout), else None: the data set is multi-label."""
    if all(len(w) == 1 and next(iter(w.values())) == 1 for w in weights_of.values()):
        return {p: next(iter(w)) for p, w in weights_of.items()}
    return None


def present(weights, classes):
    """Whether each of `classes` is present in one image's labels ({label: weight}): a weight of at least PRESENT
    (a soft label most annotators gave)."""
    return [weights.get(name, 0.0) >= PRESENT for name in classes]


def label_text(weights):
    """One image's labels as the CSV writes them ("Clean;Dusty:0.7")."""
    return ";".join(name if w == 1 else f"{name}:{w}" for name, w in weights.items())


def split_multilabel(groups, weights_of, classes, held_out_ratio, seed):
    """Split groups of images (group_duplicates') holding out about `held_out_ratio` of them, stratified per label
    by iterative stratification (Sechidis et al. 2011, `iterative-stratification`), seeded. A group carries every
    label any of its images carries (any weight). Then, where the stratification left a label with two or more
    groups on one side only (rare labels: it fills the larger side first), or a label of one group held out only,
    a group is moved across if no label leaves the side it comes from. Returns (kept, held out) paths, sorted."""
    from iterstrat.ml_stratifiers import IterativeStratification
    column = {name: j for j, name in enumerate(classes)}
    has = np.zeros((len(groups), len(classes)), dtype=bool)
    for i, group in enumerate(groups):
        for path in group:
            has[i, [column[name] for name in weights_of[path]]] = True
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(groups))  # the algorithm takes each label's groups in order
    held = np.zeros(len(groups), dtype=bool)
    if len(groups) >= 2:
        held[order] = IterativeStratification(has[order], np.array([1 - held_out_ratio, held_out_ratio]), rng) == 1
    total = has.sum(0)
    needed = {False: total >= 1, True: total >= 2}  # where a label must be: kept (trained on), held out
    for j in np.argsort(total, kind="stable"):  # rarest labels first
        for side in (False, True):
            if needed[side][j] and not has[held == side, j].any():
                # a group with label j from the other side, whose moving takes no label needed there away
                source = held != side
                there = has[source].sum(0)
                movable = [i for i in order if source[i] and has[i, j]
                           and ((there >= 2) | ~needed[not side])[has[i]].all()]
                if movable:
                    held[min(movable, key=lambda i: has[i].sum())] = side
    kept = sorted(p for i in np.flatnonzero(~held) for p in groups[i])
    return kept, sorted(p for i in np.flatnonzero(held) for p in groups[i])
