"""vlmcls.export, vlmcls.onnx_runtime and vlmcls.runtime: an exported model gives PyTorch's probabilities, runs
where torch cannot be imported, and a failed or refused export leaves nothing behind."""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import tiny_models
from conftest import COLOURS, ROOT, as_multi_label, report_in, run_script
from vlmcls.app import classify_files
from vlmcls.cli import UserError
from vlmcls.export import export_model
from vlmcls.images import images_in_turn
from vlmcls.onnx_runtime import OnnxPredictor
from vlmcls.openvino_runtime import DYNAMIC_GROUP
from vlmcls.prediction import evaluate_with
from vlmcls.prompt import classification_question
from vlmcls.runtime import load_predictor
from vlmcls.saved import EXPORT_FILE, INT8_FILE, MODEL_FILE, OPENVINO_INT8_FILE, open_classifier

CLASSES = ["red", "green", "blue", "Bird-drop"]  # the answers "red" and "Bird-drop" share no token; others may
QUESTION = classification_question(CLASSES)
# (width, height): with 1024 px and splitting, 1 tile, 2 tiles across, 2x2, 2 down (each with the global view)
SIZES = [(64, 48), (700, 300), (600, 520), (300, 900)]


def noisy_images(folder, sizes, seed=0, noise=60, per_class=False):
    """Noisy images of each colour at each size (with `per_class`, in a folder per colour); returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, rgb in COLOURS.items():
        for width, height in sizes:
            pixels = np.clip(np.array(rgb) + rng.normal(0, noise, (height, width, 3)), 0, 255).astype(np.uint8)
            paths.append(Path(folder) / (name if per_class else "") / f"{name}_{width}x{height}.png")
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A tiny SmolVLM saved at 1024 px with image splitting, as an answer model (a confident output head) and as a
    head model (a random head of weights large enough to decide), each with classes.json and a class bias."""
    root = tmp_path_factory.mktemp("export-models")
    torch.manual_seed(0)
    answer = tiny_models.build_tiny_smolvlm(root / "answer", image_longest_edge=1024, head_std=0.2)
    head = root / "head"
    shutil.copytree(answer, head)
    bias = {"strength": 1.0, "bias": {name: 0.3 * i for i, name in enumerate(CLASSES)}, "metric": "macro_f1"}
    for folder, objective in ((answer, "answer"), (head, "head")):
        (folder / "classes.json").write_text(json.dumps({"classes": CLASSES, "question": QUESTION,
                                                         "objective": objective, "max_image_pixels": 10**8,
                                                         "class_bias": bias}))
    hidden = json.loads((head / "config.json").read_text())["text_config"]["hidden_size"]
    save_file({"weight": torch.randn(len(CLASSES), hidden), "bias": torch.randn(len(CLASSES))},
              str(head / "classifier.safetensors"))
    return {"answer": answer, "head": head}


