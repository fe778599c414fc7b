"""Measures of class probabilities against labels: NLL, Brier score, expected calibration error, the risk–coverage
table of selective prediction, and their pictures (reliability.png, coverage.png). Plain Python: the ONNX runtime
computes them without torch (netcal, which has them, imports torch and pulls matplotlib, pyro and gpytorch)."""
import math

from PIL import Image, ImageDraw

from .report import font  # the confusion matrix's font

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al. 2017)
COVERAGES = [1.0, 0.95, 0.9, 0.8, 0.7, 0.5]  # shares of the images kept in the reports' risk–coverage table
TINY = 1e-45  # about the smallest float32 probability: a class whose probability underflowed to 0


def nll(probs, labels):
    """Mean negative log-likelihood of the true classes (`probs`: one {class: probability} per image)."""
    return sum(-math.log(max(p[label], TINY)) for p, label in zip(probs, labels)) / len(labels)


def brier(probs, labels):
    """Mean over images of the squared distance between the probabilities and the one-hot true class (0 best, 2
    worst), as scikit-learn's multi-class brier_score_loss."""
    return sum(sum((q - (name == label)) ** 2 for name, q in p.items()) for p, label in zip(probs, labels)) / \
        len(labels)


def top_probability(probs):
    return max(probs.values())


def reliability(confidences, correct, bins=ECE_BINS):
    """Per equal-width bin of confidence ((i/bins, (i+1)/bins]): [{"low", "high", "count", "confidence" (mean),
    "accuracy"}]; an empty bin has None for both means."""
    members = [[] for _ in range(bins)]
    for c, ok in zip(confidences, correct):
        members[min(max(math.ceil(c * bins) - 1, 0), bins - 1)].append((c, ok))
    return [{"low": i / bins, "high": (i + 1) / bins, "count": len(m),
             "confidence": sum(c for c, _ in m) / len(m) if m else None,
             "accuracy": sum(ok for _, ok in m) / len(m) if m else None} for i, m in enumerate(members)]


def ece(confidences, correct, bins=ECE_BINS):
    """Expected calibration error: the images' share-weighted gap between accuracy and mean confidence per bin."""
    return sum(b["count"] * abs(b["accuracy"] - b["confidence"])
               for b in reliability(confidences, correct, bins) if b["count"]) / len(confidences)


def measures(probs, labels):
    """{"nll", "brier", "ece"} of one {class: probability} per image and the true classes; the prediction is the most
    probable class."""
    confidences = [top_probability(p) for p in probs]
    correct = [max(p, key=p.get) == label for p, label in zip(probs, labels)]
    return {"nll": nll(probs, labels), "brier": brier(probs, labels), "ece": ece(confidences, correct)}


def by_confidence(confidences, correct):
    """(confidence, correct) pairs, most confident first."""
    return sorted(zip(confidences, map(bool, correct)), key=lambda pair: -pair[0])


def kept_accuracy(pairs, threshold):
    """(share kept, accuracy on them) of the images whose confidence is at least `threshold`."""
    kept = [ok for c, ok in pairs if c >= threshold]
    return len(kept) / len(pairs), (sum(kept) / len(kept) if kept else None)


def risk_coverage(confidences, correct, coverages=COVERAGES):
    """For each share of the images to keep, the most confident that share (rounded up; ties at the threshold are
    kept too): [{"coverage" asked, "threshold" (the least confidence kept), "kept" (the share kept), "accuracy"}]."""
    pairs = by_confidence(confidences, correct)
    table = []
    for coverage in coverages:
        threshold = pairs[max(math.ceil(coverage * len(pairs)), 1) - 1][0]
        kept, accuracy = kept_accuracy(pairs, threshold)
        table.append({"coverage": coverage, "threshold": threshold, "kept": kept, "accuracy": accuracy})
    return table


def curve(confidences, correct):
    """[(share kept, accuracy on them)] keeping the k most confident images, for k = 1 .. all."""
    pairs, right, points = by_confidence(confidences, correct), 0, []
    for k, (_, ok) in enumerate(pairs, 1):
        right += ok
        points.append((k / len(pairs), right / k))
    return points


