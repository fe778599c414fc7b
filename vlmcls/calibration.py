"""Calibration of score mode's probabilities, fitted on the validation images after training and saved in
classes.json: the class bias (log-probabilities shifted against the training class frequencies: logit adjustment),
the temperature (Guo et al. 2017), and the "not sure" rule (selective prediction: a result below a confidence
threshold is `uncertain`). `calibrate` applies all three to raw results; every predictor calls it. Torch-free."""
import math
import random
import statistics
from collections import Counter

from .cli import UserError
from .confidence import TINY, by_confidence, curve, draw_coverage, draw_reliability, ece, kept_accuracy, measures, \
    nll, reliability, risk_coverage, top_probability
from .objectives import ranked, softmax
from .report import metrics

STRENGTHS = [i / 10 for i in range(11)]  # tried: 0 (scores as trained) to 1 (every class equally likely a priori)
TEMPERATURES = (0.05, 20.0)  # the range the temperature is searched in (log-scale golden-section search)
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


def fit_temperature(results, labels, classes, steps=60):
    """The temperature that minimises the negative log-likelihood of the validation results (labels: their true
    classes), by golden-section search over log T in TEMPERATURES (the NLL is convex in 1/T). Returns what
    classes.json records under "temperature". Where the NLL falls all the way to the low end of the range, as it
    does with every validation image right (towards probabilities of 1, which would be overconfidence, not
    calibration), "value" is None, with the reason. Where it falls all the way to the high end, the predictions
    are no better than uniform guesses on the validation images, and the high end is the temperature, with a note."""
    logs = [[x - max(row) for x in row] for row in (_log_probabilities(r, classes) for r in results)]
    truth = [classes.index(label) for label in labels]

    def loss(log_t):
        t = math.exp(log_t)
        return sum(math.log(sum(math.exp(x / t) for x in row)) - row[i] / t for row, i in zip(logs, truth)) / len(truth)

    low, high = (math.log(t) for t in TEMPERATURES)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    for _ in range(steps):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    value = math.exp((low + high) / 2)
    before = {"validation_nll_before": nll([r["probs"] for r in results], labels),
              "validation_ece_before": _ece(results, labels), "validation_images": len(labels)}
    right = sum(r["pred"] == label for r, label in zip(results, labels))
    if abs(math.log(value / TEMPERATURES[0])) < 0.01:
        return {"value": None, **before,
                "reason": f"the validation NLL falls all the way to T={TEMPERATURES[0]}, as {right} of the "
                          f"{len(labels)} validation images are right: more validation images, some of them wrong, "
                          "are needed"}
    note = {"note": f"the validation NLL falls all the way to T={TEMPERATURES[1]}: only {right} of the {len(labels)} "
                    "validation images are right, no better than a uniform guess"} \
        if abs(math.log(value / TEMPERATURES[1])) < 0.01 else {}
    value = TEMPERATURES[1] if note else value
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


def fit_calibration(results, data, train_labels, *, metric, class_bias=True, temperature=True):
    """Everything fitted on the validation results (raw score-mode results of every image of `data`): the class bias
    (with `class_bias`), then on the biased results the temperature (with `temperature`), then the calibrated
    results' confidence table. Returns the entries of classes.json: "class_bias", "temperature",
    "validation_confidences" (None where not fitted)."""
    labels, classes = [s["label"] for s in data["samples"]], data["classes"]
    bias = fit_class_bias(results, data, train_labels, metric) if class_bias else None
    if bias:
        results = with_class_bias(results, classes, [bias["bias"][name] for name in classes])
    fitted = fit_temperature(results, labels, classes) if temperature else None
    if fitted:
        fitted["after_class_bias"] = bias is not None
    if fitted and fitted["value"]:
        results = with_temperature(results, classes, fitted["value"])
    return {"class_bias": bias, "temperature": fitted, "validation_confidences": confidence_table(results, labels)}


