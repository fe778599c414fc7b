"""Training, for any objective: class balance, LoRA / frozen-encoder preparation, the time limit, checkpoints and
saving the fine-tuned model."""
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

from .calibration import UNCALIBRATED, describe, describe_calibration
from .cli import OneOf, UserError, existing_path
from .compat import run_without_grad
from .files import write_json
from .label_issues import TRAINING_IMAGES
from .models import VISION_MODULES, base_of, find_vision_encoder, load_model
from .objectives import named, objective_of
from .vision_cache import VisionCache

RESUMES = OneOf("auto", "overwrite", other=("a checkpoint folder", existing_path))
QUESTION_SETS = OneOf("all", "classification")  # the values of fine_tune.py's TRAIN_QUESTIONS
CLASS_BALANCES = OneOf("none", "oversample", "weighted")  # weighted: objective=head's loss weights
CHECKPOINTING = OneOf("auto", True, False)  # the values of fine_tune.py's GRADIENT_CHECKPOINTING
TRAIN_LOG = "train_log_history.json"  # the Trainer's log history, written last: a run that has it finished


def balance_classes(data, how, seed):
    """The data as it is ("none"), or with each class's images repeated until every class has as many as the
    largest ("oversample"): all of a class's images as many times as they fit, then a seeded choice of the
    remainder. Every epoch then draws each class equally often, and no image is left out. The list is the same on
    every run with the seed, so the Trainer's seeded shuffle, and with it a resumed run's data order, is too."""
    if how != "oversample":  # "weighted" weighs the loss instead (objectives.head.class_weights)
        return data
    rng = random.Random(seed)
    by_class = defaultdict(list)
    for sample in data["samples"]:
        by_class[sample["label"]].append(sample)
    target = max(map(len, by_class.values()), default=0)
    samples = []
    for name in data["classes"]:
        members = by_class[name]
        if members:
            whole, remainder = divmod(target, len(members))
            samples += members * whole + rng.sample(members, remainder)
    return {**data, "samples": samples}


def prepare_model(model, *, freeze_vision=False, use_lora=False, lora_vision=False, lora_r=16, lora_alpha=32,
                  lora_dropout=0.05, lora_target_modules="all-linear", freeze_backbone=False,
                  skip_frozen_backward=True, cache_vision=False):
    """Freeze the vision encoder and/or wrap the model with LoRA adapters, as the settings ask. A model with a
    classification head (objective=head) trains it too (in LoRA, whole, as peft's modules_to_save), or only it
    (freeze_backbone): the model's objective (objectives.objective_of) says what it added and how that trains.

    A vision encoder left with no trainable weight runs without autograd (skip_frozen_backward=False keeps the
    old behaviour, for comparison): nothing before it is trained either, so no gradient needs it, yet the
    input-gradient hook of gradient checkpointing would make every step back-propagate through all its layers.
    With cache_vision such an encoder also runs once per image (vlmcls.vision_cache).
    """
    encoder = find_vision_encoder(model)
    added = objective_of(model).prepare(model, freeze_backbone)
    if freeze_vision:
        encoder.requires_grad_(False)
    if use_lora:
        from peft import LoraConfig, get_peft_model
        # As in LLaVA's LoRA recipe, adapters go on the language model and the connector; the vision encoder
        # stays as it is unless lora_vision asks for adapters there too.
        vision_adapters = lora_vision and not freeze_vision
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            target_modules=lora_target_modules, task_type="CAUSAL_LM",
                            modules_to_save=added,
                            exclude_modules=None if vision_adapters else rf".*\.({'|'.join(VISION_MODULES)})\..*")
        model = get_peft_model(model, config)
    frozen = not any(p.requires_grad for p in encoder.parameters())
    if skip_frozen_backward and frozen:
        run_without_grad(encoder)
    if cache_vision and frozen:
        VisionCache(encoder, getattr(base_of(model).config, "vision_feature_layer", ()))
    return model


def checkpointing(setting, model):
    """Whether to recompute activations in the backward pass: True or False as set; "auto" does where the vision
    encoder trains. There its 1,024 patches per image hold most of the activations. With it frozen only the
    language model's (some 150 tokens per image) are kept, and recomputing them makes a LoRA step 1.1-1.3x
    slower to save some 0.3 GB at batch 1 (256M architecture, benchmarks/README.md)."""
    if setting != "auto":
        return setting
    return any(p.requires_grad for p in find_vision_encoder(base_of(model)).parameters())


def time_limit(seconds):
    """A TrainerCallback ending training at the first step that finishes after `seconds` of training in this
    process (validation included). Every process follows the main process's clock, so all stop at the same step.
    The learning-rate schedule still runs to the planned steps: a run cut short ends before it has decayed."""
    import time

    from accelerate.utils import broadcast_object_list
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            over = [time.monotonic() - self.start >= seconds]
            broadcast_object_list(over)
            if over[0]:
                control.should_training_stop = True
                if state.is_world_process_zero:
                    print(f"max_train_seconds={seconds}: training ends at step {state.global_step}")
    return TimeLimit()