@pytest.fixture(scope="module")
def exported(saved_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    return {name: (export_model(open_classifier(folder), root / name, quantize="int8"), root / name)[1]
            for name, folder in saved_models.items()}


@pytest.mark.parametrize("objective", ["head", "answer"])
def test_exported_probabilities_equal_pytorchs_on_every_tile_count(objective, saved_models, exported, tmp_path):
    """Images of 1, 3 and 5 tiles, batched and left-padded on PyTorch's side, one at a time in ONNX Runtime: the same
    probabilities within 1e-4, also calibrated (class bias and temperature), and the same order of classes."""
    paths = noisy_images(tmp_path, SIZES)
    settings = dict(device="cpu", dtype=torch.float32, image_longest_edge=None, image_splitting=None,
                    quantize="none")
    torch_side = load_predictor(open_classifier(saved_models[objective]), **settings)
    onnx_side = load_predictor(open_classifier(exported[objective]), **settings)
    assert isinstance(onnx_side, OnnxPredictor) and onnx_side.objective.NAME == objective
    encoder = onnx_side.encoder(10**8)
    assert {encoder.image_part(p)[1]["pixel_values"].shape[1] for p in paths} == {1, 3, 5}
    calibration = {"bias": [1.5 * i for i in range(len(CLASSES))], "temperature": 1.7, "threshold": 0}
    got = {}
    for calibrated in (None, calibration):
        wanted = evaluate_with(torch_side, paths, QUESTION, CLASSES, "score", 3, 10**8, calibration=calibrated)
        got[bool(calibrated)] = evaluate_with(onnx_side, paths, QUESTION, CLASSES, "score", 3, 10**8,
                                              calibration=calibrated)
        for w, g in zip(wanted, got[bool(calibrated)]):
            assert g["pred"] == w["pred"] and g["top2"] == w["top2"]
            assert g["probs"] == pytest.approx(w["probs"], abs=1e-4)
        assert max(max(r["probs"].values()) for r in wanted) > 0.5  # probabilities that decide, not all alike
    assert got[True][0]["probs"] != pytest.approx(got[False][0]["probs"], abs=1e-3)  # the calibration applied
    # the classes asked in another order are the same classes, each with its own probability
    reordered = evaluate_with(onnx_side, paths[:2], QUESTION, CLASSES[::-1], "score", 2, 10**8)
    for r, g in zip(reordered, got[False]):
        assert r["probs"] == pytest.approx(g["probs"], abs=1e-9)


def test_a_multi_label_export_gives_pytorchs_probabilities_and_label_sets(saved_models, tmp_path):
    """A multi-label head exported: the graph gives the logits, the folder's record carries multi_label and the
    thresholds, and ONNX Runtime (and OpenVINO, through the same predictor) gives PyTorch's per-class sigmoid
    probabilities within 1e-4 and the same labels, those at or above their thresholds; int8 is refused, leaving
    nothing."""
    thresholds = {"red": 0.5, "green": 0.3, "blue": 0.7, "Bird-drop": 0.5}
    folder = as_multi_label(saved_models["head"], tmp_path / "multi", thresholds)
    record = export_model(open_classifier(folder), tmp_path / "exported")
    assert record["check"]["largest_score_difference"] <= record["check"]["tolerance"]
    assert "sigmoid" in record["scores"]
    copied = json.loads((tmp_path / "exported" / "classes.json").read_text())
    assert copied["multi_label"] is True and copied["thresholds"] == thresholds
    paths = noisy_images(tmp_path / "images", SIZES)
    settings = dict(device="cpu", dtype=torch.float32, image_longest_edge=None, image_splitting=None,
                    quantize="none")
    wanted = evaluate_with(load_predictor(open_classifier(folder), **settings), paths, QUESTION, CLASSES, "score", 3,
                           10**8)
    assert len({tuple(w["labels"]) for w in wanted}) > 1  # label sets that differ between images
    assert any(abs(sum(w["probs"].values()) - 1) > 0.1 for w in wanted)  # one probability a class, not a softmax
    for runtime in ("onnxruntime", "openvino"):
        got = evaluate_with(load_predictor(open_classifier(tmp_path / "exported"), runtime=runtime, **settings),
                            paths, QUESTION, CLASSES, "score", 3, 10**8)
        for w, g in zip(wanted, got):
            assert g["probs"] == pytest.approx(w["probs"], abs=1e-4)
            assert g["labels"] == w["labels"] == [c for c in CLASSES if g["probs"][c] >= thresholds[c]]
    with pytest.raises(UserError, match=f"^{folder}: a multi-label model, which export_model.py --quantize=int8"):
        export_model(open_classifier(folder), tmp_path / "int8", quantize="int8")
    assert not (tmp_path / "int8").exists()


def test_the_folder_holds_what_prediction_needs_and_records_what_was_exported(saved_models, exported):
    folder, source = exported["answer"], saved_models["answer"]
    names = {p.name for p in folder.iterdir()}
    assert {MODEL_FILE, INT8_FILE, EXPORT_FILE, "classes.json", "processor_config.json", "tokenizer.json"} <= names
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temporary folder left
    # the class bias and the rest travel whole
    assert json.loads((folder / "classes.json").read_text()) == json.loads((source / "classes.json").read_text())
    record = json.loads((folder / EXPORT_FILE).read_text())
    assert record["objective"] == "answer" and record["classes"] == CLASSES and record["opset"] == 18
    assert record["files"][MODEL_FILE] == (folder / MODEL_FILE).stat().st_size
    assert record["image"] == {"longest_edge": 1024, "splitting": True}
    assert record["check"]["largest_score_difference"] < 1e-3
    digest = hashlib.sha256()
    for file in sorted(p for p in source.iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    assert record["source"]["sha256"] == digest.hexdigest()
    assert (folder / INT8_FILE).stat().st_size < 0.8 * (folder / MODEL_FILE).stat().st_size


def test_the_graphs_record_their_classes_and_objective_and_the_manifest_every_file(exported):
    import onnx
    for objective, folder in exported.items():
        for name in (MODEL_FILE, INT8_FILE):
            graph = onnx.load(str(folder / name), load_external_data=False)
            assert {p.key: p.value for p in graph.metadata_props if p.key.startswith("vlmcls.")} == \
                {"vlmcls.objective": objective, "vlmcls.classes": json.dumps(CLASSES)}
        record = json.loads((folder / EXPORT_FILE).read_text())
        files = {p.name for p in folder.iterdir() if p.is_file()} - {EXPORT_FILE}
        assert set(record["manifest"]) == files and len(files) > 5
        assert record["manifest"][MODEL_FILE] == hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()


def swap_objective(record):
    record["objective"] = "answer" if record["objective"] == "head" else "head"


def edit_json(name, change):
    def edit(folder):
        found = json.loads((folder / name).read_text())
        change(found)
        (folder / name).write_text(json.dumps(found))
    return edit


def truncate(name):
    def edit(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:len(data) // 2])
    return edit


BREAKS = {  # what is done to a copy of an exported folder, and the one line that refuses it
    "classes reversed in export.json": (edit_json(EXPORT_FILE, lambda r: r["classes"].reverse()), "none",
                                        r"export.json: its classes .* is not what model.onnx records"),
    "classes reversed in classes.json": (edit_json("classes.json", lambda r: r["classes"].reverse()), "none",
                                         r"classes.json: changed since export"),
    "truncated model.onnx": (truncate(MODEL_FILE), "none", r"/model.onnx: changed since export"),
    "corrupt export.json": (truncate(EXPORT_FILE), "none", r"export.json: cannot be read as JSON"),
    "unknown objective": (edit_json(EXPORT_FILE, lambda r: r.update(objective="bogus")), "none",
                          r"export.json: objective 'bogus' is not one of answer, head"),
    "the other objective": (edit_json(EXPORT_FILE, swap_objective), "int8",
                            r"export.json: its objective answer is not what model.int8.onnx records \(head\)"),
    "float graph over model.int8.onnx": (lambda f: shutil.copyfile(f / MODEL_FILE, f / INT8_FILE), "int8",
                                         r"model.int8.onnx: changed since export"),
    "exported before the manifest": (edit_json(EXPORT_FILE, lambda r: r.pop("manifest")), "none",
                                     r"export.json: no manifest of the folder's files"),
}


@pytest.mark.parametrize("broken", BREAKS)
def test_an_exported_folder_that_is_not_as_exported_is_refused_naming_the_file(broken, exported, tmp_path):
    """Each of these was predicted with (swapped classes, a float graph as int8) or ended in a traceback before the
    export recorded its files' SHA-256 and the graph its classes and objective."""
    change, quantize, message = BREAKS[broken]
    folder = tmp_path / "copy"
    shutil.copytree(exported["head"], folder)
    load_predictor(open_classifier(folder), device="cpu", dtype=torch.float32, image_longest_edge=None,
                   image_splitting=None, quantize=quantize)  # as exported: accepted
    change(folder)
    with pytest.raises(UserError, match=message):
        load_predictor(open_classifier(folder), device="cpu", dtype=torch.float32, image_longest_edge=None,
                       image_splitting=None, quantize=quantize)


@pytest.mark.parametrize("objective, layer", [("head", "model.classifier_head"), ("answer", "model.lm_head")])
def test_int8_keeps_the_scoring_layer_float_and_records_its_check_against_float(objective, layer, exported):
    """The layer that makes the scores (the head; the answer objective's lm_head) keeps float32 weights in
    model.int8.onnx, multiplied by a float MatMul, while the other matrix products are int8; export.json records the
    int8 graph against the float graph on one tile and on three."""
    import onnx
    from onnx import TensorProto
    graph = onnx.load(str(exported[objective] / INT8_FILE)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    weights = {name for name in types if name.startswith(f"{layer}.weight")}
    assert weights and all(types[name] == TensorProto.FLOAT for name in weights)
    transposed = {n.output[0] for n in graph.node if n.op_type == "Transpose" and n.input[0] in weights}
    assert any(n.op_type in ("MatMul", "Gemm") and {*weights, *transposed} & set(n.input) for n in graph.node)
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) >= 20  # the rest is int8
    check = json.loads((exported[objective] / EXPORT_FILE).read_text())["int8_check"]
    assert check["float_layer"] == layer and check["per_channel"] is True
    assert [c["tiles"] for c in check["against_float"]] == [1, 3]
    for c in check["against_float"]:
        assert 0 < c["largest_probability_difference"] < 0.05 and c["same_top_class"] is True


def test_an_int8_graph_whose_scoring_layer_was_quantised_is_refused(saved_models, tmp_path, monkeypatch):
    """Where the nodes of the scoring layer are not found to exclude, the quantised head is caught after
    quantising, and nothing is written."""
    monkeypatch.setattr("vlmcls.export.layer_nodes", lambda file, layer: [])
    with pytest.raises(UserError, match="model.classifier_head was quantised"):
        export_model(open_classifier(saved_models["head"]), tmp_path / "out", quantize="int8")
    assert list(tmp_path.iterdir()) == []


# OpenVINO runs in a process of its own, as a user's script runs it: loaded into the test process beside torch and
# onnxruntime, its thread pool crashed a later test of the suite (a segmentation fault, once in a whole run).
OPENVINO_CHECK = """
import json, sys
import openvino
from vlmcls.openvino_runtime import OpenVinoPredictor, compress_int8
from vlmcls.prediction import evaluate_with
from vlmcls.runtime import load_predictor
from vlmcls.saved import open_classifier
folder, paths, question, classes = json.loads(sys.argv[1])
settings = dict(device="cpu", dtype="float32", image_longest_edge=None, image_splitting=None, runtime="openvino")
found = {"config": {}}
for quantize in ("none", "int8"):
    predictor = load_predictor(open_classifier(folder), quantize=quantize, **settings)
    assert isinstance(predictor, OpenVinoPredictor)
    found[quantize] = evaluate_with(predictor, paths, question, classes, "score", 2, 10**8)
    found["config"][quantize] = [predictor.session.get_property("INFERENCE_PRECISION_HINT").to_string(),
                                 predictor.session.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")]
found["bf16"] = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
record = json.loads(open(folder + "/export.json").read())
model = compress_int8(openvino.Core().read_model(folder + "/model.onnx"), record)
weights = {op.get_friendly_name(): op.input_value(1).get_node().get_type_name() for op in model.get_ordered_ops()
           if op.get_type_name() == "MatMul"}
found["kept"] = [kind for name, kind in weights.items() if name.split("/")[0] in record["int8_check"]["float_nodes"]]
found["int8_weights"] = sum(kind == "Convert" for kind in weights.values())
print(json.dumps(found))
"""


@pytest.mark.parametrize("objective", ["head", "answer"])
def test_openvino_gives_onnx_runtimes_probabilities_and_its_int8_keeps_the_scoring_layer_float(objective, exported,
                                                                                               tmp_path):
    """--runtime=openvino: OpenVINO's probabilities are ONNX Runtime's within 1e-4 on 1 and 3 tiles (at f32); with
    int8 its weights are int8 but for the scoring layer's (the nodes export.json names), its activations quantised in
    groups of DYNAMIC_GROUP as it runs, the rest in bf16 where the CPU has it, and the top classes stay."""
    paths = noisy_images(tmp_path, SIZES[:2])
    settings = dict(device="cpu", dtype=torch.float32, image_longest_edge=None, image_splitting=None)
    wanted = evaluate_with(load_predictor(open_classifier(exported[objective]), quantize="none", **settings), paths,
                           QUESTION, CLASSES, "score", 2, 10**8)
    out = subprocess.run([sys.executable, "-c", OPENVINO_CHECK,
                          json.dumps([str(exported[objective]), [str(p) for p in paths], QUESTION, CLASSES])],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no OpenVINO int8 graph (no calibration images" in out.stdout  # exported without: weights compressed
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["config"]["none"][0] == "f32"
    assert found["config"]["int8"] == ["bf16" if found["bf16"] else "f32", DYNAMIC_GROUP]
    for w, g in zip(wanted, found["none"]):
        assert g["pred"] == w["pred"] and g["probs"] == pytest.approx(w["probs"], abs=1e-4)
    got = found["int8"]
    assert [g["pred"] for g in got] == [w["pred"] for w in wanted]
    assert 0 < max(abs(g["probs"][c] - w["probs"][c]) for g, w in zip(got, wanted) for c in CLASSES) < 0.05
    # the scoring layer multiplies by a float constant, not an int8 one converted; the rest is int8
    assert found["kept"] and "Convert" not in found["kept"]
    assert found["int8_weights"] >= 20


def test_the_float_scope_takes_the_named_nodes_and_their_parts_not_longer_numbers():
    """NNCF matches each pattern at the start of a node's name: the scope keeps the scoring layer's nodes float, and
    no other node whose name only begins with one of theirs."""
    import re
    from vlmcls.openvino_runtime import kept_float
    patterns = kept_float(["node_linear_3", "/classifier_head/MatMul"]).patterns
    names = ["node_linear_3", "node_linear_3/fq_weights_1", "node_linear_30", "node_linear_31/fq_weights_1",
             "/classifier_head/MatMul", "/classifier_head/MatMul_1", "/classifier_head/MatMul2"]
    taken = [n for n in names if any(re.match(p, n) for p in patterns)]
    assert taken == ["node_linear_3", "node_linear_3/fq_weights_1", "/classifier_head/MatMul",
                     "/classifier_head/MatMul_1"]


# The export's OpenVINO int8 graph (int8 weights and activations), run in OpenVINO as in OPENVINO_CHECK
STATIC_CHECK = """
import json, sys
from vlmcls.openvino_runtime import OpenVinoPredictor
from vlmcls.prediction import evaluate_with
from vlmcls.saved import open_classifier
folder, paths, question, classes = json.loads(sys.argv[1])
predictor = OpenVinoPredictor(open_classifier(folder), quantize="int8")
precisions = {op.get_rt_info()["runtimePrecision"].astype(str) for op in predictor.session.get_runtime_model().get_ordered_ops()}
print(json.dumps({"results": evaluate_with(predictor, paths, question, classes, "score", 2, 10**8),
                  "int8_activations": bool(precisions & {"i8", "u8", "I8", "U8"})}))
"""


def test_export_writes_a_checked_openvino_int8_graph_calibrated_on_the_images_given(saved_models, tmp_path):
    """export_model.py --quantize=int8 --calibration_json: OpenVINO's graph of int8 weights and activations,
    calibrated on that data set's images, recorded with its check on 1 and 3 tiles and in the manifest, and run by
    --runtime=openvino --quantize=int8 (int8 activations), keeping ONNX Runtime's float top class."""
    paths = noisy_images(tmp_path / "calibration", SIZES[:2])
    data = tmp_path / "calibration.json"
    data.write_text(json.dumps({"classes": CLASSES, "question": QUESTION, "max_image_pixels": 10**8,
                                "samples": [{"image": str(p), "label": p.name.split("_")[0]} for p in paths]}))
    out = tmp_path / "onnx"
    run_script("export_model.py", f"--model_path={saved_models['head']}", f"--output_dir={out}", "--quantize=int8",
               f"--calibration_json={data}", "--calibration_images=4", "--check_images=2", cwd=tmp_path)
    record = json.loads((out / EXPORT_FILE).read_text())
    static = record["openvino_int8"]
    assert static["file"] == OPENVINO_INT8_FILE
    assert static["calibration"] == {"json": str(data), "images": 4, "check_images": 2}
    # the synthetic images at 1 and 3 tiles, then the data set's 2 images after the 4 that calibrated it
    assert static["precision"] == "f32" and [c["tiles"] for c in static["against_float"][:2]] == [1, 3]
    in_turn = images_in_turn(json.loads(data.read_text()), 6)
    assert [c.get("image") for c in static["against_float"][2:]] == in_turn[4:] and len(in_turn) == 6
    assert all(c["same_top_class"] for c in static["against_float"])
    assert {OPENVINO_INT8_FILE, OPENVINO_INT8_FILE.replace(".xml", ".bin")} <= set(record["manifest"])
    images = noisy_images(tmp_path / "unseen", SIZES[:2], seed=1)
    wanted = evaluate_with(OnnxPredictor(open_classifier(out)), images, QUESTION, CLASSES, "score", 2, 10**8)
    found = subprocess.run([sys.executable, "-c", STATIC_CHECK, json.dumps([str(out), [str(p) for p in images],
                                                                            QUESTION, CLASSES])],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert found.returncode == 0, found.stderr[-3000:]
    got = json.loads(found.stdout.strip().splitlines()[-1])
    assert got["int8_activations"] and "compressing the weights" not in found.stdout
    assert [g["pred"] for g in got["results"]] == [w["pred"] for w in wanted]


def test_an_openvino_int8_graph_that_changes_a_top_class_is_not_written(exported, tmp_path, monkeypatch):
    """The OpenVINO int8 graph is written only where its top class is the float graph's on every check: the
    synthetic images and the calibration JSON's check images; one that changes it on a check (3 tiles, or a check
    image) is left out and export.json says why, as it does without calibration images. The calibration inputs are
    the calibration images alone, encoded as the runtime encodes them; the check images are checked, named."""
    from vlmcls import openvino_runtime
    from vlmcls.export import example_inputs, openvino_int8
    from vlmcls.models import load_processor
    processor = load_processor(exported["head"])
    examples = [example_inputs(processor, QUESTION, 1), example_inputs(processor, QUESTION)]
    images = noisy_images(tmp_path, SIZES)[:4]  # one colour at 1, 3, 5 and 3 tiles
    calls = {}
    monkeypatch.setattr(openvino_runtime, "quantize_static", lambda file, nodes, feeds: calls.update(feeds=feeds))
    monkeypatch.setattr(openvino_runtime, "compile_model", lambda model: None)
    monkeypatch.setattr(openvino_runtime, "save", lambda model, file: calls.update(saved=file))
    for changed in (None, 1, 3):  # the check whose top class changes: none, the 3 tiles, the second check image
        calls.clear()
        monkeypatch.setattr("vlmcls.export.check_against_float", lambda fp32, scores, found: [
            {"tiles": int(e[1].shape[1]), "largest_probability_difference": 0.1, "same_top_class": i != changed}
            for i, e in enumerate(found)])
        record = openvino_int8(tmp_path, processor, QUESTION, ["node"], ("data.json", images[:3], images[3:] * 2,
                                                                         10**8), examples)
        assert [c["tiles"] for c in record["against_float"]] == [1, 3, 3, 3]
        assert [c.get("image") for c in record["against_float"]] == [None, None, str(images[3]), str(images[3])]
        assert record["calibration"] == {"json": "data.json", "images": 3, "check_images": 2}
        assert [f["pixel_values"].shape[1] for f in calls["feeds"]] == [1, 3, 5]
        if changed is None:
            assert record["file"] == OPENVINO_INT8_FILE and calls["saved"] == tmp_path / OPENVINO_INT8_FILE
        else:
            assert record["file"] is None and "saved" not in calls and "top class" in record["reason"]
    assert openvino_int8(tmp_path, processor, QUESTION, ["node"], None, examples) == {
        "file": None, "reason": "no calibration images: give export_model.py --calibration_json"}


def test_what_cannot_be_exported_or_predicted_is_refused_and_nothing_is_left(saved_models, exported, tiny_llava,
                                                                             tmp_path, monkeypatch):
    with pytest.raises(UserError, match="generate mode"):
        export_model(open_classifier(saved_models["answer"]), tmp_path / "out", mode="generate")
    with pytest.raises(UserError, match="llava model cannot be exported"):
        export_model(open_classifier(tiny_llava), tmp_path / "out", classes=["a", "b"])
    with pytest.raises(UserError, match="not a saved model folder"):
        export_model(open_classifier(tmp_path), tmp_path / "out")
    with pytest.raises(UserError, match="its head scores the classes it was trained on"):
        export_model(open_classifier(saved_models["head"]), tmp_path / "out", classes=["a", "b"])
    assert list(tmp_path.iterdir()) == []

    # a failure late in the export (here quantising) leaves the earlier export as it was, and no temporary folder
    out = tmp_path / "head"
    shutil.copytree(exported["head"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args):
        raise RuntimeError("disk full")
    monkeypatch.setattr("vlmcls.export.quantize_int8", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(open_classifier(saved_models["head"]), out, quantize="int8")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["head"]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an exported model folder"):
        export_model(open_classifier(saved_models["head"]), tmp_path / "elsewhere")

    predictor = OnnxPredictor(open_classifier(exported["answer"]))
    with pytest.raises(UserError, match="score mode only"):
        next(predictor.predict_batches([[tmp_path / "x.png"]], QUESTION, CLASSES, "generate", 10**8))
    with pytest.raises(UserError, match="fixed at export"):
        next(predictor.predict_batches([[tmp_path / "x.png"]], QUESTION, ["red", "green"], "score", 10**8))
    fp32_only = tmp_path / "fp32-only"  # as export_model(..., quantize="none") writes it
    shutil.copytree(exported["answer"], fp32_only)
    (fp32_only / INT8_FILE).unlink()
    record = json.loads((fp32_only / EXPORT_FILE).read_text())
    del record["manifest"][INT8_FILE]
    (fp32_only / EXPORT_FILE).write_text(json.dumps(record))
    with pytest.raises(UserError, match="export with --quantize=int8"):
        OnnxPredictor(open_classifier(fp32_only), quantize="int8")


def test_the_page_shows_the_exported_models_probabilities(saved_models, exported, tmp_path):
    """The app's classification (what /classify and /predict run) with the exported model: PyTorch's numbers, the
    model's views, and an unusable file named."""
    paths = noisy_images(tmp_path, SIZES[:2])
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    settings = dict(device="cpu", dtype=torch.float32, image_longest_edge=None, image_splitting=None,
                    quantize="none")
    shown = {}
    for side in ("torch", "onnx"):
        predictor = load_predictor(open_classifier((saved_models if side == "torch" else exported)["head"]),
                                   **settings)
        ranked, views, problems = classify_files(predictor, [*paths, tmp_path / "broken.png"], CLASSES, QUESTION,
                                                 batch_size=2, max_pixels=10**8)
        shown[side] = ({(name, c): p for name, classes, *_ in ranked for c, p in classes}, [v.size for v, _ in views])
        assert len(problems) == 1 and "broken.png" in problems[0]
    assert shown["onnx"][0] == pytest.approx(shown["torch"][0], abs=1e-4)
    assert shown["onnx"][1] == shown["torch"][1]
    with pytest.raises(UserError, match="fixed at export"):  # the page shows it as its message
        classify_files(predictor, paths, ["red", "green"], QUESTION, batch_size=2, max_pixels=10**8)


def test_the_page_of_an_exported_model_says_it_cannot_show_where_it_looked(exported):
    """Its switch "Show where it looked" is disabled, its line saying why, as the scripts refuse --explain=true."""
    from vlmcls.app import build_page
    predictor = load_predictor(open_classifier(exported["head"]), device="cpu", dtype=torch.float32,
                               image_longest_edge=None, image_splitting=None, quantize="none")
    page = build_page(predictor, classes=[], examples=[], batch_size=2, max_pixels=10**8, quantize="none")
    switch = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "explain")
    assert switch.interactive is False
    assert switch.info == f"{open_classifier(exported['head']).path} is an exported model: explanations need " \
                          "PyTorch, in the model folder it was exported from."


def torch_free_env(tmp_path):
    """Environment variables under which this Python cannot import torch: a copy of site-packages (links) without
    torch and its kin replaces the real one on sys.path (sitecustomize), so torch is neither importable nor found
    by importlib.metadata, as on a machine where it was never installed."""
    site_packages = os.path.realpath(sysconfig.get_paths()["purelib"])
    farm = tmp_path / "site-packages"
    farm.mkdir()
    for entry in Path(site_packages).iterdir():
        if not entry.name.lower().startswith(("torch", "functorch", "triton", "nvidia")):
            (farm / entry.name).symlink_to(entry)
    custom = tmp_path / "sitecustomize"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"sys.path[:] = [p for p in sys.path if os.path.realpath(p) != {site_packages!r}] + [{str(farm)!r}]\n")
    return {"PYTHONPATH": str(custom)}


@pytest.mark.slow
def test_vlm_test_predicts_with_an_exported_model_where_torch_cannot_be_imported(fine_tuned_head, tmp_path):
    """A model fine-tuned by fine_tune.py, exported by export_model.py, evaluated by vlm_test.py in a process that
    cannot import torch: the reports PyTorch's run writes, the same classes and probabilities; with
    --quantize=int8 the int8 graph keeps the top class of every image (>= 99%) of a larger set."""
    work = fine_tuned_head
    run_script("export_model.py", "--model_path=head", f"--output_dir={tmp_path / 'onnx'}", "--quantize=int8",
               cwd=work)
    env = torch_free_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                           env={**os.environ, **env})
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    # images the model never saw, drawn as its training images were (make_colour_images), of 20 sizes
    data = tmp_path / "images"
    noisy_images(data, [(40 + 7 * i, 30 + 5 * (i % 7)) for i in range(20)], seed=1, noise=25, per_class=True)
    reports = {}
    for side, model, extra in [("torch", work / "head", {}), ("onnx", tmp_path / "onnx", env),
                               ("int8", tmp_path / "onnx", env)]:
        run_script("vlm_test.py", f"--model_path={model}", f"--dataset_dir={data}", f"--report_dir={tmp_path / side}",
                   f"--quantize={'int8' if side == 'int8' else 'none'}", cwd=work, env=extra)
        with open(tmp_path / side / "predictions.csv") as f:
            reports[side] = (report_in(tmp_path / side), list(csv.DictReader(f)))
        assert (tmp_path / side / "confusion_matrix.png").is_file()
    (torch_report, torch_rows), (onnx_report, onnx_rows) = reports["torch"], reports["onnx"]
    assert onnx_report["accuracy"] == torch_report["accuracy"] and onnx_report["prediction"] == "head"
    assert [r["predicted_class"] for r in onnx_rows] == [r["predicted_class"] for r in torch_rows]
    assert [float(r["probability"]) for r in onnx_rows] == \
        pytest.approx([float(r["probability"]) for r in torch_rows], abs=1e-4)
    assert len(torch_rows) == 60 and torch_report["accuracy"] > 0.8  # a trained model; 99% of 60 is all of them
    agree = sum(a["predicted_class"] == b["predicted_class"] for a, b in zip(torch_rows, reports["int8"][1]))
    assert agree >= 0.99 * len(torch_rows)

    # the page's API, served by vlm_app.py where torch cannot be imported, gives vlm_test.py's numbers
    from gradio_client import Client, handle_file

    from test_app import serving
    row = onnx_rows[0]
    with serving(work, tmp_path / "onnx", env) as url:
        result = Client(url, verbose=False).predict(handle_file(row["path"]), api_name="/predict")
    assert result["label"] == row["predicted_class"]
    assert {c["label"]: c["confidence"] for c in result["confidences"]}[result["label"]] == \
        pytest.approx(float(row["probability"]), abs=1e-5)
