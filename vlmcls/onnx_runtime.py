"""Prediction with an exported model (export_model.py's folder) in ONNX Runtime, without PyTorch: the prompt and
pixels made with numpy as the PyTorch path makes them, one graph run per image, the same result dicts and the
same post-processing (vlmcls.calibration) as vlmcls.prediction. Its predictor has the PyTorch predictor's
interface (vlmcls/runtime.py)."""
import json
from pathlib import Path

from .calibration import calibrate
from .cli import UserError
from .images import load_image
from .inputs import TOKEN_KEYS, longest_edge_for
from .models import load_processor, set_resolution
from .objectives import REGISTRY, ranked
from .pixels import arithmetic, handles, pixel_array
from .prompt import render_segments

EXPORT_FILE = "export.json"  # what export_model.py exported: its presence makes a folder an exported model
MODEL_FILE = "model.onnx"  # the float32 graph
INT8_FILE = "model.int8.onnx"  # the graph with int8 weights (export_model.py --quantize=int8)


def is_exported(model_path):
    """Whether a model path is a folder export_model.py wrote."""
    return (Path(model_path) / EXPORT_FILE).is_file()


class ArrayEncoder:
    """One image's prompt as numpy arrays, equal to vlmcls.inputs.InputEncoder's tensors: the pixels by
    vlmcls.pixels where it handles the image (checked once per tile layout against the processor), else by the
    processor; the image tokens of each tile layout from the processor. Each file is encoded once."""

    def __init__(self, processor, max_pixels, enlarge=False):
        self.processor, self.max_pixels, self.enlarge = processor, max_pixels, enlarge
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.arithmetic, self.layouts, self.memory, self.texts = None, {}, {}, {}

    def _processor_part(self, image, size):
        out = self.processor(images=[[image]], text=[self.processor.image_token], add_special_tokens=False,
                             return_tensors="np", **size)
        if any(key in out for key in TOKEN_KEYS):
            raise UserError(f"{type(self.processor).__name__}: per-token image values are not exported")
        return out["input_ids"][0].tolist(), {"pixel_values": out["pixel_values"]}

    def encode_image(self, image):
        """(image token ids, {"pixel_values": array}, {}) of a decoded image, as InputEncoder.encode_image."""
        import numpy as np
        image_processor = self.processor.image_processor
        size = longest_edge_for(image_processor, image, self.enlarge)
        fast = handles(image_processor, image)
        if fast and self.arithmetic is None:
            self.arithmetic = arithmetic(image_processor) or False
        if not (fast and self.arithmetic):
            return (*self._processor_part(image, size), {})
        values, rows, cols = pixel_array(image_processor, image, self.arithmetic, size.get("size"))
        if (rows, cols) not in self.layouts:
            ids, expected = self._processor_part(image, size)
            if not np.array_equal(expected["pixel_values"], values):
                self.arithmetic = False
                return ids, expected, {}
            self.layouts[rows, cols] = ids
        return self.layouts[rows, cols], {"pixel_values": values}, {}

    def image_part(self, path):
        key = str(path)
        if key not in self.memory:
            self.memory[key] = self.encode_image(load_image(path, self.max_pixels))
        return self.memory[key]

    def example(self, image, segments):
        """(input_ids (1, tokens) int64, pixel_values) of one image (a path or a decoded image) and its prompt."""
        import numpy as np
        image_ids, tensors, _ = self.image_part(image) if isinstance(image, (str, Path)) \
            else self.encode_image(image)
        ids = []
        for text, _ in segments:
            if text not in self.texts:
                self.texts[text] = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            piece = self.texts[text]
            if self.image_token_id in piece:
                at = piece.index(self.image_token_id)
                piece = piece[:at] + image_ids + piece[at + 1:]
            ids += piece
        return np.asarray([ids], dtype=np.int64), np.asarray(tensors["pixel_values"], dtype=np.float32)


def softmax(scores):
    import numpy as np
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.exp(scores - scores.max())
    return (weights / weights.sum()).tolist()


class OnnxPredictor:
    """An exported model in an ONNX Runtime session on the CPU: model.onnx, or with quantize=int8 model.int8.onnx;
    `threads` (0: onnxruntime's default, one per core) for its operators."""

    def __init__(self, folder, *, quantize="none", image_longest_edge=None, image_splitting=None, threads=0):
        import onnxruntime
        folder = Path(folder)
        self.record = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))
        file = folder / (INT8_FILE if quantize == "int8" else MODEL_FILE)
        if not file.is_file():
            raise UserError(f"{folder}: no {file.name}" + (" (export with --quantize=int8 to get it)"
                                                           if quantize == "int8" else ""))
        self.processor = load_processor(str(folder))
        set_resolution(self.processor, image_longest_edge, image_splitting)
        self.objective = REGISTRY[self.record["objective"]]
        self.classes = self.record["classes"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

    def encoder(self, max_pixels, enlarge=False):
        return ArrayEncoder(self.processor, max_pixels, enlarge)

    def scores(self, input_ids, pixel_values):
        """The graph's (classes,) scores of one image's prompt, in the exported class order."""
        return self.session.run(None, {"input_ids": input_ids, "pixel_values": pixel_values})[0][0]

    def class_order(self, classes):
        """Where each of `classes` is among the exported classes; UserError where they are other classes."""
        if sorted(classes) != sorted(self.classes):
            raise UserError(f"the exported model scores {', '.join(self.classes)} (fixed at export), not "
                            f"{', '.join(classes)}: export the model again with these classes")
        return [self.classes.index(name) for name in classes]

    def predict_batches(self, batches, question, classes, mode, max_pixels, *, enlarge=False, workers=0,
                        encoder=None, calibration=None):
        """vlmcls.prediction.predict_batches for the exported model: per batch (positions predicted, results,
        [(position, message)] of the files that cannot be used); each image is one run of the graph, prepared in
        this process (`workers` is not used). Calibrated, where given, as the PyTorch path calibrates."""
        if mode == "generate":
            raise UserError("an exported model classifies in score mode only (generate mode writes answers token by "
                            "token, which is not exported): use --prediction=score")
        order = self.class_order(classes)
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
                scores = self.scores(*inputs)
                results.append(ranked(classes, softmax([scores[j] for j in order])))
                kept.append(i)
            yield kept, calibrate(results, classes, calibration), problems
