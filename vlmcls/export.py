"""Export of a saved model to ONNX (torch.onnx's dynamo exporter): one graph from an image's prompt to its class
scores, int8 weights on request (with calibration images, also OpenVINO's graph of int8 weights and activations,
kept only where it keeps the float graph's top class), and the folder a runtime without PyTorch reads (onnx_runtime.py), written whole or
not at all.

The graph takes one image's prompt, `input_ids` (1, tokens), and its tiles, `pixel_values` (1, tiles, 3, 512, 512),
both of any length, and gives `scores` (1, classes): the head's logits (objective head), or the log-likelihood of
every class's whole answer, each of its tokens through its end token (objective answer, score mode; the classes are
fixed at export). The graph is the objective's scoring module (scoring_module, objectives/base.py), the one its score
mode runs in PyTorch; softmax of the scores is what both paths rank classes by. The graph records its objective and
classes (metadata_props), and export.json the SHA-256 of every other file of the folder: the ONNX runtime checks
both before it predicts (vlmcls/saved.py).
"""
import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from .cli import UserError
from .compat import library_versions
from .files import write_json
from .objectives import load_for_inference
from .pixels import FAMILY
from .saved import CLASSES_FILE, EXPORT_FILE, EXPORT_FORMAT, INT8_FILE, MODEL_FILE, OPENVINO_INT8_FILE, \
    graph_metadata, manifest

OPSET = 18  # the ONNX opset written: onnxruntime 1.20+ and OpenVINO 2024+ read it
FAMILIES = ("idefics3", "smolvlm")  # config model types whose graph has been checked (SmolVLM's architecture)
RUNTIME_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
TOLERANCE = 1e-3  # largest difference of the exported graph's scores from PyTorch's on the example image
PER_CHANNEL = True  # int8 weights with a scale per output channel (benchmarks/results-export.md chose it)


def check_exportable(model_path, model, processor, mode, quantize):
    """Refuse what cannot be exported, naming why: generate mode (a loop of passes, not one graph), a model loaded
    with torch's int8 weights (export from float32; QUANTIZE=int8 quantises the exported graph), an architecture
    whose graph was not checked, or an image processor the ONNX runtime cannot compute pixels for."""
    if mode != "score":
        raise UserError(f"{model_path}: prediction={mode} cannot be exported: generate mode writes an answer token by "
                        "token, a loop of model passes; export classifies in score mode (one graph)")
    if quantize not in ("none", "int8"):
        raise UserError(f"quantize={quantize!r}: use none or int8")
    kind = model.config.model_type
    if kind not in FAMILIES:
        raise UserError(f"{model_path}: a {kind} model cannot be exported: only SmolVLM's architecture "
                        f"({', '.join(FAMILIES)}) has an export checked against PyTorch")
    if type(processor.image_processor).__name__ != FAMILY:
        raise UserError(f"{model_path}: its image processor is {type(processor.image_processor).__name__}; the ONNX "
                        f"runtime computes pixels as {FAMILY} does (load the model without torchvision installed)")


def example_inputs(processor, question, tiles=3):
    """A prompt and tiles of a synthetic image, with the processor's own settings otherwise: of 3 tiles (2 and the
    global view), so that the graph's tile count stays variable (the exporter fixes a dimension of size 1), or of
    1 tile (no splitting), the scripts' usual input."""
    from PIL import Image

    from .inputs import PromptBatches
    image_processor = processor.image_processor
    tile = image_processor.max_image_size["longest_edge"]
    splitting, size = image_processor.do_image_splitting, dict(image_processor.size)
    image_processor.do_image_splitting = tiles > 1
    image_processor.size = {"longest_edge": tile if tiles == 1 else 2 * tile}
    try:
        width = tile if tiles == 1 else 2 * tile
        batch = PromptBatches(processor, question, None, True)([Image.new("RGB", (width, tile), (120, 60, 30))])
    finally:
        image_processor.do_image_splitting, image_processor.size = splitting, size
    return batch["input_ids"], batch["pixel_values"]


@contextlib.contextmanager
def torch_checks_off():
    """transformers' documented switch TRANSFORMERS_DISABLE_TORCH_CHECK=1 (read at each check) for the duration:
    its checks become torch._check_tensor_all, whose aten._is_all_true has no ONNX function."""
    before = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"]
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = before


