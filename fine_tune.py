"""Step 3: fine-tune a vision-language model on the training JSON with TRL's SFTTrainer.

Only the answer and its end-of-answer token are learned. Runs on CUDA (bf16, or fp16 where bf16 is
unsupported), Apple MPS or the CPU, as one process or under torchrun / accelerate launch, and
continues an interrupted run from its last checkpoint when started again with the same command.
"""
import re
import shutil
from pathlib import Path

from vlm_common import (UserError, configure, conversation, end_token_ids, load_image, load_model, load_processor,
                        pick_device, pick_dtype, read_dataset_json, render_example, run_main, set_resolution,
                        write_json)

MODEL_PATH = "HuggingFaceTB/SmolVLM-256M-Instruct"  # Hub id or local folder of the base model
TRAIN_JSON = "solar_panel_train_dataset.json"  # from generate_train_json.py
TEST_JSON = "solar_panel_test_dataset.json"  # held-out images; eval loss at the end ("" to skip)
OUTPUT_DIR = "./SmolVLM-256M-Instruct-finetuned"  # fine-tuned model, processor, logs and checkpoints
EQUIVALENT_EPOCHS_TO_TRAIN = 1.0  # passes over the training Q&A pairs (fractions allowed)
MAX_STEPS = 0  # optimizer steps; 0 = derive from EQUIVALENT_EPOCHS_TO_TRAIN
PER_DEVICE_TRAIN_BATCH_SIZE = 4  # images per device per step
PER_DEVICE_EVAL_BATCH_SIZE = 4  # images per device when computing the test loss
GRADIENT_ACCUMULATION_STEPS = 4  # effective batch = this x batch size x number of processes
WARMUP_STEPS = 50  # linear learning-rate warm-up
LEARNING_RATE = 3e-4  # peak learning rate
WEIGHT_DECAY = 0.01  # AdamW weight decay
LOGGING_STEPS = 25  # log loss and learning rate every this many steps
SAVE_STEPS = 200  # checkpoint every this many steps (the run resumes from the last one)
IMAGE_LONGEST_EDGE = 512  # images are resized to this longest edge; 2048 is SmolVLM's shipped setting
IMAGE_SPLITTING = False  # cut large images into 512px tiles plus a global view (the original: true)
USE_LORA = False  # train LoRA adapters instead of all weights (merged into the saved model)
LORA_R = 16  # LoRA rank
LORA_ALPHA = 32  # LoRA scaling numerator
LORA_DROPOUT = 0.05  # dropout on the LoRA branch
LORA_TARGET_MODULES = "all-linear"  # peft target_modules: "all-linear" or a list of module names
LORA_VISION = False  # also adapt the vision encoder with LoRA (more memory: backprop through 1,024 patches)
FREEZE_VISION = False  # keep the vision encoder's weights fixed
GRADIENT_CHECKPOINTING = True  # recompute activations in the backward pass: less memory, ~30% slower
RESUME = "auto"  # "auto": continue from the last checkpoint; "overwrite": start afresh; or a checkpoint path
DEVICE = "auto"  # auto, cuda, mps or cpu
DTYPE = "auto"  # auto (bf16/fp16 on CUDA, fp32 elsewhere), float32, bfloat16 or float16
NUM_WORKERS = 0  # data-loader worker processes that decode images
SEED = 42  # seed for weight init of adapters and for the data order

configure(globals())

VISION_MODULES = ("vision_model", "vision_tower", "visual")  # the vision encoder's name in each family
FINISHED_MARKER = "train_log_history.json"  # written last into OUTPUT_DIR by a run that completed


def rows(data, only_classification=False):
    """One training row per (image, question, answer)."""
    return [{"image": s["image"], "question": qa["question"], "answer": qa["answer"]}
            for s in data["samples"] for qa in s["qa"]
            if not only_classification or qa["question"] == data["question"]]


def make_dataset(data, max_pixels, only_classification=False):
    """A datasets.Dataset that decodes images when a batch is drawn; an unreadable file stops the run."""
    from datasets import Dataset

    def to_example(batch):
        examples = [conversation(q, a) for q, a in zip(batch["question"], batch["answer"])]
        return {"images": [[load_image(p, max_pixels)] for p in batch["image"]],
                "prompt": [e["prompt"] for e in examples], "completion": [e["completion"] for e in examples]}
    return Dataset.from_list(rows(data, only_classification)).with_transform(to_example)


class AnswerOnlyCollator:
    """TRL's vision-language collator (completion-only loss), with labels also cut after the end-of-answer token.

    Chat templates may add text after that token (SmolVLM adds a newline); the model should learn to
    stop, not what follows. Examples are rendered here with render_example, as evaluation renders them,
    so a template that omits the end token (llava-hf's) still teaches it. Padding is masked by attention
    mask, not by token id, so an end token that doubles as the pad token keeps its label.
    """

    def __init__(self, processor, end_ids):
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
        self.inner = DataCollatorForVisionLanguageModeling(processor=processor, completion_only_loss=True)
        self.processor = processor
        self.end_ids = list(end_ids)

    def __call__(self, examples):
        import torch
        batch = self.inner([{"images": e["images"], **render_example(self.processor, e, self.end_ids)}
                            for e in examples])
        labels = batch["labels"]
        is_end = torch.isin(labels, torch.tensor(self.end_ids)).int()
        labels[(is_end.cumsum(1) - is_end) > 0] = -100
        return batch


def find_vision_encoder(model):
    inner = getattr(model, "model", model)
    for name in VISION_MODULES:
        if hasattr(inner, name):
            return getattr(inner, name)
    raise UserError(f"freeze_vision: no vision encoder named any of {VISION_MODULES} in {type(model).__name__}")


