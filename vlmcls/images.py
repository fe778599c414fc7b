"""Images in: decoding and validation, class folders, and the data set JSON files that list them."""
import hashlib
import itertools
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from .cli import UserError
from .files import write_csv
from .labels import label_text, parse_labels
from .prompt import multi_label_question

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
    """Decode each file once. Returns ([(path, look)], [(path, reason)]) for the good and the skipped."""
    from tqdm import tqdm
    good, skipped = [], []
    for path in tqdm(paths, desc="checking images", unit="img", disable=not progress):
        try:
            good.append((path, look(load_image(path, max_pixels))))
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



def group_duplicates(good, label_of, max_pixels):
    """Images that are the same picture (identical pixels, or look-alikes by the copy guard's rule: group_looks)
    form one group, so they land on the same side of a split and fine_tune.py's check never refuses it.
    `good` is [(path, look)]; returns the groups and those whose images carry different labels."""
    groups = group_looks([p for p, _ in good], [x for _, x in good], max_pixels)
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
# levels in every channel, their 16x16 thumbnails' grey levels (luma), each less its mean, differ (RMS) by at most
# THUMBNAIL_TOLERANCE of the larger one's spread (its standard deviation, at least THUMBNAIL_MIN_SPREAD levels, so
# that flat images are told apart by their colour alone), and their thumbnails' colour (chroma: Cb and Cr, each less
# its mean) differ (RMS) by at most CHROMA_TOLERANCE levels. Grey alone took a layout in other colours whose grey
# levels and mean colour agree (red-green stripes and olive-violet ones) for the same picture. Colour is compared in
# levels, not relative to its spread: JPEG stores colour coarser than grey (half the resolution, coarser steps), and
# a photo's colours vary little, so a relative tolerance took its re-encodings for other pictures. The thumbnail is
# made with a bilinear filter, whose weights follow the image's size smoothly; a box filter's pixel-edge rounding
# moves half-size copies of sharp images apart. Measured by benchmarks/copy_guard.py (results-copy-guard.md).
THUMBNAIL_SIDE = 16
THUMBNAIL_TOLERANCE = 0.04
THUMBNAIL_MIN_SPREAD = 12.0
CHROMA_TOLERANCE = 4.0
MEAN_COLOUR_TOLERANCE = 6.0
# The second stage: each pair the thumbnails take for the same picture is compared again at the pair's common size
# (the smaller width and height of the two, after capping each image's longer side at DETAIL_MAX_SIDE pixels),
# where a layout finer than the thumbnail shows: 4 px stripes and 8 px stripes of the same colours blur to the same
# thumbnail. There each image's fine detail (each YCbCr channel less its Gaussian blur, sigma the longer side over
# DETAIL_BLUR: half a thumbnail pixel) is compared, luma alone, and chroma (Cb and Cr jointly, as 2x2 means: the
# resolution JPEG keeps them at). A copy's detail is its original's, weakened (resizing and JPEG erase fine detail,
# chroma first) plus noise. So the pair is two pictures when, in luma or in chroma, the weaker detail is clearly
# present (at least DETAIL_FLOOR levels RMS and DETAIL_SHARE of the stronger) and the two do not agree (cosine
# below DETAIL_MAX_COSINE). Where the weaker detail is erased, the pair stays the same picture. (A lower floor for
# luma told grids of nearly isoluminant colours apart but lost JPEG quality-75 copies of 4 px diagonal stripes,
# whose 3 levels of grey detail JPEG turns to a cosine of 0.3.)
# Then the colours at mid scale (Cb and Cr blurred with sigma MID_BLUR pixels at the common size, which smooths away
# JPEG's block noise and 4:2:0): a copy differs from its original mostly at edges, a layout in other colours (of the
# same hues at another saturation, which the detail's cosine cannot tell from a copy's weakened colour) wherever its
# colours differ, so the pair is two pictures when at least half its pixels differ by more than MID_TOLERANCE
# levels (the median of the Cb-Cr difference's length). Chosen on benchmarks/copy_guard.py's sets, its development
# data (results-copy-guard.md): values that lose no resize and no JPEG quality >= 50 copy there; at mid scale the
# JPEG quality-50 and -75 copies of all 1,200 structured images differ from their originals by at most 7.5 levels.
DETAIL_MAX_SIDE = 256
DETAIL_BLUR = 32.0
DETAIL_FLOOR = 4.0
DETAIL_SHARE = 0.1
DETAIL_MAX_COSINE = 0.5
MID_BLUR = 2.0
MID_TOLERANCE = 8.0


def look(image):
    """What the look-alike check compares of an RGB image: (its thumbnail's grey levels, less their mean; its
    thumbnail's Cb and Cr, each less its mean; its mean colour), the thumbnails flattened."""
    side = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    channels = [np.asarray(band.convert("F").resize(side, Image.BILINEAR), dtype=np.float64).ravel()
                for band in image.convert("YCbCr").split()]
    luma, cb, cr = (c - c.mean() for c in channels)
    return luma, np.concatenate([cb, cr]), np.array(ImageStat.Stat(image).mean)


