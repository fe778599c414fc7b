"""vlmcls.images: awkward images load right, identical pixels hash the same, data set JSON is checked."""
import pytest
from PIL import Image

from conftest import awkward_images
from vlmcls.cli import UserError
from vlmcls.files import write_json
from vlmcls.images import load_image, pixel_hash, read_dataset_json


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