def prepare_model(model):
    if FREEZE_VISION:
        find_vision_encoder(model).requires_grad_(False)
    if USE_LORA:
        from peft import LoraConfig, get_peft_model
        # As in LLaVA's LoRA recipe, adapters go on the language model and the connector; the vision encoder
        # stays as it is unless LORA_VISION asks for adapters there too.
        vision_adapters = LORA_VISION and not FREEZE_VISION
        config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                            target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM",
                            exclude_modules=None if vision_adapters else rf".*\.({'|'.join(VISION_MODULES)})\..*")
        model = get_peft_model(model, config)
    return model


def last_complete_checkpoint(out):
    """The newest checkpoint-N holding trainer_state.json, which the Trainer writes last: a run killed while
    saving leaves a checkpoint without it, which cannot be loaded."""
    steps = [int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")
             if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()]
    return str(out / f"checkpoint-{max(steps)}") if steps else None


def checkpoint_to_resume():
    """The checkpoint to continue from, or None to start afresh; a finished run is never silently replaced."""
    out = Path(OUTPUT_DIR)
    if RESUME not in ("auto", "overwrite"):
        if not (Path(RESUME) / "trainer_state.json").is_file():
            raise UserError(f"resume: {RESUME} is not a complete checkpoint folder (it has no trainer_state.json)")
        return RESUME
    if RESUME == "overwrite" or not out.is_dir():
        return None
    if (out / FINISHED_MARKER).exists():
        raise UserError(f"{out} holds a finished run; choose another --output_dir, or --resume=overwrite "
                        "to train again from scratch")
    return last_complete_checkpoint(out)


def clear_previous_run():
    """RESUME=overwrite: old checkpoints and the finished mark go, so an interrupted new run resumes from its own."""
    out = Path(OUTPUT_DIR)
    for old in out.glob("checkpoint-*"):
        shutil.rmtree(old)
    (out / FINISHED_MARKER).unlink(missing_ok=True)


def save_merged_lora(trainer, out):
    """The Trainer gathers the adapters from all processes (whether DDP, FSDP or DeepSpeed holds them); the main
    process merges them into a freshly loaded base model, as sharded weights cannot be merged in place."""
    import torch
    from peft import PeftModel
    adapter = out / "lora_adapter"
    trainer.save_model(str(adapter))
    if trainer.is_world_process_zero():
        merged = PeftModel.from_pretrained(load_model(MODEL_PATH, torch.float32), adapter).merge_and_unload()
        merged.save_pretrained(out)
        shutil.rmtree(adapter)


def save(trainer, processor, data, device, dtype):
    """Model (LoRA merged in), processor with its resolution, class list and training log, in OUTPUT_DIR."""
    out = Path(OUTPUT_DIR)
    if trainer.is_fsdp_enabled:  # checkpoints may be sharded; the final model is gathered into one file
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if USE_LORA:
        save_merged_lora(trainer, out)
    else:
        trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return
    processor.save_pretrained(out)
    write_json(out / "classes.json", {"classes": data["classes"], "question": data["question"],
                                      "max_image_pixels": data["max_image_pixels"]})
    # Written last: its presence marks a finished run.
    write_json(out / FINISHED_MARKER, trainer.state.log_history)
    print(f"saved the fine-tuned model to {out} ({device}, {str(dtype).replace('torch.', '')})")


def main():
    import torch
    from trl import SFTConfig, SFTTrainer

    train_data = read_dataset_json(TRAIN_JSON)
    test_data = read_dataset_json(TEST_JSON) if TEST_JSON else None
    resume = checkpoint_to_resume()
    device = pick_device(DEVICE)
    dtype = pick_dtype(device, DTYPE)
    torch.manual_seed(SEED)

    processor = load_processor(MODEL_PATH)
    set_resolution(processor, IMAGE_LONGEST_EDGE, IMAGE_SPLITTING)
    # Weights stay in float32; bf16/fp16 run as autocast mixed precision, which AdamW and fp16 need.
    model = prepare_model(load_model(MODEL_PATH, torch.float32))
    max_pixels = train_data["max_image_pixels"]

    args = SFTConfig(
        output_dir=OUTPUT_DIR,
        num_train_epochs=EQUIVALENT_EPOCHS_TO_TRAIN, max_steps=MAX_STEPS if MAX_STEPS > 0 else -1,
        per_device_train_batch_size=PER_DEVICE_TRAIN_BATCH_SIZE,
        per_device_eval_batch_size=PER_DEVICE_EVAL_BATCH_SIZE,
        gradient_accumulation_steps=GRADIENT_ACCUMULATION_STEPS, warmup_steps=WARMUP_STEPS,
        learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, logging_steps=LOGGING_STEPS,
        save_strategy="steps", save_steps=SAVE_STEPS, save_total_limit=2,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device == "cpu",
        gradient_checkpointing=GRADIENT_CHECKPOINTING, gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=None, remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
        dataloader_num_workers=NUM_WORKERS, report_to=["tensorboard"], seed=SEED, data_seed=SEED,
    )
    trainer = SFTTrainer(
        model=model, args=args, processing_class=processor,
        train_dataset=make_dataset(train_data, max_pixels),
        eval_dataset=make_dataset(test_data, max_pixels, only_classification=True)
        if test_data and test_data["samples"] else None,
        data_collator=AnswerOnlyCollator(processor, end_token_ids(processor, model)),
    )
    if trainer.is_world_process_zero():
        if USE_LORA:
            trainer.model.print_trainable_parameters()
        if RESUME == "overwrite":
            clear_previous_run()
        if resume:
            print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        if trainer.is_world_process_zero():
            print(f"test loss (classification answers): {metrics['eval_loss']:.4f}")
    save(trainer, processor, train_data, device, dtype)


if __name__ == "__main__":
    run_main(main)
