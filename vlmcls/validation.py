"""Validation while training: score-mode metrics on held-out images, for the best checkpoint and the class bias."""
import math
import time
from pathlib import Path

from .cli import OneOf, UserError
from .compat import sft_trainer_class
from .images import read_dataset_json
from .multi_label import measures
from .prediction import evaluate
from .report import metrics

BEST_METRICS = OneOf("macro_f1", "accuracy")  # what the evaluation scripts report, as METRIC_FOR_BEST_MODEL


def read_validation(path, train_data):
    """The validation data set, or None, with a note, where there is none (the run then trains as before)."""
    if not path or not Path(path).is_file():
        why = "val_json is empty" if not path else f"{path} does not exist"
        print(f"note: {why}, so training runs without validation: the last checkpoint is saved and no run stops "
              "early (generate_train_json.py writes validation images with VAL_RATIO > 0)")
        return None
    data = read_dataset_json(path)
    if data["classes"] != train_data["classes"] or data["question"] != train_data["question"]:
        raise UserError(f"{path}: its classes or question differ from the training data's ({data['classes']} vs "
                        f"{train_data['classes']}); write both with one run of generate_train_json.py")
    if not data["samples"]:
        print(f"note: {path} holds no images (VAL_RATIO was 0), so training runs without validation")
        return None
    return data


def enough_validation(train_data, val_data, min_images):
    """(training data, validation data or None): with fewer than `min_images` validation images, too few to choose a
    checkpoint or a class bias on, they join the training images instead, with a note."""
    if val_data is None or len(val_data["samples"]) >= min_images:
        return train_data, val_data
    print(f"note: {len(val_data['samples'])} validation images, fewer than min_validation_images={min_images}: too "
          "few to choose a checkpoint or a class bias on, so they are training images too and training runs "
          "without validation")
    return {**train_data, "samples": train_data["samples"] + val_data["samples"]}, None


def validation_arguments(validating, eval_steps, save_steps, metric):
    """Trainer settings for validation: evaluate every eval_steps and checkpoint at each evaluation, so that the
    best checkpoint exists to be reloaded at the end; save_total_limit keeps it beside the newest."""
    if not validating:
        return {"eval_strategy": "no", "save_strategy": "steps", "save_steps": save_steps}
    if eval_steps < 1:
        raise UserError(f"eval_steps must be at least 1, got {eval_steps}")
    return {"eval_strategy": "steps", "eval_steps": eval_steps, "save_strategy": "steps", "save_steps": eval_steps,
            "load_best_model_at_end": True, "metric_for_best_model": metric, "greater_is_better": True,
            # the early-stopping count continues on resume, as best_metric does in trainer_state.json
            "restore_callback_states_from_checkpoint": True}


def share(items, rank, world):
    """This process's consecutive share of items. Every share has the same length (the last ones are padded with
    the first item), so every process runs the same batches: a sharded model (FSDP) needs all of them in each."""
    size = math.ceil(len(items) / world)
    part = items[rank * size:(rank + 1) * size]
    return part + items[:1] * (size - len(part))


def predict_all(model, processor, data, batch_size, rank=0, world=1, encoder=None):
    """Score-mode results on every image of `data`, each process predicting its share; the results are gathered
    in order, so every process gets what one process would. With `encoder` (the training's InputEncoder) the
    images come from its cache."""
    from accelerate.utils import gather_object
    paths = [s["image"] for s in data["samples"]]
    mine = share(paths, rank, world)
    desc = "validation" if world == 1 else f"validation, process {rank}"
    results = evaluate(model, processor, mine, data["question"], data["classes"], "score", batch_size,
                       data["max_image_pixels"], encoder=encoder, desc=desc)
    return gather_object(results)[:len(paths)]


def scored(data, results):
    """The metrics (vlmcls.report.metrics) of one result per image of `data`; of multi-label data its measures
    (vlmcls.multi_label.measures) with the exact-set accuracy as "accuracy"."""
    if data.get("multi_label"):
        found = measures([s["labels"] for s in data["samples"]], [r["probs"] for r in results],
                         [r["labels"] for r in results], data["classes"])
        return {**found, "accuracy": found["exact_set_accuracy"]}
    return metrics([s["label"] for s in data["samples"]], [r["pred"] for r in results], data["classes"])


def measure(model, processor, data, batch_size, rank=0, world=1, encoder=None):
    """Score-mode metrics on every image of `data`, as predict_all predicts them."""
    return scored(data, predict_all(model, processor, data, batch_size, rank, world, encoder))


def trainer_with_validation(objective, validation, batch_size, encoder, callbacks, loss, features=None, **kwargs):
    """trl's SFTTrainer for `objective` (an objectives module) with its `loss` (compat.sft_trainer_class), whose evaluation (at every eval_steps, and trainer.evaluate() with no data
    set) is measure() on the validation data; trainer.evaluate(dataset) still computes that data set's loss.
    Validation reads the images' `features` where the objective computed them (a frozen backbone's states)."""

    def validation_scores(trainer, metric_key_prefix):
        start = time.time()
        result = scored(validation, trainer.validation_results())
        scores = {f"{metric_key_prefix}_{k}": result[k] for k in ("accuracy", "macro_f1")}
        if trainer.is_world_process_zero():
            print(f"step {trainer.state.global_step}: validation accuracy {result['accuracy']:.4f}, "
                  f"macro-F1 {result['macro_f1']:.4f} ({result['total']} images)")
        scores[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        return scores

    class ValidatingTrainer(sft_trainer_class(loss, validation_scores if validation is not None else None)):
        def validation_results(self):
            """Score-mode results of the model as it is now on every validation image (every process takes part)."""
            if features is not None:
                return objective.results_from_features(self.model, features,
                                                       [s["image"] for s in validation["samples"]],
                                                       validation["classes"])
            training = self.model.training
            self.model.eval()
            with self.accelerator.autocast():
                results = predict_all(self.model, self.processing_class, validation, batch_size,
                                      self.accelerator.process_index, self.accelerator.num_processes, encoder)
            self.model.train(training)
            return results

    # The Trainer refuses to evaluate without an eval_dataset; the validation samples are that data set.
    return ValidatingTrainer(eval_dataset=validation["samples"] if validation else None, callbacks=callbacks,
                             **kwargs)
