"""Images in: decoding and validation, class folders, and the data set JSON files that list them."""
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from .cli import UserError
from .files import write_csv

def load_image(path, max_pixels):
    """Open and fully decode an image as RGB with its EXIF rotation applied, or raise UserError saying why not.

    Alpha is composited on white, 16-bit and float images are scaled to 8 bits, and an image over
    `max_pixels` is refused before it is decoded (a decompression bomb would otherwise fill memory).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UserError(f"{path}: {width}x{height} is {width * height} pixels, over the limit of "
                                f"{max_pixels} (possible decompression bomb)")
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated image ({e})") from None


def _to_rgb(image):
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(pixels.max()), 1e-12)
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def pixel_hash(image):
    """Hash of the decoded pixels: the same picture saved twice, under any name or format, hashes the same."""
    return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()


def list_files(folder):
    """Every file under `folder`, sorted, hidden files included (a file that is not an image is reported)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def class_folders(dataset_dir):
    """The class sub-folders of an image-folder data set, sorted by name; refuse a layout that cannot be used."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (run download_dataset.py first, or set --dataset_dir)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise UserError(f"{root}: no class sub-folders found (expected one folder of images per class; "
                        f"found {found or 'nothing'})")
    empty = [p.name for p in folders if not list_files(p)]
    if empty:
        raise UserError(f"{root}: class folder(s) with no images: {', '.join(empty)}")
    return folders


def scan_images(paths, max_pixels, progress=True):
    """Decode each file once. Returns ([(path, pixel hash)], [(path, reason)]) for the good and the skipped."""
    from tqdm import tqdm
    good, skipped = [], []
    for path in tqdm(paths, desc="checking images", unit="img", disable=not progress):
        try:
            good.append((path, pixel_hash(load_image(path, max_pixels))))
        except UserError as e:
            skipped.append((path, str(e).split(": ", 1)[1]))
    return good, skipped


def print_skipped(skipped, csv_path=None):
    """One summary line, and each skipped file with its reason (also to csv_path, if given)."""
    if csv_path is not None:
        write_csv(csv_path, ["path", "reason"], [(str(p), r) for p, r in skipped])
    if not skipped:
        return
    where = f" (listed in {csv_path})" if csv_path is not None else ""
    print(f"skipped {len(skipped)} file(s) that cannot be used{where}:")
    for path, reason in skipped:
        print(f"  {path}: {reason}")



def group_duplicates(good, label_of):
    """Images with identical pixels form one group, so they land on the same side of a split.
    `good` is [(path, pixel hash)]; returns the groups and those whose images carry different labels."""
    by_hash = defaultdict(list)
    for path, digest in good:
        by_hash[digest].append(path)
    groups = sorted(by_hash.values())
    conflicts = [g for g in groups if len({label_of[p] for p in g}) > 1]
    return groups, conflicts


def split_groups(groups, label_of, classes, held_out_ratio, seed):
    """Split groups of images per class, seeded, holding out about `held_out_ratio` of each class: at least one
    held-out group for every class with two or more, at least one kept. Returns (kept, held out) paths, sorted."""
    rng = random.Random(seed)
    by_class = defaultdict(list)
    for group in groups:
        by_class[label_of[group[0]]].append(group)
    kept, held_out = [], []
    for name in classes:
        members = by_class[name]
        rng.shuffle(members)
        n = len(members)
        n_out = 0 if n < 2 else min(n - 1, max(1, round(n * held_out_ratio)))
        held_out += [p for g in members[:n_out] for p in g]
        kept += [p for g in members[n_out:] for p in g]
    return sorted(kept), sorted(held_out)


def file_digest(path):
    """Hash of a file's bytes: a copy of an image under another name or folder hashes the same."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None


# The look-alike check. Two images are the same picture when their mean colours are within MEAN_COLOUR_TOLERANCE
# levels in every channel and their 16x16 greyscale thumbnails, each less its mean, differ (RMS) by at most
# THUMBNAIL_TOLERANCE of the larger thumbnail's spread (its standard deviation, at least THUMBNAIL_MIN_SPREAD grey
# levels, so that flat images are told apart by their colour alone). The thumbnail is made with a bilinear filter,
# whose weights follow the image's size smoothly; a box filter's pixel-edge rounding moves half-size copies of
# sharp images apart. Measured on photos, solar cells, digits and drawings: JPEG re-encodings down to quality 30 and
# resizes from 0.5x to 1.5x (nearest-neighbour shrinking aside), alone or together, stay under 0.035 and within 3
# levels of mean colour; the closest distinct images among the 2,624 elpv solar cells are at 0.054 (mostly
# neighbours in its own order), among sklearn's 1,797 digits at 0.098.
THUMBNAIL_SIDE = 16
THUMBNAIL_TOLERANCE = 0.04
THUMBNAIL_MIN_SPREAD = 12.0
MEAN_COLOUR_TOLERANCE = 6.0


