"""Explanation heatmaps: tiles mapped back onto the image, the pointing game on planted evidence, the model
randomisation check (Adebayo et al. 2018), and --explain=true through vlm_test.py."""
import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from conftest import run_script
from planted_evidence import CLASSES, QUESTION, planted_images, trained_head_model
from vlmcls.cli import UserError
from vlmcls.explain import COLUMNS, FOLDER, MAPS, SHEET, Explainer, check_explainable, image_map, sheet_rows, \
    strongest_point, tile_layout

TEST_IMAGES = 60


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny model trained in the test on planted evidence (about 20 s), and held-out planted images."""
    torch.set_num_threads(1)
    processor, model = trained_head_model(tmp_path_factory.mktemp("planted") / "model", planted_images(300, seed=2),
                                          steps=150, seed=2)
    return processor, model, planted_images(TEST_IMAGES, seed=1002)


def points_and_maps(processor, model, images, method="gradcam"):
    explainer = Explainer(model, processor, QUESTION, CLASSES, method)
    found = [explainer(image, name) for image, name, _ in images]
    return [f["point"] for f in found], [f["map"] for f in found]


def in_box(point, box, grow):
    x, y = point
    left, top, right, bottom = box
    return left - grow <= x <= right + grow and top - grow <= y <= bottom + grow


def test_tile_layout_is_read_from_the_prompts_tile_tokens():
    assert tile_layout(["<image>", "<row_1_col_1>", "<image>", "<row_2_col_3>", "<global-img>"]) == (2, 3)
    assert tile_layout(["<fake_token_around_image>", "<global-img>", "<image>"]) == (0, 0)


def test_a_tiles_evidence_lands_where_the_tile_came_from():
    """Two rows of three tiles and the whole image: a hot cell in the tile of row 1, column 2 (its top-left cell)
    and nothing in the whole image's frame puts the strongest point in that tile's part of the image (tiles go row
    by row: column by column would put it in row 2, column 1)."""
    frames = np.zeros((7, 4, 4), dtype=np.float32)
    frames[1, 0, 0] = 1.0
    heat = image_map(frames, 2, 3, (300, 200))
    x, y = strongest_point(heat, 600, 400)
    assert 200 <= x < 250 and 0 <= y < 50
    one = np.zeros((1, 4, 4), dtype=np.float32)
    one[0, 3, 0] = 1.0  # one frame: the whole image stretched
    x, y = strongest_point(image_map(one, 0, 0, (60, 30), Image.BOX), 600, 300)
    assert x == 75 and abs(y - 262.5) <= 5  # cell (4, 1) of 4 x 4's centre (7.5 map rows), not the corner
    coarse = np.zeros((1, 4, 4), dtype=np.float32)
    coarse[0, 0, 1], coarse[0, 2, 2] = 1.0, 0.5  # the strongest square on the top edge, as occlusion's 4 x 4 makes
    assert strongest_point(image_map(coarse, 0, 0, (64, 64), Image.BOX), 64, 64) == (24, 8)


@pytest.mark.parametrize("method, floor, times", [("gradcam", 0.6, 5), ("occlusion", 0, 3), ("guided_gradcam", 0.6, 5)])
def test_pointing_game_on_planted_evidence(planted, method, floor, times):
    """The strongest point falls in the marker's box grown by one patch (4 pixels of the 64-px image: the 128-px
    tile's 8-px patches) far more often than a random point does (occlusion, whose point is the centre of one of 16
    squares a tile, 16 px of this image a side: at least 3 times as often)."""
    processor, model, images = planted
    marked = [(image, name, box) for image, name, box in images if box]
    points, _ = points_and_maps(processor, model, marked, method)
    hits = np.mean([in_box(p, box, 4) for p, (_, _, box) in zip(points, marked)])
    rng = np.random.default_rng(0)
    chance = np.mean([in_box(rng.uniform(0, 64, 2), box, 4) for _ in range(50) for _, _, box in marked])
    assert chance < 0.15
    assert hits >= floor and hits >= times * chance, (hits, chance)


@pytest.mark.parametrize("method", ["gradcam", "occlusion", "guided_gradcam"])
def test_maps_change_when_the_weights_are_random(planted, tmp_path, method):
    """Adebayo et al. (2018): with the trained weights replaced by random ones, the maps' rank correlation with the
    trained maps falls well below the trained maps' with themselves on the same images, one grey level of noise
    added: the maps depend on what the model learnt, not on the image alone (guided backpropagation's maps, for
    one, failed it there)."""
    processor, model, images = planted
    rng = np.random.default_rng(1)
    noisy = [(Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-1, 2, (64, 64, 3)), 0, 255)
                              .astype(np.uint8)), name, box) for image, name, box in images]
    _, trained = points_and_maps(processor, model, images, method)
    _, again = points_and_maps(processor, model, noisy, method)
    _, random = points_and_maps(*trained_head_model(tmp_path / "random", images, steps=0, seed=2), images, method)
    stable = np.mean([spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(trained, again)])
    changed = np.mean([spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(trained, random)])
    assert stable >= 0.9 and changed <= 0.5, (stable, changed)


def test_either_objective_any_tile_layout(planted):
    """The answer objective's score (the model without its head) and an image cut into tiles plus the whole image
    are explained too: one map over the image, of the image's aspect."""
    from vlmcls.models import set_resolution
    from vlmcls.objectives.head import without_head
    processor, model, images = planted
    set_resolution(processor, 256, True)
    try:
        wide = Image.new("RGB", (300, 150), (120, 120, 120))
        with without_head(model):
            found = Explainer(model, processor, QUESTION, CLASSES)(wide, "blue")
    finally:
        set_resolution(processor, 128, False)
    assert found["map"].shape == (128, 256) and 0 <= found["point"][0] < 300 and 0 <= found["point"][1] < 150


