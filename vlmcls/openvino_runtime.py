"""Prediction with an exported model (export_model.py's folder) in OpenVINO on the CPU: onnx_runtime.OnnxPredictor
with an OpenVINO compiled model in place of its ONNX Runtime session (the same graph file, prompt, pixels and
post-processing). OpenVINO reads model.onnx itself; with quantize=int8 it compresses that graph's weights to int8 as
it loads (NNCF's weight compression), keeping the scoring layer float as the exported int8 graph does."""
from .cli import UserError
from .onnx_runtime import OnnxPredictor

PRECISION = "f32"  # OpenVINO's inference precision: f32, not the bf16 it picks by itself on CPUs that have it


class OpenVinoPredictor(OnnxPredictor):
    """An exported model in OpenVINO on the CPU: model.onnx as it is, or with quantize=int8 its weights compressed
    to int8 at load (the int8 graph onnxruntime wrote is not used); `threads` (0: OpenVINO's default)."""

    def __init__(self, saved, *, quantize="none", image_longest_edge=None, image_splitting=None, threads=0):
        self.int8 = quantize == "int8"
        super().__init__(saved, quantize="none", image_longest_edge=image_longest_edge,
                         image_splitting=image_splitting, threads=threads)

    def open(self, file, threads):
        try:
            import openvino
        except ImportError:
            raise UserError("runtime=openvino needs openvino (and nncf for int8): pip install -r requirements.txt") \
                from None
        core = openvino.Core()
        model = core.read_model(str(file))
        # OpenVINO keeps an ONNX graph's metadata_props among the model's "framework" run-time information
        metadata = {key: value.astype(str) for key, value in model.get_rt_info()["framework"].items()} \
            if "framework" in model.get_rt_info().keys() else {}
        if self.int8:
            if "int8_check" not in self.saved.export:
                raise UserError(f"{self.saved.path}: runtime=openvino with quantize=int8 keeps float the nodes an "
                                "int8 export recorded; export with --quantize=int8")
            model = compress_int8(model, self.saved.export)
        config = {"INFERENCE_PRECISION_HINT": PRECISION, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        return core.compile_model(model, "CPU", config), metadata

    def scores(self, input_ids, pixel_values):
        return self.session({"input_ids": input_ids, "pixel_values": pixel_values})[0][0]


def compress_int8(model, record):
    """The OpenVINO model with int8 weights (NNCF, per output channel, symmetric), the nodes of the layer that makes
    the scores (export.json's int8_check.float_nodes, as the exported int8 graph) left float."""
    try:
        import nncf
    except ImportError:
        raise UserError("runtime=openvino with quantize=int8 needs nncf: pip install -r requirements.txt") from None
    import re
    ignored = nncf.IgnoredScope(patterns=[re.escape(n) + ".*" for n in record["int8_check"]["float_nodes"]],
                                validate=False)
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=ignored)
