"""Calibration of score mode's probabilities, fitted on the validation images after training and saved in
classes.json: the class bias (log-probabilities shifted against the training class frequencies: logit adjustment),
the temperature (Guo et al. 2017), and the "not sure" rule (selective prediction: a result below a confidence
threshold is `uncertain`; for a target accuracy, the threshold a Clopper–Pearson bound certifies). `calibrate`
applies all three to raw results; every predictor calls it. Torch-free; scipy is imported only where a temperature
is fitted or a target accuracy certified (an exported model's runtime needs it only for the latter)."""
import math
import random
import statistics
from collections import Counter

import numpy as np

from .cli import UserError
from .confidence import TINY, by_confidence, curve, draw_coverage, draw_reliability, ece, kept_accuracy, measures, \
    nll, reliability, risk_coverage, top_probability
from .objectives import ranked, softmax
from .report import metrics

STRENGTHS = [i / 10 for i in range(11)]  # tried: 0 (scores as trained) to 1 (every class equally likely a priori)
TEMPERATURES = (0.05, 20.0)  # the range the temperature is searched in (bounded search over log T)
# The thresholds a target accuracy tries, fixed before any data, the most confident first: top probabilities at
# logits 15, 14.9, ..., -10 (1 - 3e-7 down to 5e-5), then 0 (every result kept).
THRESHOLDS = [1 / (1 + math.exp(-x / 10)) for x in range(150, -101, -1)] + [0.0]
UNCERTAIN = "uncertain"  # the prediction of a result whose top probability is below the threshold
UNCALIBRATED = ("the probabilities are uncalibrated: fine_tune.py fits a temperature only on validation images "
                "(generate_train_json.py --val_ratio > 0, at least fine_tune.py --min_validation_images of them)")


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


def _log_probabilities(result, classes):
    return [math.log(max(result["probs"][name], TINY)) for name in classes]


def with_class_bias(results, classes, bias, temperature=1.0):
    """Results ranked again with `bias` (one number per class) added to each class's log-probability, as the class
    bias does, and divided by `temperature`: softmax((log p + bias) / T). Results without probabilities (generate
    mode) stay as they are."""
    shifted = []
    for result in results:
        if result["probs"] is None:
            shifted.append(result)
            continue
        logits = [(x + b) / temperature for x, b in zip(_log_probabilities(result, classes), bias)]
        shifted.append(ranked(classes, softmax(logits)))
    return shifted


def with_temperature(results, classes, temperature):
    """Results ranked again with probabilities softmax(log p / temperature): above 1 less confident, below 1 more;
    the ranking stays. with_temperature(results, classes, 1 / T) undoes a temperature T."""
    return with_class_bias(results, classes, [0.0] * len(classes), temperature)


