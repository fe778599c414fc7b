import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models  # noqa: E402

COLOURS = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 200)}


def run_script(script, *args, cwd, check=True, env=None):
    """Run one of the project's scripts as a user does: a separate process, settings as --name=value."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                               **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def report_in(report_dir):
    """The report.json an evaluation script wrote to report_dir."""
    return json.loads((Path(report_dir) / "report.json").read_text())


def accuracy_in(report_dir):
    return report_in(report_dir)["accuracy"]


def make_colour_images(folder, per_class=12, size=(64, 48), seed=0):
    """Class folders of noisy images in clearly different colours."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (Path(folder) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(Path(folder) / name / f"{name}_{i:02d}.png")
    return Path(folder)


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


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory):
    """A tiny SmolVLM-architecture model saved with SmolVLM's shipped processor settings."""
    import torch
    torch.manual_seed(0)
    return tiny_models.build_tiny_smolvlm(tmp_path_factory.mktemp("models") / "tiny-smolvlm")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    import torch
    torch.manual_seed(0)
    return tiny_models.build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="session")
def colour_dataset(tmp_path_factory):
    return make_colour_images(tmp_path_factory.mktemp("colours") / "images")


def red_image(size=(64, 48)):
    return Image.new("RGB", size, COLOURS["red"])


def load_tiny(folder):
    """A tiny model and its processor at the fine-tuning defaults (512 px, one tile), as the scripts load them."""
    import torch
    from vlmcls.models import load_model, load_processor, set_resolution
    processor = load_processor(str(folder))
    set_resolution(processor, 512, False)
    return processor, load_model(str(folder), torch.float32).eval()


@pytest.fixture(scope="session")
def fine_tuned_smolvlm(tmp_path_factory, tiny_smolvlm):
    """A tiny SmolVLM fine-tuned by fine_tune.py on colour images (about 40 s): its work folder, where the
    scripts ran and the split JSON files are, with the model in work/finetuned."""
    work = tmp_path_factory.mktemp("fine-tuned")
    make_colour_images(work / "data", per_class=12)
    run_script("generate_train_json.py", "--dataset_dir=data", "--train_ratio=0.5", "--val_ratio=0.1", cwd=work)
    # the classification question alone: every step then learns the answers the tests score
    run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", "--output_dir=finetuned", "--max_steps=60",
               "--objective=answer", "--train_questions=classification",
               "--per_device_train_batch_size=4", "--gradient_accumulation_steps=1", "--learning_rate=3e-3",
               "--warmup_steps=5", "--logging_steps=20", "--save_steps=1000", "--min_validation_images=1", cwd=work)
    return work


@pytest.fixture(scope="session")
def fine_tuned_head(tmp_path_factory, tiny_smolvlm):
    """A tiny SmolVLM fine-tuned by fine_tune.py with objective=head on colour images (about 20 s): its work folder,
    where the scripts ran and the split JSON files are, with the model and its classifier.safetensors in
    work/head."""
    work = tmp_path_factory.mktemp("fine-tuned-head")
    make_colour_images(work / "data", per_class=12)
    run_script("generate_train_json.py", "--dataset_dir=data", "--train_ratio=0.5", "--val_ratio=0.25", cwd=work)
    run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", "--output_dir=head", "--objective=head",
               "--max_steps=20", "--eval_steps=10", "--learning_rate=3e-3", "--per_device_train_batch_size=4",
               "--gradient_accumulation_steps=1", "--warmup_steps=3", "--logging_steps=10", "--num_workers=0",
               "--min_validation_images=1", cwd=work)
    return work


def as_multi_label(folder, out, thresholds):
    """A copy at `out` of the head model `folder`, recorded as multi-label with these {class: threshold}: its head's
    logits then each give their class's own probability (sigmoid). What fine_tune.py fits only for single-label
    models (class bias, temperature, confidences) is left out, as it leaves them out of a multi-label model."""
    import shutil
    shutil.copytree(folder, out)
    record = json.loads((Path(out) / "classes.json").read_text())
    for key in ("class_bias", "temperature", "without_class_bias", "validation_confidences"):
        record.pop(key, None)
    record.update(multi_label=True, thresholds=thresholds, thresholds_chosen="set by the test")
    (Path(out) / "classes.json").write_text(json.dumps(record))
    return Path(out)