def export_graph(module, inputs, file, opset, metadata):
    """The module as an ONNX file (one file, weights inside), tokens and tiles of any number, with `metadata` in
    its metadata_props."""
    import torch
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError:
        raise UserError("export needs onnx and onnxscript: pip install -r requirements.txt") from None
    with torch_checks_off(), torch.inference_mode():
        program = torch.onnx.export(module, inputs, dynamo=True, opset_version=opset,
                                    input_names=["input_ids", "pixel_values"], output_names=["scores"],
                                    dynamic_shapes={"input_ids": {1: torch.export.Dim("tokens")},
                                                    "pixel_values": {1: torch.export.Dim("tiles")}},
                                    verbose=False)
    program.model.metadata_props.update(metadata)
    program.save(str(file), external_data=False)


def scoring_layer(module, objective):
    """The qualified name, in the export module, of the layer that makes the scores (the objective's
    scoring_layer: the classifier head, or the answer objective's lm_head). int8 keeps it in float: its few weights
    decide the class, and rounding them moves every probability."""
    layer = objective.scoring_layer(module.model)
    return next(name for name, m in module.named_modules() if m is layer)


def layer_nodes(file, layer):
    """Names of the graph's MatMul and Gemm nodes that compute `layer` (a module's qualified name): those whose
    torch exporter scope names it, or that multiply by its weight (an initializer of its name, perhaps
    transposed). A Gemm also under the name of the MatMul that dynamic quantisation first splits it into."""
    import ast

    import onnx
    graph = onnx.load(str(file), load_external_data=False).graph
    weight = f"{layer}.weight"
    transposed = {n.output[0] for n in graph.node if n.op_type == "Transpose" and n.input[0] == weight}
    found = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), [])
        if layer in scopes or {weight, *transposed} & set(node.input):
            found += [node.name, f"{node.name}_MatMul"] if node.op_type == "Gemm" else [node.name]
    if not found:
        raise UserError(f"{Path(file).name}: no node of the graph computes {layer}, which int8 must keep in float; "
                        "nothing was written")
    return found


def check_float(file, layer):
    """UserError unless every weight of `layer` in the int8 graph is still float (it may be renamed, transposed)."""
    import onnx
    from onnx import TensorProto
    rounded = [t.name for t in onnx.load(str(file), load_external_data=False).graph.initializer
               if t.name.startswith(f"{layer}.weight") and t.data_type != TensorProto.FLOAT]
    if rounded:
        raise UserError(f"{Path(file).name}: {layer} was quantised ({', '.join(rounded)}), though int8 keeps it in "
                        "float; nothing was written")


def quantize_int8(source, target, keep_float=(), per_channel=PER_CHANNEL):
    """onnxruntime's dynamic quantisation: int8 weights in the matrix products (a scale per output channel with
    `per_channel`), activations quantised per run; the nodes named in `keep_float` stay float."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    logging.disable(logging.WARNING)  # it logs each tensor whose type its shape inference cannot tell, graph and all
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_exclude=list(keep_float))
    finally:
        logging.disable(logging.NOTSET)


def onnx_scores(file):
    """A function of a graph's feed (dict of numpy inputs) giving its (classes,) scores in ONNX Runtime."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)[0][0]


def check_against_float(fp32_file, scores, examples):
    """Quantised scores (`scores`: a function of a feed, as onnx_scores gives) against the float graph's: their
    probabilities (softmax) on each example's inputs ((input_ids, pixel_values), torch or numpy): [{tiles, largest
    probability difference, same top class}]."""
    import numpy as np

    from .calibration import softmax
    float_scores = onnx_scores(fp32_file)
    checks = []
    for input_ids, pixel_values in examples:
        feed = {"input_ids": np.asarray(input_ids), "pixel_values": np.asarray(pixel_values)}
        fp32, int8 = (np.asarray(softmax(run(feed).tolist())) for run in (float_scores, scores))
        checks.append({"tiles": int(pixel_values.shape[1]),
                       "largest_probability_difference": float(np.abs(fp32 - int8).max()),
                       "same_top_class": bool(fp32.argmax() == int8.argmax())})
    return checks


def calibration_images(saved, json_path, count, check=0):
    """(the data set JSON, up to `count` of its images from each class in turn, the next `check` images taken the
    same way, its max_image_pixels): the images that calibrate OpenVINO's int8 graph and those that check it beside
    the synthetic ones (never among the calibration images), of `json_path`, else of the training JSON fine_tune.py
    recorded for the model when it is still there; None when there is neither."""
    from .images import images_in_turn, read_dataset_json, recorded_json
    json_path = json_path or recorded_json(saved.path, "train_json")
    if not json_path:
        return None
    data = read_dataset_json(json_path)
    taken = images_in_turn(data, count + check)
    return str(json_path), taken[:count], taken[count:], data["max_image_pixels"]


