"""The accuracy benchmark's tasks and stand-in models: real labelled image sets as class folders at the stand-ins'
resolution, each image set split once into a development pool and a confirmation pool, the disjoint folds of each
pool (the images a split scores), and the tiny SmolVLM and LLaVA trained from scratch on them."""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# SmolVLM-256M-Instruct's tokenizer, chat template and processor settings (Apache-2.0, see its README.md)
SMOLVLM_FILES = ROOT / "tests" / "fixtures" / "smolvlm-256m-instruct"
# Each task: where its class folders come from, the share of its pool that rows train on ("train"; None: every
# image outside the scored fold), and the share of its pool a validating row validates on ("val", taken from the
# training images). digits_small trains on about 25 images a class: the regime of many users.
TASK_DATA = {
    "elpv2": {"download": ["--source=elpv", "--elpv_two_classes=true"], "train": None, "val": 0.1},
    "elpv4": {"download": ["--source=elpv"], "train": None, "val": 0.1},
    "digits": {"digits": True, "train": None, "val": 0.15},
    "digits_small": {"digits": True, "train": 0.28, "val": 0.05},
}
# the data set of each task: the rule counts tasks of one data set once (elpv's two label sets are two tasks)
DATA_SET = {"elpv2": "elpv2", "elpv4": "elpv4", "digits": "digits", "digits_small": "digits"}
# the image set each task's images come from: the accuracy protocol fixes its longer budget per image set
IMAGE_SET = {"elpv2": "elpv", "elpv4": "elpv", "digits": "digits", "digits_small": "digits"}
POOL_SALT = "accuracy-pool-1"  # fixes the pool of every image (by its file name): changing it mixes the pools
CONFIRMATION_SHARE = 0.5  # share of each image set in the confirmation pool
FOLDS = {"development": 3, "confirmation": 5}  # disjoint folds of each pool: split seed s scores fold s % folds
# the environment the scripts run in: nothing else passes through (no accelerator, no precision or library setting)
ALLOWED_ENV = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV"]
SCRIPT_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}


def script_env(threads):
    """The allow-listed variables of this process, the fixed ones, and the thread count (0: torch's default)."""
    env = {k: os.environ[k] for k in ALLOWED_ENV if k in os.environ} | SCRIPT_ENV
    return env | ({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})