def threshold_for_accuracy(table, target):
    """The least confidence threshold at which the validation images kept (confidence at least the threshold) are
    right at least `target` of the time, as (threshold, share kept, accuracy kept); None where no threshold is."""
    pairs = [(c, bool(ok)) for c, ok in table]
    for threshold in sorted({c for c, _ in pairs}):
        kept, accuracy = kept_accuracy(pairs, threshold)
        if accuracy >= target:
            return threshold, kept, accuracy
    return None


def load_calibration(saved, classes, *, class_bias=True, min_confidence=0.0, target_accuracy=0.0):
    """What calibrate() applies to a model's results for `classes` (in that order), from the classes.json that
    `saved` (the model's record, vlmcls.saved.SavedClassifier: a model folder, or an exported one) carries:
    {"bias": one number per class or None, "temperature": T or None, "threshold": the top probability below which
    a result is uncertain (0: never), "why": the threshold in words}, with the saved records "class_bias" and
    "temperature_fit". The bias (with `class_bias`) and temperature apply only to the classes they were fitted
    for. The threshold is `min_confidence`, or chosen from the validation images for `target_accuracy` (0: not
    used); UserError where that cannot be done, saying why."""
    if not 0 <= min_confidence <= 1 or not 0 <= target_accuracy <= 1:
        raise UserError(f"min_confidence ({min_confidence}) and target_accuracy ({target_accuracy}) are shares "
                        "between 0 and 1")
    if min_confidence and target_accuracy:
        raise UserError("give min_confidence or target_accuracy, not both: target_accuracy chooses the minimum "
                        "confidence itself")
    model_path, bias = saved.path, saved_class_bias(saved, classes) if class_bias else None
    saved = saved.classes_json
    same = set(saved.get("classes", [])) == set(classes)
    record = (saved.get("temperature") if same else None) or {}
    fit = record if record.get("value") else None
    threshold, why = min_confidence, f"min_confidence={min_confidence}" if min_confidence else "never"
    if target_accuracy:
        table = saved.get("validation_confidences")
        if not table or not same:
            raise UserError(
                f"target_accuracy: {model_path} has no confidences of validation images "
                + ("for these classes" if table else "saved (fine_tune.py saves them when it validates: "
                   "generate_train_json.py --val_ratio > 0, at least --min_validation_images of them)")
                + "; give --min_confidence instead")
        found = threshold_for_accuracy(table, target_accuracy)
        if not found:
            raise UserError(f"target_accuracy={target_accuracy}: even the most confident of the {len(table)} "
                            f"validation images saved with {model_path} are right less often; lower it, or give "
                            "--min_confidence")
        threshold, kept, accuracy = found
        why = (f"target_accuracy={target_accuracy}: on the {len(table)} validation images, {kept:.0%} of them are at "
               f"least this confident, and {accuracy:.1%} of those are right")
    if threshold and UNCERTAIN in classes:
        raise UserError(f"a class is named {UNCERTAIN!r}, the prediction of a result below the threshold: rename it")
    return {"bias": bias["values"] if bias else None, "temperature": fit["value"] if fit else None,
            "threshold": threshold, "why": why, "class_bias": bias, "temperature_fit": fit,
            "temperature_reason": record.get("reason")}


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
                "probabilities" + (f"; {fit['note']}" if fit.get("note") else ""))
    elif reason:
        line = f"no temperature saved with this model ({reason}): the probabilities are uncalibrated"
    else:
        line = f"no temperature saved with this model: {UNCALIBRATED}"
    lines = [line]
    if calibration["threshold"]:
        lines.append(f"a result whose top probability is below {calibration['threshold']:.4f} is '{UNCERTAIN}' "
                     f"({calibration['why']}); the best guess stays in top2 and probability")
    return lines


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
    temperature undone; the class bias stays), the threshold with how many images it turned uncertain and the
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
            "threshold": threshold, "threshold_from": calibration.get("why", "never") if calibration else "never",
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
    if section["threshold"]:
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