def last_complete_checkpoint(out):
    """The newest checkpoint-N holding trainer_state.json, which the Trainer writes last: a run killed while
    saving leaves a checkpoint without it, which cannot be loaded."""
    steps = [int(p.name.split("-")[1]) for p in Path(out).glob("checkpoint-*")
             if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()]
    return str(Path(out) / f"checkpoint-{max(steps)}") if steps else None


def checkpoint_to_resume(output_dir, resume):
    """The checkpoint to continue from, or None to start afresh; a finished run is never silently replaced."""
    out = Path(output_dir)
    if resume not in ("auto", "overwrite"):
        if not (Path(resume) / "trainer_state.json").is_file():
            raise UserError(f"resume: {resume} is not a complete checkpoint folder (it has no trainer_state.json)")
        return resume
    if resume == "overwrite" or not out.is_dir():
        return None
    if (out / TRAIN_LOG).exists():
        raise UserError(f"{out} holds a finished run; choose another --output_dir, or --resume=overwrite "
                        "to train again from scratch")
    return last_complete_checkpoint(out)


def clear_previous_run(output_dir):
    """resume=overwrite: old checkpoints and the finished mark go, so an interrupted new run resumes from its own."""
    out = Path(output_dir)
    for old in out.glob("checkpoint-*"):
        shutil.rmtree(old)
    (out / TRAIN_LOG).unlink(missing_ok=True)


def save_merged_lora(trainer, out, base_model_path, objective, n_classes):
    """The Trainer gathers the adapters from all processes (whether DDP, FSDP or DeepSpeed holds them); the main
    process merges them into a freshly loaded base model, as sharded weights cannot be merged in place. What the
    objective added (a head over n_classes) travels in the adapter and is saved beside the merged model."""
    import torch
    from peft import PeftModel
    adapter = Path(out) / "lora_adapter"
    trainer.save_model(str(adapter))
    if trainer.is_world_process_zero():
        base = load_model(base_model_path, torch.float32)
        objective.attach(base, n_classes)  # the adapter's copy of a head needs a head to load into
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        objective.save(merged, out, merged.save_pretrained)
        shutil.rmtree(adapter)


def save_fine_tuned(trainer, processor, data, output_dir, *, base_model_path, merge_lora, run_config, calibration=None,
                    objective="answer", training_images=None, multi_label=None):
    """Model (LoRA merged in; what the objective added, a head, as its own file), processor with its resolution, class
    list (with the objective, what calibration.fit_calibration fitted on the validation images, where it did, under
    TRAINING_IMAGES what identifies the training images, `training_images`: label_issues.hash_training_images, and
    for multi-label data "multi_label": true with `multi_label`, multi_label.chosen_thresholds' record),
    run_config.json and training log."""
    out = Path(output_dir)
    if trainer.is_fsdp_enabled:  # checkpoints may be sharded; the final model is gathered into one file
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if merge_lora:
        save_merged_lora(trainer, out, base_model_path, named(objective), len(data["classes"]))
    else:
        named(objective).save(trainer.model, out, trainer.save_model, trainer.is_world_process_zero())
    if not trainer.is_world_process_zero():
        return
    processor.save_pretrained(out)
    unfitted = "no validation images" if calibration is None else "fit_temperature=false"
    calibration = calibration or {}
    write_json(out / "classes.json", {"classes": data["classes"], "question": data["question"],
                                      "max_image_pixels": data["max_image_pixels"],
                                      "class_bias": calibration.get("class_bias"), "objective": objective,
                                      **{k: v for k, v in calibration.items() if k != "class_bias"},
                                      TRAINING_IMAGES: training_images,
                                      **({"multi_label": True, **multi_label} if multi_label else {})})
    if calibration.get("class_bias"):
        print(describe(calibration["class_bias"]))
    fitted = calibration.get("temperature")
    if multi_label:
        print(f"per-class thresholds ({multi_label['thresholds_chosen']}): " +
              ", ".join(f"{name} {t:.4f}" for name, t in multi_label["thresholds"].items()))
    elif fitted and fitted["value"]:
        print(describe_calibration({"temperature_fit": fitted, "threshold": 0})[0])
    else:
        print(f"note: no temperature fitted ({fitted['reason'] if fitted else unfitted}), so "
              f"{UNCALIBRATED}")
    write_json(out / "run_config.json", run_config)
    # Written last: its presence marks a finished run.
    write_json(out / TRAIN_LOG, trainer.state.log_history)
    print(f"saved the fine-tuned model to {out} ({run_config['device']}, {run_config['dtype']})")