def openvino_int8(folder, processor, question, float_nodes, calibration, examples):
    """OpenVINO's graph of int8 weights and activations, calibrated on the calibration images of `calibration`
    (calibration_images'), written to `folder` as OPENVINO_INT8_FILE only when its top class is the float graph's
    on every example (one tile and several) and on each of the calibration JSON's check images. Returns
    export.json's openvino_int8: the file (None when not written) and why, the calibration, the precision it runs
    at and its check against the float graph (a check image's entry names it)."""
    from .onnx_runtime import ArrayEncoder
    from .openvino_runtime import FEED, PRECISION, compile_model, quantize_static, save
    from .prompt import render_segments
    if calibration is None:
        return {"file": None, "reason": "no calibration images: give export_model.py --calibration_json"}
    json_path, images, check_images, max_pixels = calibration
    encoder, segments = ArrayEncoder(processor, max_pixels), render_segments(processor, [(question, None)])
    feeds = [dict(zip(FEED, encoder.example(image, segments))) for image in images]
    model = quantize_static(folder / MODEL_FILE, float_nodes, feeds)
    compiled = compile_model(model)
    checks = check_against_float(folder / MODEL_FILE, lambda feed: compiled(feed)[0][0],
                                 [*examples, *(encoder.example(image, segments) for image in check_images)])
    for check, image in zip(checks[len(examples):], check_images):
        check["image"] = str(image)
    kept = all(c["same_top_class"] for c in checks)
    if kept:
        save(model, folder / OPENVINO_INT8_FILE)
    return {"file": OPENVINO_INT8_FILE if kept else None,
            **({} if kept else {"reason": "its top class was not the float graph's on a check image"}),
            "calibration": {"json": json_path, "images": len(feeds), "check_images": len(check_images)},
            "precision": PRECISION,
            "against_float": checks}


def check_graph(file, module, inputs):
    """The exported graph's scores against the module's on the example inputs; UserError beyond TOLERANCE."""
    import numpy as np
    import torch
    got = onnx_scores(file)({"input_ids": inputs[0].numpy(), "pixel_values": inputs[1].numpy()})
    with torch.inference_mode():
        wanted = module(*inputs).numpy()[0]
    difference = float(np.abs(got - wanted).max())
    if not difference <= TOLERANCE:
        raise UserError(f"{file.name}: the exported graph's scores differ from PyTorch's by {difference:.2g} "
                        f"(more than {TOLERANCE}); nothing was written")
    return difference


def source_digest(model_path):
    """SHA-256 of the model folder's top-level files (names and contents): which weights were exported."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(model_path).iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def replace_folder(staging, out):
    """Put the finished `staging` folder at `out`: a rename; an earlier export there is replaced, any other
    non-empty folder refused."""
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif (out / EXPORT_FILE).is_file():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old)
            return
        else:
            raise UserError(f"{out} exists and is not an exported model folder (no {EXPORT_FILE}): choose another "
                            "output_dir")
    os.replace(staging, out)


def export_model(saved, out, *, classes=(), mode="score", quantize="none", image_longest_edge=None,
                 image_splitting=None, opset=OPSET, calibration=None, record=None):
    """Export a saved model folder (`saved`: its record, vlmcls.saved.open_classifier) to `out`: model.onnx
    (float32), with quantize=int8 also model.int8.onnx, each recording its objective and classes, the processor's
    files at the resolution given (None: as saved), the model's classes.json whole (class bias, temperature and the
    rest travel with it, a multi-label model's thresholds too; for the answer objective `classes`, when given, replace
    its class list), and export.json
    recording what was exported, with the SHA-256 of every other file (its manifest). With quantize=int8 and
