"""Prediction with an exported model (export_model.py's folder) in ONNX Runtime, without PyTorch: the prompt and
pixels made with numpy as the PyTorch path makes them, one graph run per image, the same result dicts and the
same post-processing (vlmcls.calibration) as vlmcls.prediction. Its predictor has the PyTorch predictor's
interface (vlmcls/runtime.py)."""
from .calibration import calibrate
from .cli import UserError
from .inputs import TOKEN_KEYS, InputEncoder
from .models import load_processor, set_resolution
from .objectives.base import class_order, results_of
from .pixels import pixel_array
from .prompt import render_segments
from .saved import INT8_FILE, MODEL_FILE


class ArrayEncoder(InputEncoder):
    """vlmcls.inputs.InputEncoder with numpy arrays for tensors, kept in memory: the pixels by vlmcls.pixels where
    it handles the image (checked once per tile layout against the processor), else by the processor; the image
    tokens of each tile layout from the processor. Each file is encoded once."""

    def _pixels(self, image, size):
        values, rows, cols = pixel_array(self.processor.image_processor, image, self.arithmetic, size)
        return {"pixel_values": values}, rows, cols

    @staticmethod
    def _equal(a, b):
        import numpy as np
        return np.array_equal(a, b)

    def _processor_part(self, image, size):
        out = self.processor(images=[[image]], text=[self.processor.image_token], add_special_tokens=False,
                             return_tensors="np", **size)
        if any(key in out for key in TOKEN_KEYS):
            raise UserError(f"{type(self.processor).__name__}: per-token image values are not exported")
        return out["input_ids"][0].tolist(), {"pixel_values": out["pixel_values"]}, {}

    def example(self, image, segments):
        """(input_ids (1, tokens) int64, pixel_values) of one image (a path or a decoded image) and its prompt."""
        import numpy as np
        inputs = super().example(image, segments)
        return np.asarray([inputs["input_ids"]], dtype=np.int64), \
            np.asarray(inputs["tensors"]["pixel_values"], dtype=np.float32)


class OnnxPredictor:
    """An exported model (`saved`: its record, vlmcls.saved.open_classifier, which checked the folder against its
    manifest) in an ONNX Runtime session on the CPU: model.onnx, or with quantize=int8 model.int8.onnx, whose own
    record of its objective and classes must be export.json's; `threads` (0: onnxruntime's default, one per core)
    for its operators."""

    def __init__(self, saved, *, quantize="none", image_longest_edge=None, image_splitting=None, threads=0):
        file = saved.file(INT8_FILE if quantize == "int8" else MODEL_FILE)
        if not file.is_file():
            raise UserError(f"{saved.path}: no {file.name}" + (" (export with --quantize=int8 to get it)"
                                                               if quantize == "int8" else ""))
        self.saved, self.objective, self.classes = saved, saved.objective, saved.classes
        self.processor = load_processor(saved.path)
        set_resolution(self.processor, image_longest_edge, image_splitting)
        self.session, metadata = self.open(file, threads)
        saved.check_graph(file, metadata)

    def open(self, file, threads):
        """(the graph in an ONNX Runtime session on the CPU, with all of its graph optimisations (fusions and layout
        changes included); the graph's metadata_props)."""
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        return session, session.get_modelmeta().custom_metadata_map

    def encoder(self, max_pixels, enlarge=False):
        return ArrayEncoder(self.processor, max_pixels, enlarge=enlarge)

    def scores(self, input_ids, pixel_values):
        """The graph's (classes,) scores of one image's prompt, in the exported class order."""
        return self.session.run(None, {"input_ids": input_ids, "pixel_values": pixel_values})[0][0]

    def predict_batches(self, batches, question, classes, mode, max_pixels, *, enlarge=False, workers=0,
                        encoder=None, calibration=None):
        """vlmcls.prediction.predict_batches for the exported model: per batch (positions predicted, results,
        [(position, message)] of the files that cannot be used); each image is one run of the graph, prepared in
        this process (`workers` is not used). Calibrated, where given, as the PyTorch path calibrates."""
        if mode == "generate":
            raise UserError("an exported model classifies in score mode only (generate mode writes answers token by "
                            "token, which is not exported): use --prediction=score")
        order = class_order(self.classes, classes, "the exported model", "fixed at export",
                            "export the model again with these classes")
        encoder = encoder or self.encoder(max_pixels, enlarge)
        segments = render_segments(self.processor, [(question, None)])
        for images in batches:
            results, kept, problems = [], [], []
            for i, image in enumerate(images):
                try:
                    inputs = encoder.example(image, segments)
                except UserError as e:
                    problems.append((i, str(e)))
                    continue
                results += results_of([self.scores(*inputs).tolist()], classes, order,
                                      multi_label=self.saved.multi_label, thresholds=self.saved.thresholds)
                kept.append(i)
            yield kept, calibrate(results, classes, calibration), problems
