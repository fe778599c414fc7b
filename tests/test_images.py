"""vlmcls.images: awkward images load right, identical pixels hash the same, data set JSON is checked, held-out
images are never training images, nor resized or re-encoded copies of them."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import awkward_images, make_colour_images, run_script
from vlmcls.cli import UserError
from vlmcls.files import write_json
from vlmcls.images import load_image, lookalike_groups, pixel_hash, read_dataset_json, refuse_overlap

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import copy_guard  # noqa: E402


def test_awkward_images_are_converted_and_rotated(tmp_path):
    root = awkward_images(tmp_path / "images")
    load = lambda name: load_image(root / "blue" / name, 10**7)
    assert load("rotated.jpg").size == (20, 60)
    assert load("transparent.png").getpixel((5, 5)) == (255, 255, 255)
    assert load("sixteen.png").getpixel((5, 5)) == (156, 156, 156)  # scaled, not clipped
    assert load("grey.png").getpixel((5, 5)) == (90, 90, 90)
    r, g, b = load("cmyk.jpg").getpixel((5, 5))
    assert g > 200 and b > 200 and r < 90  # cyan
    assert all(load(n).mode == "RGB" for n in ("cmyk.jpg", "palette.gif", "sixteen.png", "transparent.png"))


def test_same_pixels_in_another_format_hash_the_same(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.open(tmp_path / "a.png").save(tmp_path / "b.bmp")
    Image.new("RGB", (8, 8), (254, 0, 0)).save(tmp_path / "c.png")
    h = [pixel_hash(load_image(tmp_path / n, 100)) for n in ("a.png", "b.bmp", "c.png")]
    assert h[0] == h[1] != h[2]


def test_unknown_label_in_json_names_the_sample(tmp_path):
    write_json(tmp_path / "t.json", {"classes": ["a"], "question": "q", "max_image_pixels": 10,
                                     "samples": [{"image": "x.png", "label": "zebra", "qa": []}]})
    with pytest.raises(UserError, match=r"sample 0 \(x.png\) has label 'zebra'"):
        read_dataset_json(tmp_path / "t.json")


def test_fine_tune_refuses_held_out_images_that_are_training_images_before_training(tmp_path):
    make_colour_images(tmp_path / "data", per_class=4)
    run_script("generate_train_json.py", "--dataset_dir=data", "--train_ratio=0.5", "--val_ratio=0.25", cwd=tmp_path)
    train = json.loads((tmp_path / "solar_panel_train_dataset.json").read_text())
    for kind, name in (("validation", "solar_panel_val_dataset.json"), ("test", "solar_panel_test_dataset.json")):
        held_out = json.loads((tmp_path / name).read_text())
        # by path: a training image listed again; by content: a copy of one under a new name
        same_path = {**held_out, "samples": held_out["samples"] + train["samples"][-1:]}
        copy = tmp_path / "data" / "red" / f"copy_for_{kind}.png"
        shutil.copy(tmp_path / train["samples"][0]["image"], copy)
        same_content = {**held_out, "samples": held_out["samples"] + [{**train["samples"][0], "image": str(copy)}]}
        for data, why in ((same_path, "is also a training image"),
                          (same_content, f"same content as the training image {tmp_path / train['samples'][0]['image']}")):
            (tmp_path / "overlap.json").write_text(json.dumps(data))
            paths = {"validation": ("--val_json=overlap.json", f"--test_json={name}"),
                     "test": ("--val_json=solar_panel_val_dataset.json", "--test_json=overlap.json")}[kind]
            proc = run_script("fine_tune.py", "--model_path=no-model-needed", "--output_dir=out", *paths,
                              cwd=tmp_path, check=False)
            assert proc.returncode == 1 and f"this {kind} image" in proc.stderr and why in proc.stderr, proc.stderr
            assert not (tmp_path / "out").exists()  # stopped before anything was loaded or written
    # the splits as generate_train_json.py writes them pass the check
    refuse_overlap(read_dataset_json(tmp_path / "solar_panel_train_dataset.json"),
                   {"validation": read_dataset_json(tmp_path / "solar_panel_val_dataset.json"),
                    "test": read_dataset_json(tmp_path / "solar_panel_test_dataset.json")})


def picture(seed, size=(120, 90)):
    """A gradient with a few filled shapes: structure for a perceptual check to see, different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size[1], :size[0]]
    pixels = np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, 90)], -1).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        left, top = rng.integers(0, size[0] - 30), rng.integers(0, size[1] - 25)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([left, top, left + 30, top + 25], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def as_dataset(paths):
    return {"classes": ["a"], "max_image_pixels": 10**7,
            "samples": [{"image": str(p), "label": "a", "qa": []} for p in paths]}


def jpeg_re_encoding(original, copy):
    Image.open(original).save(copy, quality=75)


def half_size(original, copy):
    with Image.open(original) as image:
        image.resize((image.width // 2, image.height // 2)).save(copy)


def recompressed(original, copy):
    Image.open(original).save(copy, quality=50)


@pytest.mark.parametrize("make_copy, original_name, copy_name", [
    (jpeg_re_encoding, "picture.png", "copy.jpg"),
    (half_size, "picture.png", "copy.png"),
    (recompressed, "picture.jpg", "copy.jpg"),  # a JPEG at quality 95 saved again at 50
], ids=["png-to-jpeg", "half-size", "jpeg-quality"])
def test_a_held_out_copy_resized_or_re_encoded_is_refused_naming_both_files(tmp_path, make_copy, original_name,
                                                                            copy_name):
    original = tmp_path / "train" / original_name
    original.parent.mkdir()
    picture(0).save(original, quality=95)
    others = [tmp_path / "train" / f"other_{seed}.png" for seed in (1, 2)]
    for seed, path in zip((1, 2), others):
        picture(seed).save(path)
    copy = tmp_path / "held_out" / copy_name
    copy.parent.mkdir()
    make_copy(original, copy)
    picture(3).save(tmp_path / "held_out" / "new.png")
    assert copy.read_bytes() != original.read_bytes()
    with pytest.raises(UserError) as refused:
        refuse_overlap(as_dataset([*others, original]),
                       {"validation": None, "test": as_dataset([tmp_path / "held_out" / "new.png", copy])},
                       progress=False)
    assert str(refused.value).startswith(f"{copy}: this test image looks like the training image {original} ")


def test_different_images_are_not_taken_for_copies(tmp_path):
    noisy = make_colour_images(tmp_path / "noisy", per_class=2)  # the same colour, different noise
    train = [tmp_path / n for n in ("red.png", "gradient.png", "one.png")] + [noisy / "red" / "red_00.png"]
    held = [tmp_path / n for n in ("blue.png", "grey.png", "moved.png", "slanted_one.png")]
    held.append(noisy / "red" / "red_01.png")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(train[0])
    Image.new("RGB", (64, 48), (30, 40, 200)).save(held[0])
    Image.new("RGB", (64, 48), (81, 81, 81)).save(held[1])  # red's brightness: told apart by colour alone
    picture(0).save(train[1])
    picture(4).save(held[2])  # the same gradient under other shapes
    for path, stroke in ((train[2], [(32, 10), (32, 85)]), (held[3], [(36, 10), (28, 85)])):
        digit = Image.new("L", (64, 96), 0)  # a handwritten-like one: a thick white stroke on black
        ImageDraw.Draw(digit).line(stroke, fill=255, width=8)
        digit.save(path)
    refuse_overlap(as_dataset(train), {"validation": as_dataset(held[:2]), "test": as_dataset(held[2:])},
                   progress=False)


def test_a_layout_in_other_colours_is_another_picture_and_its_resized_copies_are_caught(tmp_path):
    # Stripes, grids and checkerboards in random colour pairs, each beside its twin: the same layout in other colours
    # with the same mean colour and grey levels (benchmarks/copy_guard.py's structured set, at periods of 1/4 and 1/2
    # of the side, whose cells span two thumbnail pixels or more).
    structured = copy_guard.structured_set([32, 64], colour_pairs=3, size=128, seed=1)
    originals, twins, copies = [], [], []
    for i, (_, image) in enumerate(structured):
        path = tmp_path / ("train" if i % 2 == 0 else "held") / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        image.save(path)
        (originals if i % 2 == 0 else twins).append(path)
        for factor in (0.5, 1.5):
            copies.append(tmp_path / "copies" / f"{i:03d}_{factor}.png")
            copies[-1].parent.mkdir(exist_ok=True)
            copy_guard.scaled(image, factor).save(copies[-1])
    refuse_overlap(as_dataset(originals), {"validation": as_dataset(twins), "test": None}, progress=False)
    groups = lookalike_groups(originals + twins + copies, 10**7, progress=False)
    assert sorted(groups) == sorted(sorted([p, *(c for c in copies if c.stem.split("_")[0] == p.stem)])
                                    for p in originals + twins)


def painted(name, period, colours, size=128):
    """A layout of benchmarks/copy_guard.py in two colours, `size` px square."""
    mask = copy_guard.layout(name, period, size)[..., None]
    return Image.fromarray(np.where(mask, np.array(colours[1], np.uint8), np.array(colours[0], np.uint8)))


def stripes(period, size=128, colours=((200, 60, 40), (40, 80, 190))):
    """Vertical stripes `period` px apart in two colours: at 4 and 8 px, finer than the 16x16 thumbnail shows."""
    return painted("vertical stripes", period, colours, size)


def assert_two_pictures_whose_copies_are_caught(tmp_path, one, other):
    """`one` and `other` are two pictures, while a JPEG quality-50 copy and a half-size copy of each are the same
    picture as it, for both of the copy guard's users (refuse_overlap and lookalike_groups)."""
    first, second = tmp_path / "one.png", tmp_path / "other.png"
    one.save(first)
    other.save(second)
    refuse_overlap(as_dataset([first]), {"validation": as_dataset([second]), "test": None}, progress=False)
    assert lookalike_groups([first, second], 10**7, progress=False) == [[first], [second]]
    for path, image in ((first, one), (second, other)):
        image.save(path.with_suffix(".q50.jpg"), quality=50)
        copy_guard.scaled(image, 0.5).save(path.with_suffix(".half.png"))
        for copy in (path.with_suffix(".q50.jpg"), path.with_suffix(".half.png")):
            with pytest.raises(UserError, match="looks like the training image"):
                refuse_overlap(as_dataset([path]), {"validation": None, "test": as_dataset([copy])}, progress=False)
            assert lookalike_groups([path, copy], 10**7, progress=False) == [sorted([path, copy])]


def test_fine_layouts_with_one_thumbnail_are_two_pictures_and_their_copies_are_still_caught(tmp_path):
    # 4 px and 8 px stripes of the same colours blur to the same thumbnail; their fine detail tells them apart
    assert_two_pictures_whose_copies_are_caught(tmp_path, stripes(4), stripes(8))


# The structured set's colour pair 0 (seed 0) and its twin, of the same hues at another saturation (colour contrasts
# 43 degrees apart).
PAIR, TWIN = ((65, 157, 195), (98, 117, 255)), ((31, 170, 216), (132, 104, 234))


def test_a_layout_and_its_twin_of_the_same_hues_differ_in_colour_at_mid_scale(tmp_path):
    # 16 px diagonal stripes and their twin: the same grey levels and colour detail in much the same direction
    # (cosine 0.74), but their colours differ by 13 levels on more than half the pixels, where a copy's differ at edges
    assert_two_pictures_whose_copies_are_caught(tmp_path, painted("diagonal stripes", 16, PAIR),
                                                painted("diagonal stripes", 16, TWIN))


def test_the_jpeg_copy_furthest_at_mid_scale_is_still_caught(tmp_path):
    # the structured set's colour pair 1: 16 px diagonal stripes whose quality-75 copy differs from them at mid scale
    # by 7.5 levels (median), the most of any quality-50 or -75 copy of the 1,200 structured images
    original, copy = tmp_path / "original.png", tmp_path / "copy.jpg"
    painted("diagonal stripes", 16, ((145, 103, 255), (50, 242, 23))).save(original)
    Image.open(original).save(copy, quality=75)
    with pytest.raises(UserError, match="looks like the training image"):
        refuse_overlap(as_dataset([original]), {"validation": as_dataset([copy]), "test": None}, progress=False)
    assert lookalike_groups([original, copy], 10**7, progress=False) == [[copy, original]]
