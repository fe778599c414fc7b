"""Prediction with an exported model (export_model.py's folder) in OpenVINO on the CPU: onnx_runtime.OnnxPredictor
with an OpenVINO compiled model in place of its ONNX Runtime session (the same prompt, pixels and post-processing),
and the int8 graphs OpenVINO runs. OpenVINO reads model.onnx itself; with quantize=int8 it runs the graph of int8
weights and activations that export_model.py calibrated and checked (NNCF's post-training quantisation), or, where
the folder has none, compresses model.onnx's weights to int8 as it loads (NNCF's weight compression; OpenVINO then
quantises each product's activations as it runs). Both keep the scoring layer float, as the exported int8 graph
does."""
from .cli import UserError
from .onnx_runtime import OnnxPredictor

PRECISION = "f32"  # OpenVINO's inference precision: f32, not the bf16 it picks by itself on CPUs that have it
# Weights compressed at load: OpenVINO quantises each matrix product's activations to int8 as it runs, per token in
# groups of this many channels (its default: 32), and computes the rest in bf16 where the CPU has it (f32 elsewhere).
# Chosen on 8 elpv images of the 256M replica: 2.9x PyTorch fp32 against 1.9x at f32 and 32 (docs/deploy.md)
DYNAMIC_GROUP = 256
FEED = ("input_ids", "pixel_values")  # the graph's inputs, in the order the encoder gives them


def openvino():
    try:
        import openvino
    except ImportError:
        raise UserError("runtime=openvino needs openvino (and nncf for int8): pip install -r requirements.txt") \
            from None
    return openvino


def nncf():
    try:
        import nncf
    except ImportError:
        raise UserError("OpenVINO's int8 needs nncf: pip install -r requirements.txt") from None
    return nncf


def compile_model(model, threads=0, compressed=False):
    """An OpenVINO model compiled for the CPU at PRECISION, `threads` threads (0: OpenVINO's default); a model of
    `compressed` weights with dynamic int8 activations (DYNAMIC_GROUP) and bf16 where the CPU has it."""
    core = openvino().Core()
    config = {"INFERENCE_PRECISION_HINT": PRECISION, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    if compressed:
        config.update(INFERENCE_PRECISION_HINT=compressed_precision(core),
                      DYNAMIC_QUANTIZATION_GROUP_SIZE=DYNAMIC_GROUP)
    return core.compile_model(model, "CPU", config)


def compressed_precision(core):
    """The precision of a compressed-weights model's float parts: bf16 where the CPU has it, else f32."""
    return "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


class OpenVinoPredictor(OnnxPredictor):
    """An exported model in OpenVINO on the CPU: model.onnx as it is, or with quantize=int8 the folder's OpenVINO
    int8 graph (export.json's openvino_int8), else model.onnx's weights compressed to int8 at load, which is said
    in one line (the int8 graph onnxruntime wrote is not used); `threads` (0: OpenVINO's default)."""

    def __init__(self, saved, *, quantize="none", image_longest_edge=None, image_splitting=None, threads=0):
        self.int8 = quantize == "int8"
        super().__init__(saved, quantize="none", image_longest_edge=image_longest_edge,
                         image_splitting=image_splitting, threads=threads)

    def open(self, file, threads):
        core = openvino().Core()
        if self.int8:
            if "int8_check" not in self.saved.export:
                raise UserError(f"{self.saved.path}: runtime=openvino with quantize=int8 keeps float the nodes an "
                                "int8 export recorded; export with --quantize=int8")
            static = self.saved.export.get("openvino_int8", {})
            if static.get("file"):
                file = self.saved.file(static["file"])
            else:
                print(f"{self.saved.path}: no OpenVINO int8 graph ({static.get('reason', 'exported before it existed')}"
                      "): compressing the weights of model.onnx to int8 instead, activations quantised as they run "
                      "(slower)")
        model = core.read_model(str(file))
        # OpenVINO keeps an ONNX graph's metadata_props among the model's "framework" run-time information
        metadata = {key: value.astype(str) for key, value in model.get_rt_info()["framework"].items()} \
            if "framework" in model.get_rt_info().keys() else {}
        compressed = self.int8 and file.suffix == ".onnx"
        if compressed:
            model = compress_int8(model, self.saved.export)
        return compile_model(model, threads, compressed), metadata

    def scores(self, input_ids, pixel_values):
        return self.session(dict(zip(FEED, (input_ids, pixel_values))))[0][0]


def kept_float(float_nodes):
    """NNCF's scope of the nodes of the layer that makes the scores (export.json's int8_check.float_nodes): each
    name, and the nodes OpenVINO names after it (a suffix that does not go on with a digit: NNCF matches a pattern
    at the start of a name, and node_linear_3 must not take node_linear_30 with it)."""
    import re
    return nncf().IgnoredScope(patterns=[re.escape(n) + r"(?![0-9])" for n in float_nodes], validate=False)


def compress_int8(model, record):
    """The OpenVINO model with int8 weights (NNCF, per output channel, symmetric), the nodes of the layer that makes
    the scores (export.json's int8_check.float_nodes, as the exported int8 graph) left float."""
    return nncf().compress_weights(model, mode=nncf().CompressWeightsMode.INT8_SYM,
                                   ignored_scope=kept_float(record["int8_check"]["float_nodes"]))


def quantize_static(file, float_nodes, feeds):
    """The graph `file` (model.onnx) in OpenVINO with int8 weights and activations: NNCF's post-training quantisation
    for transformers (SmoothQuant, then per-tensor activation ranges from the calibration inputs `feeds`, dicts of
    FEED), the nodes `float_nodes` left float."""
    model = openvino().Core().read_model(str(file))
    return nncf().quantize(model, nncf().Dataset(feeds), model_type=nncf().ModelType.TRANSFORMER,
                           ignored_scope=kept_float(float_nodes), subset_size=len(feeds))


def save(model, file):
    """The OpenVINO model as `file` (.xml) and its weights beside it (.bin), float weights kept float32."""
    openvino().save_model(model, str(file), compress_to_fp16=False)