def look_distance(one, other):
    """How far apart two looks are, in tolerances: the larger of their grey levels' RMS difference as a share of
    the larger spread (at least THUMBNAIL_MIN_SPREAD) over THUMBNAIL_TOLERANCE and their colour's RMS difference
    over CHROMA_TOLERANCE; infinite where their mean colours differ by more than MEAN_COLOUR_TOLERANCE in a channel.
    The same picture: at most 1."""
    (luma_a, chroma_a, colour_a), (luma_b, chroma_b, colour_b) = one, other
    if np.abs(colour_a - colour_b).max() > MEAN_COLOUR_TOLERANCE:
        return np.inf
    spread = max(np.sqrt(max((luma_a ** 2).mean(), (luma_b ** 2).mean())), THUMBNAIL_MIN_SPREAD)
    grey = np.sqrt(((luma_a - luma_b) ** 2).mean()) / spread / THUMBNAIL_TOLERANCE
    return max(grey, np.sqrt(((chroma_a - chroma_b) ** 2).mean()) / CHROMA_TOLERANCE)


def _rms_distances(a, b):
    """RMS differences of every row of `a` with every row of b, and their RMS values: |x - y|^2 = |x|^2 + |y|^2 -
    2 x.y, all pairs at once."""
    energy_a, energy_b = (a * a).sum(1), (b * b).sum(1)
    distance = np.sqrt(np.maximum(energy_a[:, None] + energy_b[None] - 2 * a @ b.T, 0) / a.shape[1])
    return distance, np.sqrt(np.maximum(energy_a[:, None], energy_b[None]) / a.shape[1])


