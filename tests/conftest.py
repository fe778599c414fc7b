import os
import re
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


def accuracy_from(output):
    """The accuracy the evaluation scripts print on their 'Total Correct' line."""
    found = re.findall(r"Total Correct: (\d+)/(\d+), Accuracy: ([0-9.]+)", output)
    assert found, output
    return float(found[-1][2])


def make_colour_images(folder, per_class=12, size=(64, 48), seed=0):
    """Class folders of noisy images in clearly different colours."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (Path(folder) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(Path(folder) / name / f"{name}_{i:02d}.png")
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory):
    """A tiny SmolVLM-architecture model saved with SmolVLM's shipped processor settings."""
    import torch
    torch.manual_seed(0)
    return tiny_models.build_tiny_smolvlm(tmp_path_factory.mktemp("models") / "tiny-smolvlm")


@pytest.fixture(scope="session")
def colour_dataset(tmp_path_factory):
    return make_colour_images(tmp_path_factory.mktemp("colours") / "images")