def axes(draw, box, x_label, y_label, title, y_low=0.0):
    """Axes in `box` (left, top, right, bottom): x from 0 to 1, y from y_low to 1, five ticks each; returns a
    function from (x, y) to pixels."""
    left, top, right, bottom = box
    small = font(12)
    draw.rectangle(box, outline=(120, 120, 120))
    for i in range(6):
        t = i / 5
        x, y = left + t * (right - left), bottom - t * (bottom - top)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((x, bottom + 8), f"{t:.1f}", fill="black", font=small, anchor="mt")
        draw.text((left - 8, y), f"{y_low + t * (1 - y_low):.2f}", fill="black", font=small, anchor="rm")
    draw.text(((left + right) / 2, bottom + 28), x_label, fill="black", font=font(13), anchor="mt")
    draw.text((left, top - 12), f"{title}    (y: {y_label})", fill="black", font=font(14), anchor="lb")
    return lambda x, y: (left + x * (right - left), bottom - (y - y_low) / (1 - y_low) * (bottom - top))


def draw_reliability(panels):
    """Reliability diagrams side by side, one per (title, reliability() bins, ECE): each bin's accuracy as a bar
    at its confidence range, the diagonal where accuracy equals confidence, and the bin's mean confidence marked."""
    size, margin = 300, 60
    image = Image.new("RGB", (len(panels) * (size + 2 * margin), size + 2 * margin + 20), "white")
    draw = ImageDraw.Draw(image)
    for i, (title, bins, error) in enumerate(panels):
        left = i * (size + 2 * margin) + margin
        at = axes(draw, (left, margin, left + size, margin + size), "confidence (top probability)", "accuracy",
                   f"{title}: ECE {error:.4f}")
        for b in bins:
            if not b["count"]:
                continue
            x0, y0 = at(b["low"], b["accuracy"])
            x1, y1 = at(b["high"], 0)
            draw.rectangle([x0 + 1, y0, x1 - 1, y1], fill=(90, 130, 220), outline=(40, 60, 140))
            cx, cy = at(b["confidence"], b["confidence"])
            draw.line([x0 + 1, cy, x1 - 1, cy], fill=(220, 60, 40), width=2)
        draw.line([*at(0, 0), *at(1, 1)], fill=(120, 120, 120), width=1)
    draw.text((margin, size + 2 * margin), "bars: accuracy per bin (15 equal-width bins); red: the bin's mean "
              "confidence; grey: perfect calibration", fill=(90, 90, 90), font=font(12))
    return image


def draw_coverage(points, threshold_point=None):
    """Accuracy on the images kept against the share kept (most confident first), with the run's threshold marked
    (`threshold_point`: (share kept, accuracy, threshold))."""
    size, margin = 360, 60
    image = Image.new("RGB", (size + 2 * margin, size + 2 * margin + 20), "white")
    draw = ImageDraw.Draw(image)
    low = min(a for _, a in points)
    floor = math.floor(low * 10) / 10 if low < 1 else 0.9  # the accuracy axis from the tenth below the lowest
    scale = axes(draw, (margin, margin, margin + size, margin + size), "share of images kept (coverage)",
                  "accuracy on them", "Accuracy on the images kept", y_low=floor)
    draw.line([scale(x, y) for x, y in points] if len(points) > 1 else [*scale(*points[0])] * 2, fill=(40, 90, 200),
              width=2)
    if threshold_point:
        kept, accuracy, threshold = threshold_point
        x, y = scale(kept, accuracy)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=(220, 60, 40), width=2)
        draw.text((x - 8, y + 8), f"threshold {threshold:.3f}", fill=(220, 60, 40), font=font(12), anchor="rt")
    draw.text((margin, size + 2 * margin), "the most confident images first; the rest would be 'uncertain'",
              fill=(90, 90, 90), font=font(12))
    return image