def detail_view(image):
    """What the second stage compares of an RGB image: the image, its longer side capped at DETAIL_MAX_SIDE."""
    scale = DETAIL_MAX_SIDE / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def _fine_detail(view, size):
    """A detail view's detail at `size`: its fine detail (luma, chroma as 2x2 means of Cb and Cr), each flattened,
    and its Cb and Cr at mid scale (blurred by MID_BLUR pixels)."""
    from scipy.ndimage import gaussian_filter
    ycc = np.asarray(view.resize(size, Image.BILINEAR).convert("YCbCr"), dtype=np.float64)
    sigma = max(size) / DETAIL_BLUR
    detail = ycc - gaussian_filter(ycc, (sigma, sigma, 0), mode="reflect")
    height, width = size[1] // 2 * 2, size[0] // 2 * 2
    chroma = detail[:height, :width, 1:].reshape(height // 2, 2, width // 2, 2, 2).mean((1, 3))
    mid = gaussian_filter(ycc[..., 1:], (MID_BLUR, MID_BLUR, 0), mode="reflect")
    return detail[..., 0].ravel(), chroma.ravel(), mid


def same_fine_detail(one, other):
    """Whether two detail views (detail_view) are the same picture at their common size: False where, in luma or
    in chroma, both have clear fine detail (the weaker at least DETAIL_FLOOR levels RMS and DETAIL_SHARE of the
    stronger) and the two do not agree (cosine under DETAIL_MAX_COSINE), or where at least half the pixels' colours
    at mid scale differ by more than MID_TOLERANCE levels. Symmetric in its two arguments."""
    size = (min(one.width, other.width), min(one.height, other.height))
    *details_a, mid_a = _fine_detail(one, size)
    *details_b, mid_b = _fine_detail(other, size)
    for a, b in zip(details_a, details_b):
        energy_a, energy_b = a @ a, b @ b
        weak, strong = (np.sqrt(e / max(a.size, 1)) for e in sorted((energy_a, energy_b)))
        clear = weak >= max(DETAIL_FLOOR, DETAIL_SHARE * strong)
        if clear and a @ b < DETAIL_MAX_COSINE * np.sqrt(energy_a * energy_b):
            return False
    return bool(np.median(np.linalg.norm(mid_a - mid_b, axis=-1)) <= MID_TOLERANCE)


class _DetailViews:
    """The detail views of `paths`, each decoded when a pair first needs it and kept: only images in candidate pairs
    are decoded again (in a real data set, few)."""

    def __init__(self, paths, max_pixels):
        self.paths, self.max_pixels, self.views = list(paths), max_pixels, {}

    def __getitem__(self, i):
        if i not in self.views:
            self.views[i] = detail_view(load_image(self.paths[i], self.max_pixels))
        return self.views[i]


def lookalike_pairs(looks, others=None, tolerance=1.0, rows_at_once=256, views=None, other_views=None):
    """Every pair (i, j) of looks[i] and others[j] within `tolerance` by look_distance (1: the same picture),
    sorted (others None: the pairs i < j within `looks`). All pairs are compared at once, a block of rows at a time
    to bound memory, with a margin; each pair found is then measured alone, so that its answer never depends on the
    block's rounding: the splits generate_train_json.py writes and fine_tune.py's check agree on every pair. With
    `views` (and `other_views`, for `others`: each indexable like the looks, giving detail views), a pair is kept
    only if its fine detail agrees too (same_fine_detail): the copy guard's whole rule. Without: the candidates."""
    within = others is None
    others = looks if within else others
    other_views = views if within else other_views
    if not looks or not others:
        return []
    (luma_a, chroma_a, colour_a), (luma_b, chroma_b, colour_b) = (
        [np.stack(part) for part in zip(*x)] for x in (looks, others))
    pairs = []
    for start in range(0, len(looks), rows_at_once):
        rows = slice(start, start + rows_at_once)
        grey, spread = _rms_distances(luma_a[rows], luma_b)
        near = grey <= 1.01 * tolerance * THUMBNAIL_TOLERANCE * np.maximum(spread, THUMBNAIL_MIN_SPREAD) + 1e-6
        near &= _rms_distances(chroma_a[rows], chroma_b)[0] <= 1.01 * tolerance * CHROMA_TOLERANCE + 1e-6
        near &= (np.abs(colour_a[rows, None] - colour_b[None]) <= MEAN_COLOUR_TOLERANCE + 1e-6).all(-1)
        for i, j in zip(*np.nonzero(near)):
            i += start
            if (not within or i < j) and look_distance(looks[i], others[j]) <= tolerance and (
                    views is None or same_fine_detail(views[i], other_views[j])):
                pairs.append((int(i), int(j)))
    return pairs


def group_looks(paths, looks, max_pixels):
    """`paths` in groups of the same picture: two images by the look-alike check (identical pixels included; the
    images of candidate pairs decoded again for its second stage), and by a chain of such pairs, are in one group.
    Each group sorted, the groups by their first path."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    pairs = np.array(lookalike_pairs(looks, views=_DetailViews(paths, max_pixels)), dtype=int).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(paths), len(paths)))
    _, component = connected_components(graph, directed=False)
    groups = defaultdict(list)
    for path, c in zip(paths, component):
        groups[c].append(path)
    return sorted(sorted(g) for g in groups.values())


def lookalike_groups(paths, max_pixels, progress=True):
    """`paths` in groups by the copy guard's rule (group_looks), decoding each image once; an image that cannot be
    used stops it with UserError."""
    from tqdm import tqdm
    looks = [look(load_image(p, max_pixels)) for p in tqdm(paths, desc="comparing images", unit="img",
                                                            disable=not progress)]
    return group_looks(list(paths), looks, max_pixels)


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
    twin_of = {}
    max_pixels = train_data["max_image_pixels"]
    for i, j in lookalike_pairs([looks[p] for p in held_paths], [looks[p] for p in train_paths],
                                views=_DetailViews(held_paths, max_pixels),
                                other_views=_DetailViews(train_paths, max_pixels)):
        twin_of.setdefault(held_paths[i], train_paths[j])
    for kind, path in held:
        if path in twin_of:
            raise UserError(f"{path}: this {kind} image looks like the training image {twin_of[path]} (the same "
                            "picture resized or re-encoded, or a look-alike the copy guard cannot tell from one: "
                            "docs/training.md); write the splits with one run of generate_train_json.py, which "
                            "keeps look-alikes together")


def read_dataset_json(path):
    """A data set written by generate_train_json.py, with image paths made absolute. A multi-label one
    ("multi_label": true) has each sample's {label: weight} under "labels", checked as a labels CSV's are, and its
    question (prompt.multi_label_question where the file predates it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (run generate_train_json.py first, or set the path)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        classes, samples = data["classes"], data["samples"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a data set written by generate_train_json.py ({e!r})") from None
    if data.get("multi_label"):
        data.setdefault("question", multi_label_question(classes))
        for i, sample in enumerate(samples):
            labels = sample.get("labels")
            if not isinstance(labels, dict):
                raise UserError(f"{path}: sample {i} ({sample.get('image')}) has no \"labels\" {{label: weight}}")
            sample["labels"] = parse_labels(label_text(labels), classes, f"{path}: sample {i} ({sample['image']})")
            sample["image"] = str((path.parent / sample["image"]).resolve())
        return data
    for i, sample in enumerate(samples):
        if sample.get("label") not in classes:
            raise UserError(f"{path}: sample {i} ({sample.get('image')}) has label {sample.get('label')!r}, "
                            f"which is not one of the classes {classes}")
        sample["image"] = str((path.parent / sample["image"]).resolve())
    return data



def recorded_json(model_path, setting):
    """The data set JSON that fine_tune.py recorded for the model as `setting` (test_json, train_json), when it is
    still there (relative to the current folder); "" otherwise."""
    config = Path(model_path) / "run_config.json"
    recorded = json.loads(config.read_text(encoding="utf-8"))["settings"].get(setting) if config.is_file() else ""
    return recorded if recorded and Path(recorded).is_file() else ""


def images_in_turn(data, count):
    """Up to `count` images of a data set (read_dataset_json's), taken from each class in turn."""
    by_class = [[s["image"] for s in data["samples"] if s["label"] == name] for name in data["classes"]]
    in_turn = [path for group in itertools.zip_longest(*by_class) for path in group if path]
    return list(dict.fromkeys(in_turn))[:count]
