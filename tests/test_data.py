"""Data in, nothing lost: awkward images are loaded right, bad files are listed with the reason."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

import vlm_common
from conftest import make_colour_images, run_script


def awkward_images(root):
    """A data set holding every kind of bad and awkward file, and duplicates within and across classes."""
    make_colour_images(root, per_class=6)
    red, green, blue = root / "red", root / "green", root / "blue"
    (red / "empty.jpg").write_bytes(b"")
    (red / "notes.txt").write_text("not a picture")
    whole = green / "green_00.png"
    data = bytearray(whole.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # damaged pixel data, intact header
    (green / "corrupt.png").write_bytes(bytes(data))
    (green / "truncated.png").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    Image.new("L", (3000, 1000), 0).save(blue / "bomb.png")
    Image.new("CMYK", (40, 30), (200, 0, 0, 0)).save(blue / "cmyk.jpg")
    Image.new("RGBA", (40, 30), (0, 0, 255, 0)).save(blue / "transparent.png")
    Image.new("P", (40, 30), 3).save(blue / "palette.gif")
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(blue / "sixteen.png")
    Image.new("L", (40, 30), 90).save(blue / "grey.png")
    rotated = Image.new("RGB", (60, 20), "blue")
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    rotated.save(blue / "rotated.jpg", exif=exif)
    Image.open(red / "red_00.png").save(green / "same_as_red_00.bmp")  # label conflict across classes
    (red / "red_01_copy.png").write_bytes((red / "red_01.png").read_bytes())  # duplicate within a class
    return root


BAD = {"red/empty.jpg": "empty file", "red/notes.txt": "not an image", "green/corrupt.png": "corrupt",
       "green/truncated.png": "corrupt or truncated", "blue/bomb.png": "decompression bomb"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    work = tmp_path_factory.mktemp("awkward")
    awkward_images(work / "images")
    out = run_script("generate_train_json.py", "--dataset_dir=images", "--max_image_pixels=2000000",
                     "--train_ratio=0.5", cwd=work).stdout
    return work, out


def test_bad_files_are_listed_with_their_reasons(generated):
    work, out = generated
    rows = list(csv.DictReader(open(work / "skipped.csv")))
    listed = {r["path"].split("images/")[1]: r["reason"] for r in rows}
    assert set(listed) == set(BAD)
    for name, reason in BAD.items():
        assert reason in listed[name], (name, listed[name])
        assert name.split("/")[1] in out
    assert f"skipped {len(BAD)} file(s)" in out


def test_every_other_file_is_in_exactly_one_split(generated):
    work, _ = generated
    files = {str(p.relative_to(work)) for p in (work / "images").rglob("*") if p.is_file()}
    used = []
    for name in ("solar_panel_train_dataset.json", "solar_panel_test_dataset.json"):
        used += [s["image"] for s in json.loads((work / name).read_text())["samples"]]
    assert len(used) == len(set(used))
    assert set(used) == files - {f"images/{b}" for b in BAD}


def test_duplicates_stay_on_one_side_and_conflicts_are_reported(generated):
    work, out = generated
    test = {s["image"] for s in json.loads((work / "solar_panel_test_dataset.json").read_text())["samples"]}
    for pair in (("images/red/red_00.png", "images/green/same_as_red_00.bmp"),
                 ("images/red/red_01.png", "images/red/red_01_copy.png")):
        assert (pair[0] in test) == (pair[1] in test), pair
    assert "label conflict" in out and "same_as_red_00.bmp [green]" in out and "red_00.png [red]" in out
    assert "red_01_copy" not in out.split("label conflict")[-1]


def test_awkward_images_are_converted_and_rotated(tmp_path):
    root = awkward_images(tmp_path / "images")
    load = lambda name: vlm_common.load_image(root / "blue" / name, 10**7)
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
    h = [vlm_common.pixel_hash(vlm_common.load_image(tmp_path / n, 100)) for n in ("a.png", "b.bmp", "c.png")]
    assert h[0] == h[1] != h[2]


def test_unusable_layouts_are_refused_with_what_was_found(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    proc = run_script("download_dataset.py", "--source=flat", "--dataset_dir=data", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "no class sub-folders found" in proc.stderr and "x.png" in proc.stderr
    (tmp_path / "flat" / "empty_class").mkdir()
    (tmp_path / "flat" / "cats").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "cats" / "c.png")
    proc = run_script("download_dataset.py", "--source=flat", "--dataset_dir=data", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "class folder(s) with no images: empty_class" in proc.stderr
    assert not (tmp_path / "data").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["flat"], "nothing half-written is left behind"


def test_kaggle_without_network_says_what_to_do(tmp_path):
    proc = run_script("download_dataset.py", cwd=tmp_path, check=False,
                      env={"KAGGLE_USERNAME": "nobody", "KAGGLE_KEY": "x", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "could not download 'pythonafroz/solar-panel-images'" in proc.stderr and "--source=" in proc.stderr
    assert not (tmp_path / "Faulty_solar_panel").exists()


def test_elpv_source_gives_four_classes_with_the_package_counts(tmp_path):
    pytest.importorskip("elpv_dataset")
    out = run_script("download_dataset.py", "--source=elpv", "--dataset_dir=elpv", cwd=tmp_path).stdout
    counts = {p.name: len(list(p.iterdir())) for p in (tmp_path / "elpv").iterdir()}
    assert counts == {"functional": 1508, "possibly-defective": 295, "likely-defective": 106, "defective": 715}
    assert "4 classes" in out
    run_script("download_dataset.py", "--source=elpv", "--dataset_dir=two", "--elpv_two_classes=true", cwd=tmp_path)
    counts = {p.name: len(list(p.iterdir())) for p in (tmp_path / "two").iterdir()}
    assert counts == {"functional": 1508 + 295, "defective": 106 + 715}
