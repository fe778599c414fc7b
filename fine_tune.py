"""Step 3: fine-tune a vision-language model on the training JSON with TRL's SFTTrainer.

By default a linear classifier on the final hidden state at the last prompt token is trained with the model
(OBJECTIVE=head, docs/head.md); with OBJECTIVE=answer, as the original, only the answer and its end-of-answer
token are learned. With a validation set, the images of VAL_JSON are
classified every EVAL_STEPS steps as the evaluation scripts classify them; the best checkpoint by
METRIC_FOR_BEST_MODEL is the model saved, a run that stops improving can end early, and the class bias that
suits the validation images best is saved with the model (see the README), with a temperature that calibrates
the probabilities and the validation images' confidences (docs/calibration.md). Runs on CUDA
(bf16, or fp16 where bf16 is unsupported), Apple MPS or the CPU, as one process or under torchrun /
accelerate launch, and continues an interrupted run from its last checkpoint when started again with
the same command.
"""
from vlmcls.augment import AUGMENTS
from vlmcls.calibration import fit_calibration
from vlmcls.cli import UserError, configure, run_main, settings_of
from vlmcls.compat import library_versions
from vlmcls.images import read_dataset_json, refuse_overlap
from vlmcls.inputs import InputEncoder, auto_workers
from vlmcls.label_issues import check_folds, fold_groups, hash_training_images, training_label_issues
from vlmcls.models import DEVICES, DTYPES, end_token_ids, leave_processes, load_model, load_processor, pick_device, \
    pick_dtype, set_resolution
from vlmcls.multi_label import chosen_thresholds
from vlmcls.objectives import OBJECTIVES, named
from vlmcls.prompt import chat_rows
from vlmcls.training import CHECKPOINTING, CLASS_BALANCES, QUESTION_SETS, RESUMES, balance_classes, \
    checkpoint_to_resume, checkpointing, clear_previous_run, prepare_model, save_fine_tuned, time_limit
from vlmcls.validation import BEST_METRICS, enough_validation, read_validation, trainer_with_validation, \
    validation_arguments
from vlmcls.vision_cache import vision_cache_of

