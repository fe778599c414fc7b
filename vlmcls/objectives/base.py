"""The objective interface: the operations every objective module provides, and the result shape they share.

An objective is one module of this package (answer.py, head.py) defining, at module level:

    NAME                  its value of fine_tune.py's OBJECTIVE, and what classes.json records
    FILES                 the files it saves beside the model (a folder holding one was fine-tuned with it)
    MODES                 {prediction mode: function(model, processor, batch, question, classes) -> results}
    SCORE_MODE            the mode that score mode (the default) means for a model trained with it
    SCORED_BY             how its class scores come about, in words (the app's page says it)
    TEST_LOSS             what its test loss measures, in words (fine_tune.py prints it)
    MULTI_LABEL_LOSS      the same, on multi-label data
    check_settings(*, freeze_backbone, use_lora, class_balance, augment, cached, label_smoothing, multi_label)
                          refuse settings that mean nothing together (multi_label: the training data is
                          multi-label), before the model loads
    carries(model)        whether a model carries what the objective adds to it
    attach(model, n_classes, multi_label=False)
                          add what it needs to a model before training (freshly initialised; multi_label: one
                          independent probability per class); returns the model
    prepare(model, freeze_backbone)
                          set what trains; returns peft's modules_to_save (what it added, trained whole) or None
    features(model, processor, encoder, paths, question, batch_size, autocast)
                          {image path: feature} computed once with a frozen backbone, or None where it has none
    training_set(data, *, encoder, processor, end_ids, train_questions, multi_turn, class_balance,
                 label_smoothing, how_augment, seed, features)
                          {"train_dataset", "data_collator", "loss"}: the training rows or features, their
                          collator, and the loss: (loss, outputs) = loss(model, inputs), a mean over the batch, or
                          loss(model, inputs, num_items_in_batch), a mean over labelled tokens
                          (compat.sft_trainer_class)
    test_set(data, *, classes, question, encoder, processor, end_ids, features)
                          the held-out images as a data set whose loss the Trainer computes
    save(model, out, save_model, main)
                          save_model(out) of the model without its additions, and the additions beside it
    load(model_path, model, saved)
                          a loaded model with the additions saved beside it (`saved`: its record,
                          vlmcls.saved.SavedClassifier)
    prediction_mode(mode) the mode to predict in when `mode` is asked of a model trained with it (or UserError)
    results_from_features(model, features, paths, classes)
                          score-mode results of images from their features (as `features` computed them)
    scoring_module(model, processor, question, classes)
                          (a torch module from a batch of prompts and tiles, (input_ids (images, tokens),
                          pixel_values (images, tiles, 3, H, W), and for left-padded PromptBatches batches
                          attention_mask, position_ids and the processor's other image inputs; without them one
                          unpadded prompt), to its (images, classes) scores, whose softmax is score mode's
                          probabilities; what it fixes besides, for export.json): the one definition of the
                          objective's scores, which its score mode (prediction, validation) runs and
                          vlmcls/export.py exports
    scoring_layer(model)  the layer whose outputs are the scores, which an int8 export keeps float
    output_order(model, classes)
                          where each of `classes` is among scoring_module's outputs (class_order's answer; None:
                          in their order), or UserError where the model scores other classes

vlmcls/objectives/__init__.py registers each module; everything above this layer goes through it.
"""

import math

from scipy.special import expit

from ..cli import UserError
from ..multi_label import DEFAULT_THRESHOLD

OPERATIONS = ("NAME", "FILES", "MODES", "SCORE_MODE", "SCORED_BY", "TEST_LOSS", "MULTI_LABEL_LOSS", "check_settings",
              "carries", "attach", "prepare", "features", "training_set", "test_set", "save", "load", "prediction_mode",
              "results_from_features", "scoring_module", "scoring_layer", "output_order")


def class_order(scored, classes, whose, fixed, remedy):
    """Where each of `classes` is among the classes a model scores (`scored`, in the order of its outputs), so that
    each output keeps its class whatever order the classes are asked in; None where they are in that order already,
    or where `scored` is None (a model that scores whatever classes it is asked). UserError naming both lists where
    they are other classes."""
    if scored is None or list(scored) == list(classes):
        return None
    if sorted(classes) != sorted(scored):
        raise UserError(f"{whose} scores {', '.join(scored)} ({fixed}), not {', '.join(classes)}: {remedy}")
    return [list(scored).index(name) for name in classes]


def softmax(logits):
    """Probabilities from logits (a list of floats), computed stably."""
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def ranked(classes, probs):
    """A score-mode result: the most probable class is the prediction."""
    order = sorted(range(len(classes)), key=lambda i: -probs[i])
    return {"answer": classes[order[0]], "pred": classes[order[0]], "probs": dict(zip(classes, probs)),
            "top2": [classes[i] for i in order[:2]]}


def scored_results(rows, classes, order=None):
    """Score-mode results of rows of scores (lists of floats, one per output; their softmax is the probabilities),
    for `classes`: each class takes the output class_order found for it (`order`; None: the outputs are in the
    order of `classes`). Every predictor, PyTorch's and ONNX Runtime's, turns scores into results here."""
    return [ranked(classes, softmax([row[i] for i in order] if order else list(row))) for row in rows]


def multi_label_results(rows, classes, order=None, thresholds=None):
    """Multi-label results of rows of scores (one per output; each its class's logit): every class's sigmoid
    probability, and the labels predicted, those whose probability is at least their threshold (`thresholds`:
    {class: threshold}; None: 0.5 each), in class order, joined by ';' as "pred" and "answer" ("top2": the two most
    probable classes). `order` as scored_results takes it."""
    results = []
    for row in rows:
        probs = dict(zip(classes, map(float, expit([row[i] for i in order] if order else list(row)))))
        labels = [name for name in classes if probs[name] >= (thresholds[name] if thresholds else DEFAULT_THRESHOLD)]
        top = sorted(classes, key=lambda name: -probs[name])
        results.append({"answer": ";".join(labels), "pred": ";".join(labels), "labels": labels, "probs": probs,
                        "top2": top[:2]})
    return results


def results_of(rows, classes, order=None, *, multi_label=False, thresholds=None):
    """Results of rows of scores: multi_label_results' for a multi-label model (`thresholds` as it takes them), else
    scored_results'. Every predictor of a head, PyTorch's and ONNX Runtime's, turns its scores into results here."""
    if multi_label:
        return multi_label_results(rows, classes, order, thresholds)
    return scored_results(rows, classes, order)


def positive_weights(samples, classes, how):
    """Multi-label per-class positive weights (the head's binary cross-entropy's pos_weight; the answer objective's
    weights of the yes answers): with class_balance=weighted each class's negatives over its positives in the
    training images (soft labels count their weights), so that each class's positives weigh as much as its
    negatives; else None (all 1)."""
    if how != "weighted":
        return None
    positives = [sum(s["labels"].get(name, 0.0) for s in samples) for name in classes]
    return [(len(samples) - p) / p if p else 1.0 for p in positives]
