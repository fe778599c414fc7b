"""The accuracy benchmark's tasks and stand-in model: real labelled image sets as class folders at the stand-in's
resolution, the splits of each seed (made by generate_train_json.py), and the tiny SmolVLM trained from scratch on
them."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Each task: where its class folders come from, the share of the images rows train on (the rest held out:
# generate_train_json.py's TRAIN_RATIO), the share a validating row validates on (VAL_RATIO), and, in a
# development run, the share of the images scored (taken from the held-out side, which is never scored there).
# digits_small holds out most images, so about 25 training images a class remain: the regime of many users.
TASK_DATA = {
    "elpv2": {"download": ["--source=elpv", "--elpv_two_classes=true"], "train": 0.7, "val": 0.1, "dev": 0.15},
    "elpv4": {"download": ["--source=elpv"], "train": 0.7, "val": 0.1, "dev": 0.15},
    "digits": {"digits": True, "train": 0.7, "val": 0.1, "dev": 0.15},
    "digits_small": {"digits": True, "train": 0.14, "val": 0.025, "dev": 0.3},
}


def run(script, *args, cwd, log, threads):
    """One script as its own process, as a user runs it; returns its wall-clock seconds. A failure stops the
    benchmark with the end of the script's output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = Path(log).read_text()[-3000:]
        sys.exit(f"error: {script} {' '.join(map(str, args))} failed ({proc.returncode}); end of {log}:\n{tail}")
    return time.perf_counter() - start


def digit_images(size):
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as `size` px images with their classes, dark
    ink on white as on paper, each pixel a square (nearest neighbour: nothing is invented)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    for pixels, target in zip(digits.images, digits.target):
        grey = (255 - pixels * 255 / 16).round().astype(np.uint8)
        yield Image.fromarray(grey).resize((size, size), Image.NEAREST), DIGIT_NAMES[target]


def write_digits(folder, size):
    """digit_images as `size` px PNG class folders."""
    building = folder.with_name(folder.name + ".building")
    for i, (image, name) in enumerate(digit_images(size)):
        (building / name).mkdir(parents=True, exist_ok=True)
        image.save(building / name / f"{i:04d}.png")
    building.rename(folder)


def write_resized(source, folder, size):
    """Every class folder of `source` with its images resized to `size` px (the stand-in model's resolution, so
    that no run spends its time shrinking the same images again), as PNGs."""
    from PIL import Image
    building = folder.with_name(folder.name + ".building")
    for path in sorted(source.rglob("*.png")):
        out = building / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.resize((size, size), Image.LANCZOS).save(out)
    building.rename(folder)


def images_of(task, work, size, threads):
    data = TASK_DATA[task]
    images = work / ("digits" if data.get("digits") else task) / "images"
    if not images.is_dir():
        images.parent.mkdir(parents=True, exist_ok=True)
        if data.get("digits"):
            write_digits(images, size)
        else:
            download = images.with_name("downloaded")
            if not download.is_dir():
                run("download_dataset.py", *data["download"], f"--dataset_dir={download}", cwd=work,
                    log=work / f"{task}-download.log", threads=threads)
            write_resized(download, images, size)
    return images


def samples(path):
    return json.loads(Path(path).read_text())["samples"]


def resolved(path):
    return {str((Path(path).parent / s["image"]).resolve()) for s in samples(path)}


def prepare_split(task, seed, work, *, confirm, size, threads):
    """The files of one split seed: "train" (what rows train on), "score" (the images every row is scored on),
    and "validated_train" with "validated_val" (a validating row's: the same training images, VAL_RATIO of them
    set aside to validate on). Confirmation scores the held-out (test) images. Development scores images of the
    held-out side that confirmation never scores (a development split's test images are never read), so that
    every choice is made on validation images."""
    data, images = TASK_DATA[task], images_of(task, work, size, threads)
    plain, validated = (work / task / f"{'split' if confirm else 'dev-split'}-{seed}{suffix}"
                        for suffix in ("", "-validated"))
    train_ratio = data["train"] + (0 if confirm else data["dev"])  # development: train + scored, then unread test
    held = 0 if confirm else data["dev"]
    for out, val_ratio in ((plain, held), (validated, held + data["val"])):
        if not (out / "test.json").is_file():
            out.mkdir(parents=True, exist_ok=True)
            run("generate_train_json.py", f"--dataset_dir={images}", f"--train_json={out / 'train.json'}",
                f"--val_json={out / 'val.json'}", f"--test_json={out / 'test.json'}", f"--seed={seed}",
                f"--train_ratio={train_ratio}", f"--val_ratio={val_ratio}", cwd=work, log=out / "generate.log",
                threads=threads)
    score = plain / ("test.json" if confirm else "val.json")
    inner = validated / ("val.json" if confirm else "inner-val.json")
    if not confirm and not inner.is_file():  # the validated split's validation images less the scored ones
        scored = resolved(score)
        kept = [s for s in samples(validated / "val.json")
                if str((validated / s["image"]).resolve()) not in scored]
        base = json.loads((validated / "val.json").read_text())
        from vlmcls.files import write_json
        write_json(inner, {**base, "samples": kept})
    if not resolved(score) <= resolved(validated / ("test.json" if confirm else "val.json")) or \
            resolved(plain / "train.json") != resolved(validated / "train.json") | resolved(inner):
        sys.exit(f"error: {task} seed {seed}: the splits with and without validation images do not nest (the "
                 "validated split must keep the scored images out and train on the others)")
    return {"train": plain / "train.json", "score": score, "validated_train": validated / "train.json",
            "validated_val": inner}


def build_model(folder, seed, *, image_size, patch_size, scale_factor, vision, text):
    """A tiny SmolVLM (Idefics3) of image_size px tiles, random weights from the seed, with the tests' SmolVLM
    tokenizer, chat template and processor, saved for from_pretrained as a checkpoint would be. `vision` and
    `text` are (width, layers)."""
    import torch
    from tiny_models import build_tiny_smolvlm
    from transformers import AutoProcessor, Idefics3Config, Idefics3ForConditionalGeneration
    if folder.is_dir():
        return folder
    building = folder.with_name(folder.name + ".building")  # renamed when complete: a reused model is whole
    torch.manual_seed(seed)
    build_tiny_smolvlm(building, image_longest_edge=image_size)
    processor = AutoProcessor.from_pretrained(building)
    processor.image_processor.max_image_size = {"longest_edge": image_size}
    processor.image_seq_len = (image_size // patch_size) ** 2 // scale_factor ** 2
    processor.save_pretrained(building)
    tokenizer = processor.tokenizer
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    (vision_width, vision_layers), (text_width, text_layers) = vision, text
    config = Idefics3Config(
        vision_config=dict(hidden_size=vision_width, intermediate_size=2 * vision_width,
                           num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
                           patch_size=patch_size, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=text_width,
                         intermediate_size=2 * text_width, num_hidden_layers=text_layers, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=text_width // 4, hidden_act="silu", rms_norm_eps=1e-5,
                         rope_theta=100000.0, max_position_embeddings=4096, tie_word_embeddings=False, **ids),
        scale_factor=scale_factor, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False, **ids)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(building)  # replaces the 512 px tiny model's weights and config
    building.rename(folder)
    return folder