def fit_temperature(results, labels, classes):
    """The temperature that minimises the negative log-likelihood of the validation results (labels: their true
    classes), by scipy's bounded scalar search over log T in TEMPERATURES (the NLL is convex in 1/T). Returns what
    classes.json records under "temperature". Where the NLL falls all the way to the low end of the range, as it
    does with every validation image right (towards probabilities of 1, which would be overconfidence, not
    calibration), "value" is None, with the reason. Where it falls all the way to the high end, the predictions
    are no better than uniform guesses on the validation images, and the high end is the temperature, with a note."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp
    logs = np.array([_log_probabilities(r, classes) for r in results])
    truth = np.array([classes.index(label) for label in labels])

    def loss(log_t):
        scaled = logs / math.exp(log_t)
        return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(truth)), truth]))

    ends = [math.log(t) for t in TEMPERATURES]
    found = minimize_scalar(loss, bounds=ends, method="bounded").x
    # an end at least as low as the minimum found: the NLL falls all the way there (flat, or still falling)
    low_end, high_end = (loss(end) <= loss(found) for end in ends)
    before = {"validation_nll_before": nll([r["probs"] for r in results], labels),
              "validation_ece_before": _ece(results, labels), "validation_images": len(labels)}
    right = sum(r["pred"] == label for r, label in zip(results, labels))
    if low_end:
        return {"value": None, **before,
                "reason": f"the validation NLL falls all the way to T={TEMPERATURES[0]}, as {right} of the "
                          f"{len(labels)} validation images are right: more validation images, some of them wrong, "
                          "are needed"}
    note = {"note": f"the validation NLL falls all the way to T={TEMPERATURES[1]}: only {right} of the {len(labels)} "
                    "validation images are right, no better than a uniform guess"} if high_end else {}
    value = TEMPERATURES[1] if high_end else math.exp(found)
    after = with_temperature(results, classes, value)
    return {"value": value, **before, "validation_nll_after": nll([r["probs"] for r in after], labels),
            "validation_ece_after": _ece(after, labels), **note}


def _ece(results, labels):
    return ece([top_probability(r["probs"]) for r in results],
               [r["pred"] == label for r, label in zip(results, labels)])


def confidence_table(results, labels):
    """[confidence, correct] of each validation result, most confident first (what classes.json records under
    "validation_confidences", from which TARGET_ACCURACY's threshold is chosen)."""
    return [[round(c, 6), ok] for c, ok in by_confidence([top_probability(r["probs"]) for r in results],
                                                          [r["pred"] == label for r, label in zip(results, labels)])]


def _temperature_and_confidences(results, labels, classes, temperature, after_class_bias):
    fitted = {**fit_temperature(results, labels, classes), "after_class_bias": after_class_bias} if temperature \
        else None
    if fitted and fitted["value"]:
        results = with_temperature(results, classes, fitted["value"])
    return {"temperature": fitted, "validation_confidences": confidence_table(results, labels)}


def fit_calibration(results, data, train_labels, *, metric, class_bias=True, temperature=True):
    """Everything fitted on the validation results (raw score-mode results of every image of `data`): the class bias
    (with `class_bias`), then on the biased results the temperature (with `temperature`), then the calibrated
    results' confidence table. Returns the entries of classes.json: "class_bias", "temperature",
    "validation_confidences" (None where not fitted), and where a class bias was fitted "without_class_bias": the
    temperature and confidence table fitted on the raw results, which evaluation with class_bias=false applies (a
    temperature fitted after the bias belongs to the biased probabilities)."""
    labels, classes = [s["label"] for s in data["samples"]], data["classes"]
    bias = fit_class_bias(results, data, train_labels, metric) if class_bias else None
    raw = _temperature_and_confidences(results, labels, classes, temperature, after_class_bias=False)
    if not bias:
        return {"class_bias": None, **raw}
    biased = _temperature_and_confidences(with_class_bias(results, classes, [bias["bias"][name] for name in classes]),
                                          labels, classes, temperature, after_class_bias=True)
    return {"class_bias": bias, **biased, "without_class_bias": raw}


def lower_bound(right, kept, level):
    """The one-sided Clopper–Pearson lower confidence bound, at `level`, on the accuracy of `kept` images of which
    `right` are right (numbers or numpy arrays; `right` may be fractional); 0 where none is right."""
    from scipy.stats import beta
    right, kept = np.asarray(right, dtype=float), np.asarray(kept, dtype=float)
    return np.where(right > 0, beta.ppf(1 - level, np.maximum(right, 1e-9), kept - right + 1), 0.0)


def fewest_to_certify(target, level):
    """The fewest kept images, all right, whose lower bound reaches `target`: (1 - level)^(1/n) >= target."""
    return math.ceil(math.log(1 - level) / math.log(target) - 1e-9) if target < 1 else math.inf


def images_needed(accuracy, target, level):
    """About how many kept images, right `accuracy` of the time, the lower bound needs to reach `target`; None where
    `accuracy` is not above it (no number does)."""
    if accuracy <= target:
        return None
    high = 1
    while lower_bound(accuracy * high, high, level) < target:
        high *= 2
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if lower_bound(accuracy * middle, middle, level) >= target else (middle, high)
    return high


def certify(table, target, level):
    """The confidence threshold for `target` accuracy at confidence `level`, from the validation images' `table`
    ([[top probability, right], ...]), by fixed-sequence testing (Learn-then-Test, Angelopoulos et al. 2021; as
    selective classification with guaranteed risk, Geifman & El-Yaniv 2017) down THRESHOLDS, a grid fixed before
    any data, the most confident first. A threshold passes where the Clopper–Pearson lower bound on the accuracy
    of the validation images it keeps (confidence at least the threshold) reaches the target. The scan starts at
    the first threshold keeping enough images for any bound to reach it (fewest_to_certify), stops at the first
    that fails and takes the lowest that passed: the chance that its accuracy on new images like the validation
    images is below the target is then at most about 1 - level (benchmarks/target_accuracy.py).
    Returns {"threshold" (None where none passed), "images", "group": the images the threshold taken keeps, or where
    none passed those of the first threshold tested (None where none could be): {"threshold", "kept", "right",
    "lower_bound"}}."""
    kept, correct, bounds = _groups(table, level)
    chosen = first = None
    for i in np.flatnonzero(kept >= fewest_to_certify(target, level)):
        first = i if first is None else first
        if bounds[i] < target:
            break
        chosen = i
    shown = first if chosen is None else chosen
    return {"threshold": None if chosen is None else THRESHOLDS[chosen], "images": len(table),
            "group": None if shown is None else _group(shown, kept, correct, bounds)}


def _groups(table, level):
    """Of each threshold in THRESHOLDS, how many validation images it keeps, how many of those are right, and their
    lower bound at `level` (numpy arrays)."""
    pairs = by_confidence([c for c, _ in table], [ok for _, ok in table])
    confidences, right = np.array([c for c, _ in pairs]), np.cumsum([ok for _, ok in pairs])
    kept = np.searchsorted(-confidences, -np.array(THRESHOLDS), side="right")  # how many are at least each
    correct = np.where(kept > 0, right[np.maximum(kept - 1, 0)], 0)
    return kept, correct, lower_bound(correct, kept, level)


def _group(i, kept, correct, bounds):
    return {"threshold": THRESHOLDS[i], "kept": int(kept[i]), "right": int(correct[i]), "lower_bound": float(bounds[i])}


def fewest_images(table, target, level):
    """Of the groups of the most confident validation images (one a threshold), the one whose accuracy, were it
    kept, would be certified from the fewest validation images in all: its certify() group with "images_needed";
    None where no group is right more often than `target`."""
    kept, correct, bounds = _groups(table, level)
    estimates = [{**_group(i, kept, correct, bounds), "images_needed": math.ceil(needed * len(table) / kept[i])}
                 for i in np.flatnonzero(kept) if (needed := images_needed(correct[i] / kept[i], target, level))]
    return min(estimates, key=lambda e: e["images_needed"], default=None)


# what a guarantee from the validation images leaves out (docs/calibration.md)
OPTIMISTIC = ("the same validation images chose the checkpoint, the class bias and the temperature, so it is "
              "somewhat optimistic")


def certified_why(table, found, target, level):
    """certify()'s outcome for the validation confidences `table` in words: the threshold's evidence, or why none is
    certified and about how many validation images it would take."""
    n, group, said = found["images"], found["group"], f"target_accuracy={target} at confidence_level={level}"
    if found["threshold"] is not None:
        return (f"{said}: {group['kept']} of the {n} validation images are at least this confident and "
                f"{group['right']} of those right, lower bound {group['lower_bound']:.3f} (Clopper–Pearson, "
                f"thresholds tried from the most confident down); {OPTIMISTIC}")
    said += f" is not certified, so every result is '{UNCERTAIN}': "
    if target >= 1:
        return said + "no number of validation images bounds an accuracy of 1 from below"
    if group:
        said += (f"the {group['kept']} most confident of the {n} validation images (top probability at least "
                 f"{group['threshold']:.4f}) are right {group['right'] / group['kept']:.1%} of the time, lower "
                 f"bound {group['lower_bound']:.3f}")
    else:
        said += (f"the bound reaches {target} only on {fewest_to_certify(target, level)} or more validation images "
                 f"kept, all right, and there are {n}")
    estimate = fewest_images(table, target, level)
    if not estimate:
        return f"{said}; no group of the most confident validation images is right more often than the target"
    return (f"{said}; at the accuracy of the {estimate['kept']} most confident ({estimate['right']} right), about "
            f"{estimate['images_needed']} validation images would certify it")


def load_calibration(saved, classes, *, class_bias=True, min_confidence=0.0, target_accuracy=0.0,
                     confidence_level=0.9):
    """What calibrate() applies to a model's results for `classes` (in that order), from the classes.json that `saved`
    (the model's record, vlmcls.saved.SavedClassifier: a model folder, or an exported one) carries: {"bias": one number
    per class or None, "temperature": T or None, "threshold": the top probability below which a result is uncertain (0:
    never; infinite: always), "why": the threshold in words}, with the saved records "class_bias" and "temperature_fit".
    The bias (with `class_bias`) and temperature apply only to the classes they were fitted for; without the class bias,
    the temperature fitted without it (a model saved before both were: the one fitted after it, as before). The
    threshold is `min_confidence`, or for `target_accuracy` (0: not used) the one certify() finds at `confidence_level`,
    and where none is certified, every result is uncertain; UserError where the settings or the saved model cannot give
    one, saying why."""
    if not 0 <= min_confidence <= 1 or not 0 <= target_accuracy <= 1:
        raise UserError(f"min_confidence ({min_confidence}) and target_accuracy ({target_accuracy}) are shares "
                        "between 0 and 1")
    if not 0 < confidence_level < 1:
        raise UserError(f"confidence_level ({confidence_level}) is a probability above 0 and below 1")
    if min_confidence and target_accuracy:
        raise UserError("give min_confidence or target_accuracy, not both: target_accuracy chooses the minimum "
                        "confidence itself")
    model_path, bias = saved.path, saved_class_bias(saved, classes) if class_bias else None
    saved = saved.classes_json
    same = set(saved.get("classes", [])) == set(classes)
    fitted = saved if class_bias else saved.get("without_class_bias") or saved
    record = (fitted.get("temperature") if same else None) or {}
    fit = record if record.get("value") else None
    threshold, why = min_confidence, f"min_confidence={min_confidence}" if min_confidence else "never"
    if target_accuracy:
        table = fitted.get("validation_confidences")
        if not table or not same:
            raise UserError(
                f"target_accuracy: {model_path} has no confidences of validation images "
                + ("for these classes" if table else "saved (fine_tune.py saves them when it validates: "
                   "generate_train_json.py --val_ratio > 0, at least --min_validation_images of them)")
                + "; give --min_confidence instead")
        found = certify(table, target_accuracy, confidence_level)
        threshold = math.inf if found["threshold"] is None else found["threshold"]
        why = certified_why(table, found, target_accuracy, confidence_level)
    if threshold and UNCERTAIN in classes:
        raise UserError(f"a class is named {UNCERTAIN!r}, the prediction of a result below the threshold: rename it")
    after_bias = bool(not class_bias and fit and fit.get("after_class_bias") and fitted is saved)
    return {"bias": bias["values"] if bias else None, "temperature": fit["value"] if fit else None,
            "threshold": threshold, "why": why, "class_bias": bias, "temperature_fit": fit,
            "temperature_reason": record.get("reason"),
            "temperature_note": "fitted after the class bias, which is off: this model was saved before the "
                                "temperature was also fitted without it" if after_bias else None,
            "confidence_level": confidence_level if target_accuracy else None}


def calibrate(results, classes, calibration):
    """Raw score-mode results (objectives.ranked dicts, the probabilities as the objective computed them, for
    `classes` in that order) as the user gets them: softmax((log p + bias) / T), then a result whose top probability
    is below the threshold gets "uncertain": True and "pred" "uncertain" ("probs", "top2" and "answer" keep the best
    guess). `calibration`: load_calibration's dict, or any with "bias" (one number per class, or None), "temperature"
    (or None) and "threshold" (0: never uncertain); None leaves the results as they are. Results without
    probabilities (generate mode) are left as they are. A model without a temperature or threshold gets exactly
    what the class bias alone gives."""
    if not calibration:
        return results
    bias, temperature = calibration.get("bias"), calibration.get("temperature")
    if bias or temperature:
        results = with_class_bias(results, classes, bias or [0.0] * len(classes), temperature or 1.0)
    threshold = calibration.get("threshold") or 0
    return [{**r, "pred": UNCERTAIN, "uncertain": True}
            if threshold and r["probs"] is not None and top_probability(r["probs"]) < threshold else r
            for r in results]


def best_guesses(result):
    """The top two classes of a result with their probabilities, in words: what an uncertain result still says."""
    return ", ".join(f"{name} {result['probs'][name]:.3f}" for name in result["top2"])


def describe_calibration(calibration):
    """The console lines of what calibrate() applies."""
    fit, reason = calibration["temperature_fit"], calibration.get("temperature_reason")
    if fit:
        line = (f"temperature {fit['value']:.3f}, fitted on {fit['validation_images']} validation images (NLL "
                f"{fit['validation_nll_before']:.4f} -> {fit['validation_nll_after']:.4f}, ECE "
                f"{fit['validation_ece_before']:.4f} -> {fit['validation_ece_after']:.4f}), applied to the "
                "probabilities" + "".join(f"; {note}" for note in (fit.get("note"), calibration.get("temperature_note"))
                                          if note))
    elif reason:
        line = f"no temperature saved with this model ({reason}): the probabilities are uncalibrated"
    else:
        line = f"no temperature saved with this model: {UNCALIBRATED}"
    lines = [line]
    if calibration["threshold"]:
        lines.append(f"{uncertain_rule(calibration)}; the best guess stays in top2 and probability")
    return lines


def uncertain_rule(calibration):
    """Which results calibrate() calls uncertain, and why, in words (the console, the page's caption)."""
    threshold = calibration["threshold"]
    if math.isinf(threshold):
        return f"every result is '{UNCERTAIN}' ({calibration['why']})"
    return f"a result whose top probability is below {threshold:.4f} is '{UNCERTAIN}' ({calibration['why']})"


def describe(class_bias):
    """The console line of a fitted class bias."""
    return (f"class bias of strength {class_bias['strength']:.1f}: validation {class_bias['metric']} "
            f"{class_bias['validation_before']:.4f} without, {class_bias['validation_after']:.4f} with it (best "
            f"strength {class_bias['validation_best']:.4f} ± {class_bias['standard_error']:.4f}, "
            f"{class_bias['validation_images']} images)")


def saved_class_bias(saved, classes):
    """The class bias fine_tune.py saved with a model (`saved`: its record), in the order of `classes`; None where
    it saved none or saved it for other classes (a bias for one class list means nothing for another)."""
    saved = saved.class_bias
    if not saved or set(saved["bias"]) != set(classes):
        return None
    return {**saved, "values": [saved["bias"][name] for name in classes]}


def calibration_report(probs, labels, classes, calibration):
    """report.json's "calibration" section of a labelled run: `probs` ({class: probability} per image, as predicted:
    calibrated) against the true `labels`. NLL, Brier score and ECE with the temperature and without it (the
    temperature undone; the class bias stays), the threshold (None where a target accuracy certified none, every
    image then uncertain) with the confidence level of a target's, how many images it turned uncertain and the
    accuracy on those kept, and the risk–coverage table. Accuracy counts the best guesses."""
    temperature = calibration.get("temperature") if calibration else None
    results = [ranked(classes, [p[name] for name in classes]) for p in probs]
    without = with_temperature(results, classes, 1 / temperature) if temperature else results
    confidences = [top_probability(p) for p in probs]
    correct = [r["pred"] == label for r, label in zip(results, labels)]
    threshold = calibration.get("threshold", 0) if calibration else 0
    kept, accuracy = kept_accuracy(by_confidence(confidences, correct), threshold)
    return {"temperature": temperature, "note": None if temperature else UNCALIBRATED,
            "with_temperature": measures(probs, labels) if temperature else None,
            "without_temperature": measures([r["probs"] for r in without], labels),
            "reliability_with_temperature": reliability(confidences, correct) if temperature else None,
            "reliability_without_temperature": reliability(
                [top_probability(r["probs"]) for r in without], correct),
            "threshold": threshold if math.isfinite(threshold) else None,
            "threshold_from": calibration.get("why", "never") if calibration else "never",
            "confidence_level": calibration.get("confidence_level") if calibration else None,
            "uncertain": sum(c < threshold for c in confidences), "kept": kept, "accuracy_kept": accuracy,
            "risk_coverage": risk_coverage(confidences, correct), "images": len(labels),
            "curve": curve(confidences, correct)}


def print_calibration(section, accuracy):
    """The console lines of calibration_report's section (`accuracy`: over all images, the best guesses)."""
    print("\n--- Calibration (probabilities against the labels) ---")
    print(f"temperature {section['temperature']:.3f} (fitted on the validation images)" if section["temperature"]
          else f"no temperature: {section['note']}")
    print(f"{'':<22}{'NLL':>10}{'Brier':>10}{'ECE':>10}")
    for name in ("without_temperature", "with_temperature"):
        if section[name]:
            m = section[name]
            print(f"{name.replace('_', ' '):<22}{m['nll']:>10.4f}{m['brier']:>10.4f}{m['ece']:>10.4f}")
    print("\n--- Not sure: accuracy on the images kept, the most confident first ---")
    print(f"{'kept (asked)':<14}{'kept':>8}{'threshold':>11}{'accuracy':>10}")
    for row in section["risk_coverage"]:
        print(f"{row['coverage']:<14.0%}{row['kept']:>8.1%}{row['threshold']:>11.4f}{row['accuracy']:>10.4f}")
    if section["threshold"] is None:
        print(f"{section['threshold_from']}: {section['uncertain']} of {section['images']} images uncertain (all "
              f"images, best guesses: {accuracy:.4f})")
    elif section["threshold"]:
        kept = round(section["kept"] * section["images"])
        print(f"threshold {section['threshold']:.4f} ({section['threshold_from']}): {section['uncertain']} of "
              f"{section['images']} images uncertain; accuracy on the {kept} kept "
              + (f"{section['accuracy_kept']:.4f}" if section["accuracy_kept"] is not None else "-")
              + f" (all images, best guesses: {accuracy:.4f})")
    else:
        print("no threshold (min_confidence=0, target_accuracy=0): no prediction is 'uncertain'")


def calibration_pictures(section):
    """{file name: image}: reliability.png (without and with the temperature) and coverage.png."""
    panels = [("without temperature", section["reliability_without_temperature"],
               section["without_temperature"]["ece"])]
    if section["temperature"]:
        panels.append((f"with temperature {section['temperature']:.2f}", section["reliability_with_temperature"],
                       section["with_temperature"]["ece"]))
    marked = (section["kept"], section["accuracy_kept"], section["threshold"]) \
        if section["threshold"] and section["accuracy_kept"] is not None else None
    return {"reliability.png": draw_reliability(panels), "coverage.png": draw_coverage(section["curve"], marked)}