def run(script, *args, cwd, log, threads):
    """One script as its own process, as a user runs it, in script_env; returns its wall-clock seconds. A failure
    stops the benchmark with the end of the script's output."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                              env=script_env(threads), stdout=out, stderr=subprocess.STDOUT)
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


def pool_of(name):
    """The pool of an image, "development" or "confirmation", fixed by its file name and POOL_SALT alone: the
    same image in two tasks (elpv's in elpv2 and elpv4; the digits in digits and digits_small) is in the same
    pool, whatever else its folder holds."""
    digest = int.from_bytes(hashlib.sha256(f"{POOL_SALT}/{name}".encode()).digest()[:8], "big")
    return "confirmation" if digest < CONFIRMATION_SHARE * 2 ** 64 else "development"


def pool_samples(task, kind, work, size, threads):
    """The images of the task's `kind` pool as one generate_train_json.py file (its questions and answers), in
    the pool's folder: the class folders of images_of, hard-linked, the images of the other pool left out."""
    folder = work / task / f"{kind}-pool"
    if not (folder / "pool.json").is_file():
        import shutil

        from vlmcls.files import write_json
        images = images_of(task, work, size, threads)
        building = folder.with_name(folder.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        for path in sorted(images.rglob("*.png")):
            if pool_of(path.name) == kind:
                (building / "images" / path.parent.name).mkdir(parents=True, exist_ok=True)
                os.link(path, building / "images" / path.parent.name / path.name)
        halves = [building / f"half-{i}.json" for i in (0, 1)]  # the script splits; the halves are joined again
        run("generate_train_json.py", f"--dataset_dir={building / 'images'}", f"--train_json={halves[0]}",
            "--val_json=", f"--test_json={halves[1]}", "--train_ratio=0.5", "--seed=0", cwd=building,
            log=building / "generate.log", threads=threads)
        first, second = (json.loads(h.read_text()) for h in halves)
        write_json(building / "pool.json", {**first, "counts": {}, "samples": sorted(
            first["samples"] + second["samples"], key=lambda s: s["image"])})
        building.rename(folder)
    return json.loads((folder / "pool.json").read_text())


def fold_numbers(labels, seed, folds):
    """The fold of each image: scikit-learn's StratifiedKFold, shuffled by the seed (disjoint, every image once)."""
    from sklearn.model_selection import StratifiedKFold
    numbers = [0] * len(labels)
    for k, (_, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, labels)):
        for i in held:
            numbers[i] = k
    return numbers


def stratified(samples, keep, seed):
    """`keep` of the samples, stratified by class and seeded, and the others."""
    from sklearn.model_selection import train_test_split
    if keep >= len(samples):
        return samples, []
    return train_test_split(samples, train_size=keep, stratify=[s["label"] for s in samples], random_state=seed)


def prepare_split(task, seed, work, *, confirm, size, threads):
    """The files of split seed `seed`, all from the one pool its run may read: "score" (fold seed % folds of the
    partition seeded by seed // folds: the images every row is scored on), "train" (the other folds' images, or
    TASK_DATA's share of the pool), and "validated_train" with "validated_val" (a validating row's: the same
    training images, TASK_DATA's "val" share of the pool set aside to validate on)."""
    kind = "confirmation" if confirm else "development"
    folds, data = FOLDS[kind], TASK_DATA[task]
    folder = work / task / f"{kind}-pool"
    files = {part: folder / f"split-{seed}-{part}.json" for part in ("train", "score", "validated_train",
                                                                      "validated_val")}
    if not all(f.is_file() for f in files.values()):
        from vlmcls.files import write_json
        pool = pool_samples(task, kind, work, size, threads)
        everything = pool["samples"]
        numbers = fold_numbers([s["label"] for s in everything], seed // folds, folds)
        scored = [s for s, k in zip(everything, numbers) if k == seed % folds]
        rest = [s for s, k in zip(everything, numbers) if k != seed % folds]
        train = rest if data["train"] is None else stratified(rest, round(data["train"] * len(everything)), seed)[0]
        validated_train, validated_val = stratified(train, len(train) - round(data["val"] * len(everything)), seed)
        for part, chosen in (("score", scored), ("train", train), ("validated_train", validated_train),
                             ("validated_val", validated_val)):
            write_json(files[part], {**pool, "samples": sorted(chosen, key=lambda s: s["image"])})
    return files


ARCHITECTURES = ("smolvlm", "llava")  # the stand-ins build_model builds


def build_model(folder, seed, *, image_size, patch_size, scale_factor, vision, text, architecture="smolvlm"):
    """A tiny model of `architecture` with random weights from the seed and SmolVLM-256M-Instruct's real tokenizer
    (SMOLVLM_FILES; its 49,280-token vocabulary), saved for from_pretrained as a checkpoint would be. `vision` and
    `text` are (width, layers). smolvlm: Idefics3 with SmolVLM's chat template and processor settings, image_size
    px tiles, the pixel shuffle of scale_factor. llava: LLaVA-1.5's architecture (CLIP vision tower, Llama),
    chat template and CLIP processor, image_size px crops of patch_size * scale_factor px patches, so that it
    reads as many image tokens as the SmolVLM stand-in."""
    import torch
    from tiny_models import build_tiny_llava
    from transformers import AutoProcessor, Idefics3Config, Idefics3ForConditionalGeneration
    if folder.is_dir():
        return folder
    building = folder.with_name(folder.name + ".building")  # renamed when complete: a reused model is whole
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(SMOLVLM_FILES)
    tokenizer = processor.tokenizer
    (vision_width, vision_layers), (text_width, text_layers) = vision, text
    text_config = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=text_width,
                       intermediate_size=2 * text_width, num_hidden_layers=text_layers, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=text_width // 4, hidden_act="silu", rms_norm_eps=1e-5,
                       rope_theta=100000.0, max_position_embeddings=4096, tie_word_embeddings=False,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    vision_config = dict(hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=vision_layers,
                         num_attention_heads=2, image_size=image_size)
    if architecture == "llava":
        build_tiny_llava(building, tokenizer=tokenizer, vision_config=vision_config, text_config=text_config,
                         patch_size=patch_size * scale_factor)
        building.rename(folder)
        return folder
    processor.image_processor.size = {"longest_edge": image_size}
    processor.image_processor.max_image_size = {"longest_edge": image_size}
    processor.image_seq_len = (image_size // patch_size) ** 2 // scale_factor ** 2
    processor.save_pretrained(building)
    ids = {k: text_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = Idefics3Config(
        vision_config=dict(**vision_config, patch_size=patch_size, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        text_config=text_config, scale_factor=scale_factor, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False, **ids)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(building)
    building.rename(folder)
    return folder
