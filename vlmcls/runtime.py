"""The runtime a saved model predicts in, behind one interface (a predictor): PyTorch for a model folder
(vlmcls.prediction.TorchPredictor), ONNX Runtime (vlmcls.onnx_runtime) or OpenVINO (vlmcls.openvino_runtime) for a
folder export_model.py wrote, chosen by the folder and, for an exported one, the scripts' RUNTIME. The evaluation
scripts and the app reach any of them through load_predictor.

A predictor has `saved` (the model's record, vlmcls/saved.py; None for a model trained in this process),
`objective` (the objective module), `processor`, `encoder(max_pixels, enlarge)` (keeps each image file's inputs;
image_part(path)[1]["pixel_values"] is what the model receives) and `predict_batches(batches, question, classes,
mode, max_pixels, *, enlarge, workers, encoder, calibration)` as vlmcls.prediction.predict_batches."""
from .cli import OneOf
from .models import join_processes, pick_device, pick_dtype
from .objectives import load_for_inference
from .onnx_runtime import OnnxPredictor
from .openvino_runtime import OpenVinoPredictor
from .prediction import TorchPredictor

RUNTIMES = {"onnxruntime": OnnxPredictor, "openvino": OpenVinoPredictor}  # an exported model's, by name
RUNTIME_CHOICES = OneOf(*RUNTIMES)


def start(models, device, dtype):
    """(rank, number of processes, device, dtype) for predicting with these models (their records): exported models
    alone run in this one process on the CPU in float32, without PyTorch; otherwise as models.join_processes says."""
    if all(saved.export is not None for saved in models):
        return 0, 1, "cpu", "float32"
    rank, world, device = join_processes(pick_device(device))
    return rank, world, device, pick_dtype(device, dtype)


def load_predictor(saved, *, device, dtype, image_longest_edge, image_splitting, quantize, runtime="onnxruntime"):
    """The predictor of a saved model (`saved`: its record, vlmcls.saved.open_classifier), carrying the record: an
    exported folder in `runtime` (a name in RUNTIMES; quantize=int8: int8 weights; device and dtype do not apply),
    any other model as objectives.load_for_inference loads it (device and dtype as picked, or by the names the
    scripts take; `runtime` does not apply)."""
    if saved.export is not None:
        return RUNTIMES[runtime](saved, quantize=quantize, image_longest_edge=image_longest_edge,
                                 image_splitting=image_splitting)
    device = pick_device(device)
    dtype = pick_dtype(device, dtype) if isinstance(dtype, str) else dtype
    processor, model = load_for_inference(saved, device=device, dtype=dtype, quantize=quantize,
                                          image_longest_edge=image_longest_edge, image_splitting=image_splitting)
    return TorchPredictor(model, processor, saved)
