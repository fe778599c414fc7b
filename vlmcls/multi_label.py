"""Multi-label decisions and measures: per-class thresholds chosen on validation images, the measures of
report.json (scikit-learn's), their console lines and the per-class precision–recall curves (pr_curves.png)."""
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .confidence import axes
from .files import atomic_write, write_json
from .labels import present
from .report import font

DEFAULT_THRESHOLD = 0.5  # each class's threshold without validation images, or where they hold none of it
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # one per class, in turn


def truth_matrix(labels, classes):
    """(images, classes) booleans: each image's labels ({label: weight}) present (labels.present) or not."""
    return np.array([present(weights, classes) for weights in labels], dtype=bool).reshape(len(labels), len(classes))


def probability_matrix(probs, classes):
    """(images, classes) probabilities from one {class: probability} per image."""
    return np.array([[p[name] for name in classes] for p in probs], dtype=float).reshape(len(probs), len(classes))


def fit_thresholds(probs, labels, classes):
    """{class: threshold} maximising each class's F1 on the validation images (`probs`: one {class: probability}
    each, `labels`: their {label: weight}); a label is predicted where its probability is at least its threshold.
    Of thresholds with the same F1 the largest is taken (the fewest labels predicted); a class that no validation
    image carries keeps DEFAULT_THRESHOLD."""
    from sklearn.metrics import precision_recall_curve
    truth, scores = truth_matrix(labels, classes), probability_matrix(probs, classes)
    chosen = {}
    for j, name in enumerate(classes):
        if not truth[:, j].any():
            chosen[name] = DEFAULT_THRESHOLD
            continue
        precision, recall, thresholds = precision_recall_curve(truth[:, j], scores[:, j])
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=precision + recall > 0)[:-1]  # the last point has no threshold
        best = np.flatnonzero(f1 == f1.max())[-1]  # thresholds increase: the last of the best is the largest
        chosen[name] = float(thresholds[best])
    return chosen


def chosen_thresholds(results, data, classes):
    """classes.json's record of a multi-label model's thresholds: fit_thresholds' on the validation results (one
    per image of the validation `data`), or DEFAULT_THRESHOLD each where there are none (`data` None), and how they
    were chosen."""
    if data is None:
        return {"thresholds": dict.fromkeys(classes, DEFAULT_THRESHOLD),
                "thresholds_chosen": f"{DEFAULT_THRESHOLD} each: no validation images"}
    labels = [s["labels"] for s in data["samples"]]
    return {"thresholds": fit_thresholds([r["probs"] for r in results], labels, classes),
            "thresholds_chosen": f"F1-optimal per class on {len(labels)} validation images (ties: the largest)"}


def average_precisions(truth, scores):
    """Each class's average precision (scikit-learn's) from (images, classes) truth and scores, None for a class
    that no image carries (AP means nothing without one)."""
    from sklearn.metrics import average_precision_score
    return [float(average_precision_score(truth[:, j], scores[:, j])) if truth[:, j].any() else None
            for j in range(truth.shape[1])]


def mean_average_precision(ap):
    """report.json's mAP: the macro mean of average_precisions' values over the classes some image carries (None
    where none does)."""
    carried = [a for a in ap if a is not None]
    return float(np.mean(carried)) if carried else None


def measures(labels, probs, predicted, classes):
    """report.json's multi-label measures of images with true `labels` ({label: weight} each), `probs` ({class:
    probability} each) and `predicted` (the labels predicted, a list each), by scikit-learn: per class precision,
    recall, F1, average precision (AP) and support; mean_average_precision (the macro mean of AP over the classes
    some image carries: AP means nothing without one), micro and macro F1, exact-set accuracy (every label right)
    and Hamming loss (the share of wrong image-class decisions)."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support
    truth, scores = truth_matrix(labels, classes), probability_matrix(probs, classes)
    decided = np.array([[name in chosen for name in classes] for chosen in predicted], dtype=bool)
    decided = decided.reshape(len(predicted), len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(truth, decided, average=None, zero_division=0)
    ap = average_precisions(truth, scores)
    per_class = {name: {"precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
                        "average_precision": ap[j], "support": int(support[j])} for j, name in enumerate(classes)}
    return {"total": len(labels),
            "mean_average_precision": mean_average_precision(ap),
            "micro_f1": float(f1_score(truth, decided, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth, decided, average="macro", zero_division=0)),
            "exact_set_accuracy": float(accuracy_score(truth, decided)),
            "hamming_loss": float(hamming_loss(truth, decided)), "per_class": per_class}


def print_measures(result, thresholds):
    """The console lines of measures(), with each class's threshold."""
    print(f"\n{'class':<24}{'threshold':>10}{'precision':>10}{'recall':>10}{'f1':>10}{'AP':>10}{'support':>9}")
    for name, m in result["per_class"].items():
        ap = f"{m['average_precision']:.4f}" if m["average_precision"] is not None else "-"
        print(f"{name[:23]:<24}{thresholds[name]:>10.4f}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}"
              f"{ap:>10}{m['support']:>9}")
    mean_ap = result["mean_average_precision"]
    print(f"\nmAP {mean_ap:.4f}" if mean_ap is not None else "\nmAP - (no image carries a label)",
          f"micro-F1 {result['micro_f1']:.4f}, macro-F1 {result['macro_f1']:.4f}, exact-set accuracy "
          f"{result['exact_set_accuracy']:.4f}, Hamming loss {result['hamming_loss']:.4f} ({result['total']} images)",
          sep=", ")


def draw_pr_curves(labels, probs, classes):
    """Each class's precision–recall curve (scikit-learn's), with its AP in the legend."""
    from sklearn.metrics import average_precision_score, precision_recall_curve
    truth, scores = truth_matrix(labels, classes), probability_matrix(probs, classes)
    size, margin = 360, 60
    legend = 18 * len(classes) + 10
    image = Image.new("RGB", (size + 2 * margin, size + 2 * margin + 20 + legend), "white")
    draw = ImageDraw.Draw(image)
    at = axes(draw, (margin, margin, margin + size, margin + size), "recall", "precision",
               "Precision-recall per class")
    for j, name in enumerate(classes):
        colour = COLOURS[j % len(COLOURS)]
        y = size + 2 * margin + 10 + 18 * j
        if not truth[:, j].any():
            draw.text((margin, y), f"{name}: no image carries it", fill=colour, font=font(12))
            continue
        precision, recall, _ = precision_recall_curve(truth[:, j], scores[:, j])
        draw.line([at(r, p) for r, p in zip(recall, precision)], fill=colour, width=2)
        ap = average_precision_score(truth[:, j], scores[:, j])
        draw.text((margin, y), f"{name}: AP {ap:.4f}", fill=colour, font=font(12))
    return image


def write_report(report_dir, labels, probs, predicted, classes, extra):
    """report.json (`extra`, then measures()) and pr_curves.png in report_dir; returns the measures."""
    report_dir = Path(report_dir)
    result = measures(labels, probs, predicted, classes)
    write_json(report_dir / "report.json", {**extra, **result})
    buffer = io.BytesIO()
    draw_pr_curves(labels, probs, classes).save(buffer, "PNG")
    atomic_write(report_dir / "pr_curves.png", buffer.getvalue())
    return result
