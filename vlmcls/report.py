"""Reports: metrics, the original's console lines, predictions.csv, report.json and the confusion-matrix picture."""
import io
import json
from pathlib import Path

from PIL import Image

from .files import atomic_write, write_csv, write_json
from .prompt import NO_CLASS

# predicted_class is "uncertain" where the top probability is below the threshold; probability, top2 and best_guess
# keep the best guess; probabilities: every class's, as JSON (score mode; empty in generate
# mode), which label_issues.py reads
PREDICTION_HEADER = ["path", "true_class", "predicted_class", "probability", "top2", "answer", "best_guess",
                     "top2_probabilities", "probabilities"]


def multi_label_columns(classes):
    """predictions.csv's further columns with a multi-label model: the labels predicted (joined by ';'; also its
    predicted_class, true_class being the true labels as a labels CSV writes them) and each class's probability."""
    return ["predicted_labels"] + [f"probability_{name}" for name in classes]


def metrics(true, pred, classes):
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows: true class).

    Predictions that name no class get a column of their own and count as wrong.
    """
    columns = classes + ([NO_CLASS] if NO_CLASS in pred else [])
    index = {c: i for i, c in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in classes]
    for t, p in zip(true, pred):
        matrix[index[t]][index[p]] += 1
    per_class = {}
    for i, name in enumerate(classes):
        tp = matrix[i][i]
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support, "correct": tp}
    correct = sum(matrix[i][i] for i in range(len(classes)))
    counts = [[per_class[c][k] for c in classes] for k in ("correct", "support")]
    return {"accuracy": correct / len(true) if true else 0.0, "correct": correct, "total": len(true),
            "macro_f1": macro_f1(counts[0], [sum(row[i] for row in matrix) for i in range(len(classes))], counts[1]),
            "per_class": per_class, "labels": columns, "confusion_matrix": matrix}


def macro_f1(correct, predicted, actual):
    """Macro-F1 from per-class counts (right predictions, predictions, true labels of each class): the mean F1,
    2 x correct / (predicted + actual), of the classes present among the true labels. The one definition: metrics()
    and the accuracy benchmark's bootstrap (numpy arrays, hundreds of thousands of calls) both use it."""
    import numpy as np
    correct, predicted, actual = (np.asarray(x, dtype=float) for x in (correct, predicted, actual))
    present = actual > 0
    return float(np.mean(2 * correct[present] / (predicted[present] + actual[present]))) if present.any() else 0.0