MODEL_PATH = "HuggingFaceTB/SmolVLM-256M-Instruct"  # Hub id or local folder of the base model
TRAIN_JSON = "solar_panel_train_dataset.json"  # from generate_train_json.py
VAL_JSON = "solar_panel_val_dataset.json"  # validation images measured while training ("" or missing: none)
TEST_JSON = "solar_panel_test_dataset.json"  # held-out images; eval loss at the end ("" to skip)
OUTPUT_DIR = "./SmolVLM-256M-Instruct-finetuned"  # fine-tuned model, processor, logs and checkpoints
EQUIVALENT_EPOCHS_TO_TRAIN = 1.0  # passes over the training rows: images, or Q&A pairs without MULTI_TURN
MAX_STEPS = 0  # optimizer steps; 0 = derive from EQUIVALENT_EPOCHS_TO_TRAIN
MAX_TRAIN_SECONDS = 0  # end training at the first step ending after this many seconds of it (0 = no limit)
PER_DEVICE_TRAIN_BATCH_SIZE = 4  # images per device per step
PER_DEVICE_EVAL_BATCH_SIZE = 4  # images per device when validating and computing the test loss
GRADIENT_ACCUMULATION_STEPS = 4  # effective batch = this x batch size x number of processes
WARMUP_STEPS = 50  # linear learning-rate warm-up
LEARNING_RATE = 3e-4  # peak learning rate
WEIGHT_DECAY = 0.01  # AdamW weight decay
LOGGING_STEPS = 25  # log loss and learning rate every this many steps
SAVE_STEPS = 200  # checkpoint every this many steps without validation (with it: at every evaluation)
EVAL_STEPS = 50  # measure accuracy and macro-F1 on the validation images every this many steps
METRIC_FOR_BEST_MODEL = "macro_f1"  # "macro_f1" or "accuracy": the best checkpoint by it is the model saved
EARLY_STOPPING_PATIENCE = 5  # end the run after this many evaluations without improvement (0 = never)
MIN_VALIDATION_IMAGES = 100  # fewer validation images than this: they train instead, no validation-driven steps
OBJECTIVE = "head"  # "head": a linear classifier on the prompt's last state; "answer": write the class name (original)
FREEZE_BACKBONE = False  # objective=head: train the head alone, on each image's state computed once (docs/head.md)
CACHE_FROZEN_STATES = True  # with freeze_backbone: compute each image's state once (False: at every step, as a check)
LABEL_SMOOTHING = 0.0  # objective=head: label smoothing of the cross-entropy (0: none)
CLASS_BALANCE = "none"  # "none"; "oversample": repeat rarer classes; "weighted": loss weights (head, multi-label answer)
FIT_CLASS_BIAS = True  # after training, weigh the class scores against the class frequencies as validation says best
FIT_TEMPERATURE = True  # after the class bias, fit a temperature calibrating the probabilities on the validation images
LABEL_ISSUE_FOLDS = 0  # k >= 2: before training, list training images whose label a k-fold doubts (label-issues.md)
IMAGE_LONGEST_EDGE = 512  # images are resized to this longest edge; 2048 is SmolVLM's shipped setting
IMAGE_SPLITTING = False  # cut large images into 512px tiles plus a global view (the original: true)
ENLARGE_IMAGES = False  # resize smaller images up to IMAGE_LONGEST_EDGE, as the processor does (the original)
TRAIN_QUESTIONS = "all"  # "all": every Q&A pair of the JSON; "classification": only its classification question
AUGMENT = "none"  # random flips of training images: "hflip", "flips" (also up-down), "dihedral" (also quarter turns)
MULTI_TURN = False  # True: an image's Q&A pairs as one chat, the image encoded once; False: one row per pair
INPUT_CACHE_DIR = ""  # "": keep encoded images in memory; a folder: keep them there (data larger than memory)
USE_LORA = False  # train LoRA adapters instead of all weights (merged into the saved model)
LORA_R = 16  # LoRA rank
LORA_ALPHA = 32  # LoRA scaling numerator
LORA_DROPOUT = 0.05  # dropout on the LoRA branch
LORA_TARGET_MODULES = "all-linear"  # peft target_modules: "all-linear" or a list of module names
LORA_VISION = False  # also adapt the vision encoder with LoRA (more memory: backprop through 1,024 patches)
FREEZE_VISION = False  # keep the vision encoder's weights fixed
CACHE_VISION = True  # a frozen vision encoder (freeze_vision, or LoRA without lora_vision) runs once per image
GRADIENT_CHECKPOINTING = "auto"  # recompute activations in backward: less memory, slower; "auto": where vision trains
RESUME = "auto"  # "auto": continue from the last checkpoint; "overwrite": start afresh; or a checkpoint path
DEVICE = "auto"  # auto, cuda, mps or cpu
DTYPE = "auto"  # auto (bf16/fp16 on CUDA, fp32 elsewhere), float32, bfloat16 or float16
NUM_WORKERS = -1  # processes that decode and resize images; -1: one per CPU core (shared under torchrun)
SEED = 42  # seed for weight init of adapters and for the data order