`calibration` (calibration_images'), also OpenVINO's int8 graph where it passes its check (openvino_int8); a
    multi-label model is exported in float32 only (int8's check compares top classes). Everything is written to a
    temporary folder beside `out` and renamed into place at the end: a failed export leaves nothing. Returns
    export.json's record."""
    import torch
    model_path, out = Path(saved.path), Path(out)
    if quantize != "none":  # int8's check against the float graph compares top classes, not label sets
        saved.refuse_multi_label(f"export_model.py --quantize={quantize} (export with --quantize=none)")
    if not (model_path / "config.json").is_file():
        raise UserError(f"{model_path}: not a saved model folder (no config.json); export a folder that "
                        "fine_tune.py wrote")
    objective = saved.objective
    found = saved.classes_and_question(list(classes) if objective.NAME == "answer" else [])
    if not found:
        raise UserError(f"{model_path}: no {CLASSES_FILE}: give the class names with --classes='[\"a\", \"b\"]'")
    if classes and objective.NAME == "head" and list(classes) != found[0]:
        raise UserError(f"{model_path}: its head scores the classes it was trained on ({', '.join(found[0])}); "
                        "leave classes empty")
    classes, question = found
    processor, model = load_for_inference(saved, device="cpu", dtype=torch.float32, quantize="none",
                                          image_longest_edge=image_longest_edge, image_splitting=image_splitting)
    check_exportable(model_path, model, processor, mode, quantize)
    module, answers = objective.scoring_module(model, processor, question, classes)
    inputs = example_inputs(processor, question)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        export_graph(module, inputs, staging / MODEL_FILE, opset, graph_metadata(objective.NAME, classes))
        difference = check_graph(staging / MODEL_FILE, module, inputs)
        files, int8_check = [MODEL_FILE], None
        if quantize == "int8":
            layer = scoring_layer(module, objective)
            nodes = layer_nodes(staging / MODEL_FILE, layer)
            quantize_int8(staging / MODEL_FILE, staging / INT8_FILE, nodes)
            check_float(staging / INT8_FILE, layer)
            files.append(INT8_FILE)
            examples = [example_inputs(processor, question, 1), inputs]
            int8_check = {"per_channel": PER_CHANNEL, "float_layer": layer, "float_nodes": nodes,
                          "against_float": check_against_float(staging / MODEL_FILE,
                                                               onnx_scores(staging / INT8_FILE), examples)}
            static = openvino_int8(staging, processor, question, nodes, calibration, examples)
        processor.save_pretrained(str(staging))
        write_json(staging / CLASSES_FILE, {**saved.classes_json, "classes": classes, "question": question,
                                            "objective": objective.NAME})
        image_processor = processor.image_processor
        record_ = {"format": EXPORT_FORMAT, "objective": objective.NAME,
                   "scores": ("head logits, one a class: its sigmoid is the class's probability, a label predicted at "
                              "or above its threshold (classes.json's multi_label and thresholds)"
                              if saved.multi_label else "head logits") if objective.NAME == "head" else
                   "log-likelihood of each class's answer tokens (score mode)",
                   "classes": classes, "question": question, "answer_ids": answers, "opset": opset,
                   "inputs": {"input_ids": "(1, tokens) int64", "pixel_values": "(1, tiles, 3, tile, tile) float32"},
                   "outputs": {"scores": "(1, classes) float32"},
                   "files": {name: (staging / name).stat().st_size for name in files},
                   "source": {"path": str(model_path.resolve()), "sha256": source_digest(model_path)},
                   "image": {"longest_edge": dict(image_processor.size)["longest_edge"],
                             "splitting": bool(image_processor.do_image_splitting)},
                   "check": {"largest_score_difference": difference, "tolerance": TOLERANCE},
                   **({"int8_check": int8_check, "openvino_int8": static} if int8_check else {}),
                   "settings": record or {}, "versions": library_versions(RUNTIME_PACKAGES)}
        record_["manifest"] = manifest(staging)  # last: every file the folder holds but export.json itself
        write_json(staging / EXPORT_FILE, record_)
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record_


def describe(record, out):
    """The console lines of a finished export."""
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in record["files"].items())
    def checks(name, found):
        synthetic = [c for c in found.get("against_float", []) if "image" not in c]
        images = [c for c in found.get("against_float", []) if "image" in c]
        return "".join(f"; {name} against float at {c['tiles']} tile{'s' if c['tiles'] > 1 else ''}: largest "
                       f"probability difference {c['largest_probability_difference']:.2g}, "
                       f"{'same top class' if c['same_top_class'] else 'ANOTHER TOP CLASS'}" for c in synthetic) + (
            f"; {name} against float on {len(images)} check images of the calibration JSON: largest probability "
            f"difference {max(c['largest_probability_difference'] for c in images):.2g}, same top class on "
            f"{sum(c['same_top_class'] for c in images)}" if images else "")
    static = record.get("openvino_int8", {})
    int8 = checks("int8", record.get("int8_check", {})) + checks("OpenVINO int8", static) + (
        "" if not static or static["file"] else f"; no OpenVINO int8 graph written: {static['reason']}")
    return (f"exported {record['objective']} model ({len(record['classes'])} classes: "
            f"{', '.join(record['classes'])}) to {out}: {sizes}; largest score difference from PyTorch on the "
            f"example image {record['check']['largest_score_difference']:.2g}{int8}")