def test_an_exported_model_int8_weights_and_a_multi_label_model_are_refused_saying_why():
    exported = SimpleNamespace(path="model-onnx", export={"runtime": "onnx"}, multi_label=False)
    with pytest.raises(UserError, match="model-onnx is an exported model: explanations need PyTorch"):
        check_explainable([exported], "score", "none")
    with pytest.raises(UserError, match="int8 weights have no gradients: explanations need --quantize=none"):
        check_explainable([SimpleNamespace(path="model", export=None, multi_label=False)], "score", "int8")
    with pytest.raises(UserError, match="model is a multi-label model: explanations of multi-label models are not"):
        check_explainable([SimpleNamespace(path="model", export=None, multi_label=True)], "score", "none")


def test_the_contact_sheet_takes_the_most_confident_errors_and_the_uncertain_images():
    rows = [{"path": f"{i}.png", "true_class": "a", "best_guess": guess, "predicted_class": guess,
             "probability": str(p)} for i, (guess, p) in enumerate([("b", 0.6), ("b", 0.9), ("a", 0.55), ("a", 0.99)])]
    errors, unsure = sheet_rows(rows)
    assert [r["path"] for r in errors] == ["1.png", "0.png"]
    assert [r["path"] for r in unsure][:2] == ["2.png", "0.png"]


def test_vlm_test_explains_each_image(fine_tuned_head, tmp_path):
    """--explain=true: predictions.csv's point inside each image, an overlay for each, the maps, the sheet."""
    work = fine_tuned_head
    out = tmp_path / "report"
    run_script("vlm_test.py", "--model_path=head", "--dataset_dir=data", f"--report_dir={out}", "--explain=true",
               "--num_workers=0", cwd=work)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(name in rows[0] for name in COLUMNS)
    for row in rows:
        width, height = Image.open(row["path"] if row["path"].startswith("/") else work / row["path"]).size
        assert 0 <= float(row["explanation_x"]) < width and 0 <= float(row["explanation_y"]) < height
    folder = out / FOLDER
    assert len(list(folder.glob("*.png"))) == len(rows) + 1  # an overlay per image, and the sheet
    maps = np.load(folder / MAPS)
    assert list(maps["paths"]) == [r["path"] for r in rows] and all(name in maps for name in maps["names"])
    assert not list(folder.glob("*.npy")) and (folder / SHEET).is_file()
