"""vlmcls.images: awkward images load right, identical pixels hash the same, data set JSON is checked, held-out
images are never training images."""
import json
import shutil

import pytest
from PIL import Image

from conftest import awkward_images, make_colour_images, run_script
from vlmcls.cli import UserError
from vlmcls.files import write_json
from vlmcls.images import load_image, pixel_hash, read_dataset_json, refuse_overlap


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