def look(image):
    """What the look-alike check compares of an RGB image: (its greyscale thumbnail less its mean, flattened; its
    mean colour)."""
    side = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    thumbnail = np.asarray(image.convert("L").convert("F").resize(side, Image.BILINEAR), dtype=np.float64).ravel()
    return thumbnail - thumbnail.mean(), np.array(ImageStat.Stat(image).mean)


def lookalikes(looks, others, rows_at_once=256):
    """For each look in `looks`, the index of the closest of `others` that is the same picture by the look-alike
    check, or -1. Compares every pair, a block of rows at a time to bound memory."""
    found = np.full(len(looks), -1)
    if not looks or not others:
        return found
    a, b = (np.stack([t for t, _ in x]) for x in (looks, others))
    colour_a, colour_b = (np.stack([c for _, c in x]) for x in (looks, others))
    energy_a, energy_b = (a * a).sum(1), (b * b).sum(1)
    for start in range(0, len(a), rows_at_once):
        rows = slice(start, start + rows_at_once)
        # |x - y|^2 = |x|^2 + |y|^2 - 2 x.y, all pairs at once
        distance = np.sqrt(np.maximum(energy_a[rows, None] + energy_b[None] - 2 * a[rows] @ b.T, 0) / a.shape[1])
        spread = np.sqrt(np.maximum(energy_a[rows, None], energy_b[None]) / a.shape[1])
        relative = distance / np.maximum(spread, THUMBNAIL_MIN_SPREAD)
        for channel in range(3):
            far = np.abs(colour_a[rows, channel, None] - colour_b[None, :, channel]) > MEAN_COLOUR_TOLERANCE
            relative[far] = np.inf
        best = relative.argmin(1)
        found[rows] = np.where(relative[np.arange(len(best)), best] <= THUMBNAIL_TOLERANCE, best, -1)
    return found


def lookalike_groups(paths, max_pixels, progress=True):
    """The images in groups, each path in exactly one: identical pixels, and look-alikes by the check
    refuse_overlap makes (chains of them too), land in one group (decoding every image once)."""
    from tqdm import tqdm
    paths = list(paths)
    parent = list(range(len(paths)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    first, looks = {}, []
    for i, path in enumerate(tqdm(paths, desc="grouping copies and look-alikes", unit="img", disable=not progress)):
        image = load_image(path, max_pixels)
        parent[i] = first.setdefault(pixel_hash(image), i)
        looks.append(look(image))
    for i in range(len(paths)):  # join i's group to any look-alike outside it, until none is left
        while True:
            outside = [j for j in range(len(paths)) if root(j) != root(i)]
            match = lookalikes([looks[i]], [looks[j] for j in outside])[0]
            if match < 0:
                break
            parent[root(outside[match])] = root(i)
    groups = defaultdict(list)
    for i, path in enumerate(paths):
        groups[root(i)].append(path)
    return list(groups.values())


def refuse_overlap(train_data, held_out, progress=True):
    """Stop, naming one image, where a held-out data set (`held_out`: {"validation": data, "test": data}, None
    for one not used) shares an image with the training data, by path, by file content, or as the same picture
    resized or re-encoded (decoding every image once): a held-out image the model trained on measures nothing."""
    from tqdm import tqdm
    train_paths = sorted({s["image"] for s in train_data["samples"]})
    held = [(kind, s["image"]) for kind, data in held_out.items() for s in (data or {}).get("samples", [])]
    if not held:
        return
    train_set = set(train_paths)
    by_digest = {file_digest(p): p for p in train_paths}
    for kind, path in held:
        if path in train_set:
            raise UserError(f"{path}: this {kind} image is also a training image; write the splits with one "
                            "run of generate_train_json.py, which keeps them apart")
        twin = by_digest.get(file_digest(path))
        if twin:
            raise UserError(f"{path}: this {kind} image has the same content as the training image {twin}; "
                            "write the splits with one run of generate_train_json.py, which keeps copies "
                            "together")
    held_paths = sorted({path for _, path in held})
    bar = tqdm(train_paths + held_paths, desc="checking held-out images for copies of training images", unit="img",
               disable=not progress)
    looks = {path: look(load_image(path, train_data["max_image_pixels"])) for path in bar}
    twins = lookalikes([looks[p] for p in held_paths], [looks[p] for p in train_paths])
    twin_of = {path: train_paths[i] for path, i in zip(held_paths, twins) if i >= 0}
    for kind, path in held:
        if path in twin_of:
            raise UserError(f"{path}: this {kind} image looks like the training image {twin_of[path]} (the same "
                            "picture, resized or re-encoded); keep one of the two in the data set and write the "
                            "splits again with one run of generate_train_json.py")


def read_dataset_json(path):
    """A data set written by generate_train_json.py, with image paths made absolute."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (run generate_train_json.py first, or set the path)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        classes, samples = data["classes"], data["samples"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a data set written by generate_train_json.py ({e!r})") from None
    for i, sample in enumerate(samples):
        if sample.get("label") not in classes:
            raise UserError(f"{path}: sample {i} ({sample.get('image')}) has label {sample.get('label')!r}, "
                            f"which is not one of the classes {classes}")
        sample["image"] = str((path.parent / sample["image"]).resolve())
    return data

