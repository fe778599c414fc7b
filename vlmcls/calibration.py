"""The class bias: score mode's log-probabilities shifted against the training class frequencies (logit adjustment)."""
import math
import random
import statistics
from collections import Counter

from .models import saved_classes
from .objectives import ranked
from .report import metrics

STRENGTHS = [i / 10 for i in range(11)]  # tried: 0 (scores as trained) to 1 (every class equally likely a priori)


def frequency_bias(train_labels, classes, strength):
    """-strength x log(each class's share of the training labels): at 1, the class prior the training data taught
    is taken out of the scores, so a rare class is no longer ranked down for being rare."""
    counts = Counter(train_labels)
    total = sum(counts.values())
    return [-strength * math.log(max(counts[name], 1) / total) for name in classes]


def fit_class_bias(results, data, train_labels, metric, resamples=200, seed=0):
    """The class bias for the validation results of `data`: the weakest strength in STRENGTHS whose score by
    `metric` is within one standard error of the best strength's (the one-standard-error rule: the validation
    images are few, so a stronger bias is taken only where it clearly scores better). The standard error is the
    spread of the best strength's score over seeded bootstrap resamples of the images. Returns what classes.json
    records."""
    labels, classes = [s["label"] for s in data["samples"]], data["classes"]
    biases = [frequency_bias(train_labels, classes, strength) for strength in STRENGTHS]
    predicted = [[r["pred"] for r in with_class_bias(results, classes, bias)] for bias in biases]
    scores = [metrics(labels, pred, classes)[metric] for pred in predicted]
    best = scores.index(max(scores))
    rng, resampled = random.Random(seed), []
    for _ in range(resamples):
        picks = [rng.randrange(len(labels)) for _ in labels]
        resampled.append(metrics([labels[i] for i in picks], [predicted[best][i] for i in picks], classes)[metric])
    error = statistics.stdev(resampled)
    chosen = next(i for i, score in enumerate(scores) if score >= scores[best] - error)
    return {"strength": STRENGTHS[chosen], "bias": dict(zip(classes, biases[chosen])), "metric": metric,
            "validation_before": scores[0], "validation_after": scores[chosen], "validation_best": scores[best],
            "standard_error": error, "validation_images": len(labels)}


def with_class_bias(results, classes, bias):
    """Results ranked again with `bias` (one number per class) added to each class's log-probability, as the class
    bias does; results without probabilities (generate mode) stay as they are."""
    shifted = []
    for result in results:
        if result["probs"] is None:
            shifted.append(result)
            continue
        # 1e-45: about the smallest float32 probability, for a class whose probability underflowed to 0
        logits = [math.log(max(result["probs"][name], 1e-45)) + b for name, b in zip(classes, bias)]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]
        total = sum(weights)
        shifted.append(ranked(classes, [w / total for w in weights]))
    return shifted


def describe(class_bias):
    """The console line of a fitted class bias."""
    return (f"class bias of strength {class_bias['strength']:.1f}: validation {class_bias['metric']} "
            f"{class_bias['validation_before']:.4f} without, {class_bias['validation_after']:.4f} with it (best "
            f"strength {class_bias['validation_best']:.4f} ± {class_bias['standard_error']:.4f}, "
            f"{class_bias['validation_images']} images)")


def saved_class_bias(model_path, classes):
    """The class bias fine_tune.py saved with a model, in the order of `classes`; None where it saved none or
    saved it for other classes (a bias for one class list means nothing for another)."""
    saved = (saved_classes(model_path) or {}).get("class_bias")
    if not saved or set(saved["bias"]) != set(classes):
        return None
    return {**saved, "values": [saved["bias"][name] for name in classes]}
