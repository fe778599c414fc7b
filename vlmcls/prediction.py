"""Prediction: a class for each image of a list, in batches prepared while the model runs, in the mode that the
model's objective classifies in (objectives.MODES), calibrated (class bias, temperature, uncertain) where given."""
from .calibration import calibrate
from .cli import OneOf, UserError
from .inputs import InputEncoder, PromptBatches
from .objectives import MODES, objective_of, prediction_mode

PREDICTIONS = OneOf(*MODES)  # the values of the evaluation scripts' PREDICTION


def predict_batches(model, processor, batches, question, classes, mode, max_pixels, *, enlarge=False, workers=0,
                    encoder=None, calibration=None):
    """Predict each batch of images (file paths, or decoded images), the next batches prepared by `workers` processes
    while the model runs, or taken from `encoder`'s cache; each image is checked as it is prepared. With
    `calibration` (calibration.load_calibration's), score mode's results are calibrated by it. Yields, per batch,
    (positions in the batch of the images predicted, one result dict each: answer, predicted class, class
    probabilities; [(position, message)] of the files that cannot be used)."""
    from torch.utils.data import DataLoader
    if mode not in MODES:
        raise UserError(f"prediction mode {mode!r}: use {' or '.join(MODES)}")
    predict = MODES[prediction_mode(model, mode)]
    loader = DataLoader(batches, batch_size=None, num_workers=workers if len(batches) > 1 else 0,
                        collate_fn=PromptBatches(processor, question, max_pixels, enlarge, encoder).checked)
    for batch, kept, problems in loader:
        results = predict(model, processor, batch, question, classes) if batch is not None else []
        yield kept, calibrate(results, classes, calibration), problems


class TorchPredictor:
    """A loaded PyTorch model and its processor behind the predictor interface (vlmcls/runtime.py): its record
    (`saved`, where it was loaded from one), its objective, its processor, an encoder keeping each image's inputs,
    and predict_batches."""

    def __init__(self, model, processor, saved=None):
        self.model, self.processor, self.saved = model, processor, saved
        self.objective = objective_of(model)

    def encoder(self, max_pixels, enlarge=False):
        return InputEncoder(self.processor, max_pixels, enlarge=enlarge)

    def predict_batches(self, batches, question, classes, mode, max_pixels, **settings):
        return predict_batches(self.model, self.processor, batches, question, classes, mode, max_pixels, **settings)


def in_batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def evaluate(model, processor, images, question, classes, mode, batch_size, max_pixels, **settings):
    """predict_batches over every image, in batches of `batch_size`; a file that cannot be used stops it with its
    name and reason. Returns one result dict per image."""
    return evaluate_with(TorchPredictor(model, processor), images, question, classes, mode, batch_size, max_pixels,
                         **settings)


def evaluate_with(predictor, images, question, classes, mode, batch_size, max_pixels, *, enlarge=False, workers=0,
                  encoder=None, calibration=None, desc="evaluating"):
    """evaluate() with any predictor (vlmcls/runtime.py): PyTorch's or ONNX Runtime's."""
    from tqdm import tqdm
    results = []
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for _, batch_results, problems in predictor.predict_batches(
                in_batches(list(images), batch_size), question, classes, mode, max_pixels,
                enlarge=enlarge, workers=workers, encoder=encoder, calibration=calibration):
            if problems:
                raise UserError(problems[0][1])
            results += batch_results
            bar.update(len(batch_results))
    return results
