"""benchmarks/multilabel.py: its pictures (2 to 4 digits, labels the digits present, two pools, no digit used twice)
and its mAP interval (the report's mAP, paired by image)."""
import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "benchmarks")]
import multilabel  # noqa: E402
from tasks import DIGIT_NAMES, pool_of  # noqa: E402


def test_pictures_hold_two_to_four_digits_labelled_by_the_digits_present_each_in_its_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(multilabel, "IMAGES", 24)
    multilabel.write_pictures(tmp_path)
    listed = {}
    for pool in ("development", "confirmation"):
        with open(tmp_path / pool / "labels.csv", newline="") as f:
            for row in csv.DictReader(f):
                assert pool_of(Path(row["image"]).name) == pool
                listed[row["image"]] = row["labels"].split(";")
    assert len(listed) == 24
    for image, labels in listed.items():
        pool = pool_of(Path(image).name)
        pixels = np.array(Image.open(tmp_path / pool / image).convert("L"))
        cell = pixels.shape[0] // 2
        inked = sum((pixels[y:y + cell, x:x + cell] < 128).any() for y in (0, cell) for x in (0, cell))
        assert pixels.shape == (128, 128) and 2 <= inked <= 4 and 1 <= len(labels) <= inked
        assert labels == sorted(set(labels)) and set(labels) <= set(DIGIT_NAMES)


def runs_of(probabilities, truth):
    return [{"paths": [f"{i}.png" for i in range(len(t))], "truth": t.tolist(), "probs": p.tolist(),
             "mean_average_precision": float(np.mean([average_precision_score(t[:, j], p[:, j])
                                                      for j in range(t.shape[1])]))}
            for p, t in zip(probabilities, truth)]


def test_the_map_interval_is_paired_by_image_and_says_better_only_where_the_row_is(monkeypatch):
    monkeypatch.setattr(multilabel, "BOOTSTRAP", 200)
    rng = np.random.default_rng(0)
    truth = [rng.random((40, 3)) < 0.4 for _ in range(3)]
    noise = [rng.random((40, 3)) for _ in range(3)]
    base = runs_of(noise, truth)
    better = runs_of([0.5 * n + 0.5 * t for n, t in zip(noise, truth)], truth)
    assert multilabel.map_interval(base, base) == (0.0, 0.0, 0.0, 1.0)
    observed, low, high, _ = multilabel.map_interval(better, base)
    assert 0 < low < observed < high
    assert observed == pytest.approx(np.mean([b["mean_average_precision"] - a["mean_average_precision"]
                                              for a, b in zip(base, better)]))
    with pytest.raises(SystemExit, match="different images"):
        multilabel.map_interval([{**better[0], "paths": better[0]["paths"][::-1]}] + better[1:], base)
    with pytest.raises(SystemExit, match="report.json"):
        multilabel.map_interval([{**better[0], "mean_average_precision": 0.1}] + better[1:], base)
