"""Unit tests of the shared module: command-line constants, answer matching, metrics, scoring."""
import subprocess
import sys

import pytest
import torch
from PIL import Image

import vlm_common
from conftest import ROOT, run_script
from vlm_common import NO_CLASS, match_answer, metrics


@pytest.mark.parametrize("answer, expected", [
    ("Bird-drop", "Bird-drop"), (" bird drop.", "Bird-drop"), ("BIRD_DROP", "Bird-drop"),
    ("'Snow-Covered'", "Snow-Covered"), ("snow  covered!", "Snow-Covered"), ("Physical-Damage", "Physical-Damage"),
    ("Bird", None), ("Bird-dropping", None), ("Clean panel", None), ("", None), ("Dust", None),
])
def test_match_answer_is_exact_after_normalising(answer, expected):
    classes = ["Bird-drop", "Clean", "Dusty", "Electrical-damage", "Physical-Damage", "Snow-Covered"]
    assert match_answer(answer, classes) == expected


def test_metrics_of_known_predictions():
    true = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", NO_CLASS, "a"]
    m = metrics(true, pred, ["a", "b", "c"])
    assert m["labels"] == ["a", "b", "c", NO_CLASS]
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]]
    assert (m["correct"], m["total"], m["accuracy"]) == (3, 6, 0.5)
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)


def test_help_lists_every_constant_with_its_comment():
    out = subprocess.run([sys.executable, str(ROOT / "fine_tune.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT).stdout
    for name in ("--model_path", "--learning_rate", "--equivalent_epochs_to_train", "--use_lora",
                 "--image_longest_edge", "--resume"):
        assert name in out
    assert "peak learning rate (default: 0.0003)" in " ".join(out.split())


def test_configure_parses_types_and_both_spellings(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("A = 1  # an int\nB = 0.5\nC = True\nD = 'x'\nE = ['p']\nF = None\n")
    ns = {"__file__": str(script)}
    exec(script.read_text(), ns)
    vlm_common.configure(ns, ["--a=3", "--b", "2e-3", "--c=false", "--d", "y", "--e=[\"q\", \"r\"]", "--f=1024"])
    assert (ns["A"], ns["B"], ns["C"], ns["D"], ns["E"], ns["F"]) == (3, 2e-3, False, "y", ["q", "r"], 1024)
    with pytest.raises(SystemExit):
        vlm_common.configure(ns, ["--a=notanumber"])


def test_wrong_constant_gets_one_clear_message(tmp_path):
    proc = run_script("generate_train_json.py", "--train_ratio=1.5", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: train_ratio must be between 0 and 1, got 1.5"


def test_missing_model_is_a_clear_error(tmp_path):
    vlm_common.write_json(tmp_path / "t.json", {"classes": ["a"], "question": "q", "max_image_pixels": 10,
                                                "samples": []})
    proc = run_script("vlm_benchmark_test_dataset.py", "--model_path=./nowhere", "--test_json=t.json",
                      cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot load a processor from './nowhere'" in proc.stderr


def test_unknown_label_in_json_names_the_sample(tmp_path):
    vlm_common.write_json(tmp_path / "t.json", {"classes": ["a"], "question": "q", "max_image_pixels": 10,
                                                "samples": [{"image": "x.png", "label": "zebra", "qa": []}]})
    with pytest.raises(vlm_common.UserError, match=r"sample 0 \(x.png\) has label 'zebra'"):
        vlm_common.read_dataset_json(tmp_path / "t.json")


@pytest.fixture(scope="module")
def loaded_tiny(tiny_smolvlm):
    processor = vlm_common.load_processor(tiny_smolvlm)
    vlm_common.set_resolution(processor, 512, False)
    return vlm_common.load_model(tiny_smolvlm, torch.float32, "cpu").eval(), processor


def test_untrained_model_in_score_mode_always_names_a_class(loaded_tiny, tmp_path):
    model, processor = loaded_tiny
    paths = []
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (50, 40), colour).save(paths[-1])
    classes = ["red", "green", "blue"]
    results = vlm_common.evaluate(model, processor, paths, "Colour?", classes, "score", 3, 10**6)
    generated = vlm_common.evaluate(model, processor, paths, "Colour?", classes, "generate", 3, 10**6)
    assert len(results) == len(generated) == 4
    for r in results:
        assert r["pred"] in classes
        assert sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["probs"][r["pred"]] == max(r["probs"].values())
    assert all(g["pred"] in classes + [NO_CLASS] for g in generated)