def print_accuracy(result):
    """The original scripts' console lines, then a table of precision, recall and F1."""
    print("\n--- Category Accuracy Results ---")
    for name, m in result["per_class"].items():
        if m["support"]:
            print(f"type:{name},correct_rate:{m['recall']:.4f} ({m['correct']}/{m['support']})")
    print(f"\n{'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for name, m in result["per_class"].items():
        print(f"{name[:23]:<24}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>9}")
    print(f"{'macro F1':<24}{'':>20}{result['macro_f1']:>10.4f}{result['total']:>9}")
    print("\n--- Overall Accuracy ---")
    print(f"Total Correct: {result['correct']}/{result['total']}, Accuracy: {result['accuracy']:.4f}")


def best_guess(result):
    """The class a result would predict were it sure: its top class (generate mode: its prediction)."""
    return result["top2"][0] if result["probs"] else result["pred"]


def prediction_rows(paths, results, true=None):
    """predictions.csv's rows (PREDICTION_HEADER; a multi-label result's multi_label_columns too), and where a
    result was explained its point (explain.COLUMNS)."""
    rows = []
    for i, (path, r) in enumerate(zip(paths, results)):
        probs = r["probs"]
        rows.append([str(path), true[i] if true else "", r["pred"], f"{probs[best_guess(r)]:.6f}" if probs else "",
                     " | ".join(r["top2"]), r["answer"], best_guess(r),
                     " | ".join(f"{probs[c]:.6f}" for c in r["top2"]) if probs else "",
                     json.dumps({c: float(f"{p:.6g}") for c, p in probs.items()}) if probs else ""]
                    + ([";".join(r["labels"])] + [f"{p:.6f}" for p in probs.values()] if "labels" in r else [])
                    + [f"{v:.1f}" for v in r.get("explanation", ())])
    return rows


def write_report(report_dir, paths, results, true, classes, extra):
    """report.json, predictions.csv and confusion_matrix.png in report_dir; returns the metrics."""
    write_csv(Path(report_dir) / "predictions.csv", PREDICTION_HEADER, prediction_rows(paths, results, true))
    return write_summary(report_dir, true, [best_guess(r) for r in results], classes, extra)


def write_summary(report_dir, true, pred, classes, extra):
    """report.json and confusion_matrix.png in report_dir, from the true and predicted classes; returns the
    metrics."""
    report_dir = Path(report_dir)
    result = metrics(true, pred, classes)
    write_json(report_dir / "report.json", {**extra, **result})
    buffer = io.BytesIO()
    draw_confusion_matrix(result["confusion_matrix"], classes, result["labels"], result["accuracy"]).save(buffer, "PNG")
    atomic_write(report_dir / "confusion_matrix.png", buffer.getvalue())
    return result


def font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def fit_text(draw, text, font, width):
    """The text, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def thumbnail_sheet(title, cells, thumb, columns):
    """A contact sheet: `title`, then a grid of `cells` (a thumbnail at most `thumb` pixels a side, or None for an
    image that cannot be read, and its caption lines as (text, colour)), `columns` a row."""
    from PIL import ImageDraw
    large, small = font(15), font(12)
    lines_each = max((len(caption) for _, caption in cells), default=3)
    cell_w, cell_h, pad, top = thumb + 16, thumb + 12 + 18 * lines_each, 8, 40
    columns = max(min(len(cells), columns), 1)
    lines = -(-len(cells) // columns)
    title_w = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=large)  # the sheet is as wide
    sheet = Image.new("RGB", (max(columns * cell_w + 2 * pad, 520, int(title_w) + 2 * pad),
                              top + max(lines, 1) * cell_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 10), title, fill="black", font=large)
    for n, (image, caption) in enumerate(cells):
        x, y = pad + (n % columns) * cell_w, top + (n // columns) * cell_h
        if image is None:
            draw.rectangle([x + 8, y, x + 8 + thumb, y + thumb], fill=(220, 220, 220))
            draw.text((x + 8 + thumb // 2, y + thumb // 2), "cannot be read", fill="black", font=small, anchor="mm")
        else:
            sheet.paste(image, (x + 8 + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        for k, (text, colour) in enumerate(caption):
            draw.text((x + 8, y + thumb + 4 + 18 * k), fit_text(draw, text, small, thumb), fill=colour, font=small)
    return sheet


def draw_confusion_matrix(matrix, rows, columns, accuracy):
    """A heat-map of counts, rows the true class and columns the prediction, each row shaded by its share."""
    from PIL import ImageDraw
    cell, large, small = 64, font(15), font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(measure.textlength(n, font=small)) for n in rows + columns) + 16
    left, top = label_w + 24, label_w + 48
    width, height = left + cell * len(columns) + 16, top + cell * len(rows) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), f"Confusion matrix (accuracy {accuracy:.4f})", fill="black", font=large)
    for i, name in enumerate(rows):
        total = sum(matrix[i]) or 1
        y = top + i * cell
        draw.text((left - 8, y + cell // 2), name, fill="black", font=small, anchor="rm")
        for j, count in enumerate(matrix[i]):
            share = count / total
            shade = (int(255 - 200 * share), int(255 - 140 * share), 255)
            x = left + j * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline=(200, 200, 200))
            draw.text((x + cell // 2, y + cell // 2), str(count), font=large, anchor="mm",
                      fill="white" if share > 0.6 else "black")
    for j, name in enumerate(columns):
        label = Image.new("RGB", (label_w, 20), "white")
        ImageDraw.Draw(label).text((label_w - 4, 10), name, fill="black", font=small, anchor="rm")
        image.paste(label.rotate(90, expand=True), (left + j * cell + cell // 2 - 10, top - label_w - 4))
    draw.text((left - 8, top - 8), "true \\ predicted", fill=(90, 90, 90), font=small, anchor="rb")
    draw.text((left, height - 28), "rows: true class, columns: predicted class", fill=(90, 90, 90), font=small)
    return image


def print_comparison(model_paths, outcomes, classes):
    names = [Path(p).name[:18] for p in model_paths]
    print("\n--- Side by side (per-class recall, accuracy, macro F1) ---")
    print(f"{'class':<24}" + "".join(f"{n:>20}" for n in names))
    for c in classes:
        print(f"{c[:23]:<24}" + "".join(f"{o['per_class'][c]['recall']:>20.4f}" for o in outcomes))
    print(f"{'accuracy':<24}" + "".join(f"{o['accuracy']:>20.4f}" for o in outcomes))
    print(f"{'macro F1':<24}" + "".join(f"{o['macro_f1']:>20.4f}" for o in outcomes))