def main():
    from functools import partial

    import torch
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig

    objective = named(OBJECTIVE)
    train_data = read_dataset_json(TRAIN_JSON)
    multi_label = bool(train_data.get("multi_label"))  # one sigmoid per class (docs/training.md)
    objective.check_settings(freeze_backbone=FREEZE_BACKBONE, use_lora=USE_LORA, class_balance=CLASS_BALANCE,
                             augment=AUGMENT, cached=CACHE_FROZEN_STATES, label_smoothing=LABEL_SMOOTHING,
                             multi_label=multi_label)
    if multi_label and LABEL_ISSUE_FOLDS:
        raise UserError(f"label_issue_folds={LABEL_ISSUE_FOLDS}: the label audit does not take multi-label data yet "
                        "(issue 44); use label_issue_folds=0")
    val_data = read_validation(VAL_JSON, train_data)
    test_data = read_dataset_json(TEST_JSON) if TEST_JSON else None
    if test_data and bool(test_data.get("multi_label")) != multi_label:
        raise UserError(f"{TEST_JSON}: {'single' if multi_label else 'multi'}-label, and {TRAIN_JSON} is not; write "
                        "both with one run of generate_train_json.py")
    refuse_overlap(train_data, {"validation": val_data, "test": test_data})
    train_data, val_data = enough_validation(train_data, val_data, MIN_VALIDATION_IMAGES)
    if LABEL_ISSUE_FOLDS:  # copies and look-alikes stay in one fold, and are counted once
        groups = fold_groups(train_data["samples"], train_data["max_image_pixels"])
        check_folds([s["label"] for s in train_data["samples"]], train_data["classes"], LABEL_ISSUE_FOLDS, groups)
    resume = checkpoint_to_resume(OUTPUT_DIR, RESUME)
    device = pick_device(DEVICE)
    dtype = pick_dtype(device, DTYPE)
    torch.manual_seed(SEED)

    processor = load_processor(MODEL_PATH)
    set_resolution(processor, IMAGE_LONGEST_EDGE, IMAGE_SPLITTING)
    # Weights stay in float32; bf16/fp16 run as autocast mixed precision, which AdamW and fp16 need.
    model = load_model(MODEL_PATH, torch.float32)
    model = objective.attach(model, len(train_data["classes"]), multi_label=multi_label)
    model = prepare_model(model, freeze_vision=FREEZE_VISION, use_lora=USE_LORA, lora_vision=LORA_VISION,
                          lora_r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                          lora_target_modules=LORA_TARGET_MODULES, freeze_backbone=FREEZE_BACKBONE,
                          # cached states are all the head reads: the encoder's outputs would never be read again
                          cache_vision=CACHE_VISION and not (FREEZE_BACKBONE and CACHE_FROZEN_STATES))
    end_ids = end_token_ids(processor, model)
    # Workers encode the images once; batches of the encoded images in memory then need no workers of their own.
    workers = auto_workers(NUM_WORKERS)
    encoder = InputEncoder(processor, train_data["max_image_pixels"], enlarge=ENLARGE_IMAGES, cache_dir=INPUT_CACHE_DIR)
    trained = balance_classes(train_data, CLASS_BALANCE, SEED)
    train_rows = chat_rows(trained, TRAIN_QUESTIONS, MULTI_TURN)
    test_rows = chat_rows(test_data, "classification", multi_turn=False) if test_data else []
    val_images = [s["image"] for s in val_data["samples"]] if val_data else []
    encoder.prepare([image for image, _ in train_rows + test_rows] + val_images, workers)

    args = SFTConfig(
        output_dir=OUTPUT_DIR,
        num_train_epochs=EQUIVALENT_EPOCHS_TO_TRAIN, max_steps=MAX_STEPS if MAX_STEPS > 0 else -1,
        per_device_train_batch_size=PER_DEVICE_TRAIN_BATCH_SIZE,
        per_device_eval_batch_size=PER_DEVICE_EVAL_BATCH_SIZE,
        gradient_accumulation_steps=GRADIENT_ACCUMULATION_STEPS, warmup_steps=WARMUP_STEPS,
        learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, logging_steps=LOGGING_STEPS, save_total_limit=2,
        **validation_arguments(val_data is not None, EVAL_STEPS, SAVE_STEPS, METRIC_FOR_BEST_MODEL),
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device == "cpu",
        activation_checkpointing=checkpointing(GRADIENT_CHECKPOINTING, model),
        activation_checkpointing_kwargs={"use_reentrant": False},
        max_length=None, remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
        dataloader_num_workers=workers if INPUT_CACHE_DIR else 0,
        dataloader_persistent_workers=bool(INPUT_CACHE_DIR and workers), report_to=["tensorboard"], seed=SEED,
        data_seed=SEED,
    )
    states = None
    autocast = partial(torch.autocast, args.device.type, dtype=dtype, enabled=dtype != torch.float32)
    if FREEZE_BACKBONE and CACHE_FROZEN_STATES:  # the head trains on these; the backbone never runs again
        states = objective.features(model.to(args.device), processor, encoder, [image for image, _ in train_rows]
                                    + [s["image"] for s in (test_data or {"samples": []})["samples"]] + val_images,
                                    train_data["question"], PER_DEVICE_EVAL_BATCH_SIZE, autocast)
    if LABEL_ISSUE_FOLDS:  # before training: the base model's states never saw these labels (docs/label-issues.md)
        found = states or named("head").features(model.to(args.device), processor, encoder,
                                                 [s["image"] for s in train_data["samples"]], train_data["question"],
                                                 PER_DEVICE_EVAL_BATCH_SIZE, autocast, desc="states for label issues")
        if args.process_index == 0:
            training_label_issues(OUTPUT_DIR, found, train_data["samples"], train_data["classes"], LABEL_ISSUE_FOLDS,
                                  SEED, groups)
    callbacks = [EarlyStoppingCallback(EARLY_STOPPING_PATIENCE)] if val_data and EARLY_STOPPING_PATIENCE > 0 else []
    callbacks += [time_limit(MAX_TRAIN_SECONDS)] if MAX_TRAIN_SECONDS > 0 else []
    training_set = objective.training_set(trained, encoder=encoder, processor=processor, end_ids=end_ids,
                                          train_questions=TRAIN_QUESTIONS, multi_turn=MULTI_TURN,
                                          class_balance=CLASS_BALANCE, label_smoothing=LABEL_SMOOTHING,
                                          how_augment=AUGMENT, seed=SEED, features=states)
    trainer = trainer_with_validation(objective, val_data, PER_DEVICE_EVAL_BATCH_SIZE, encoder, callbacks,
                                      features=states, model=model, args=args, processing_class=processor,
                                      **training_set)
    if trainer.is_world_process_zero():
        if USE_LORA:
            trainer.model.print_trainable_parameters()
        if RESUME == "overwrite":
            clear_previous_run(OUTPUT_DIR)
        if resume:
            print(f"resuming from {resume}")
    # saved with the model: an evaluation run leaves these images out of its label audit (docs/label-issues.md).
    # Every process hashes, so that none waits on the main one at the first collective step.
    training_images = hash_training_images([s["image"] for s in train_data["samples"]],
                                           train_data["max_image_pixels"], progress=trainer.is_world_process_zero())
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero() and (cache := vision_cache_of(model)):
        print(cache.summary())
    if trainer.is_world_process_zero() and trainer.state.best_model_checkpoint:
        print(f"best checkpoint: {trainer.state.best_model_checkpoint} (validation {METRIC_FOR_BEST_MODEL} "
              f"{trainer.state.best_metric:.4f}), the model saved")
    validated = trainer.validation_results() if val_data else None
    calibration = fit_calibration(validated, val_data, [s["label"] for s in trained["samples"]],
                                  metric=METRIC_FOR_BEST_MODEL, class_bias=FIT_CLASS_BIAS,
                                  temperature=FIT_TEMPERATURE) if val_data and not multi_label else None
    # multi-label decisions: per-class thresholds, chosen on the validation images where there are some
    thresholds = chosen_thresholds(validated, val_data, train_data["classes"]) if multi_label else None
    if multi_label:
        print("note: multi-label runs fit no class bias and no temperature (fit_class_bias, fit_temperature: issue 44)")
    if test_rows:
        trainer.remove_callback(EarlyStoppingCallback)  # the test loss is no validation score to stop on
        test_set = objective.test_set(test_data, classes=train_data["classes"], question=train_data["question"],
                                      encoder=encoder, processor=processor, end_ids=end_ids, features=states)
        metrics = trainer.evaluate(test_set, metric_key_prefix="test")
        if trainer.is_world_process_zero():
            print(f"test loss ({objective.MULTI_LABEL_LOSS if multi_label else objective.TEST_LOSS}): "
                  f"{metrics['test_loss']:.4f}")
    save_fine_tuned(trainer, processor, train_data, OUTPUT_DIR, base_model_path=MODEL_PATH, merge_lora=USE_LORA,
                    calibration=calibration, objective=OBJECTIVE, training_images=training_images,
                    multi_label=thresholds,
                    run_config={"settings": settings_of(globals()), "device": device,
                                "gradient_checkpointing": args.activation_checkpointing,
                                "dtype": str(dtype).replace("torch.", ""), "versions": library_versions()})
    leave_processes(args.world_size)


if __name__ == "__main__":
    configure(globals(), choices={"DEVICE": DEVICES, "DTYPE": DTYPES, "RESUME": RESUMES,
                                  "METRIC_FOR_BEST_MODEL": BEST_METRICS, "CLASS_BALANCE": CLASS_BALANCES,
                                  "TRAIN_QUESTIONS": QUESTION_SETS, "AUGMENT": AUGMENTS, "OBJECTIVE": OBJECTIVES,
                                  "GRADIENT_CHECKPOINTING": CHECKPOINTING})
    run_main(main)
