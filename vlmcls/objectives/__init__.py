"""The training objectives behind one interface (objectives/base.py): the registry, the objective of a model, and
loading a saved model (vlmcls/saved.py's record) with what its objective added. Training, prediction, validation,
the app and evaluation go through this module and never import an objective's own."""
from ..cli import OneOf
from ..models import check_quantizable, load_int8_model, load_model, load_processor, set_resolution
from . import answer, head
from .base import OPERATIONS, ranked, softmax

__all__ = ["OPERATIONS", "ranked", "softmax", "REGISTRY", "UNRECORDED", "OBJECTIVES", "MODES", "named", "objective_of",
           "prediction_mode", "load_for_inference"]

# The objectives by name: a new objective is one module implementing OPERATIONS and one entry here.
REGISTRY = {objective.NAME: objective for objective in (answer, head)}
# a model recording no objective and carrying no objective's file (FILES) was trained to write answers (it was saved
# before objectives were recorded; not fine_tune.py's default)
UNRECORDED = "answer"
OBJECTIVES = OneOf(*REGISTRY)  # the values of fine_tune.py's OBJECTIVE
# Every prediction mode, by name, with the function that classifies a batch in it.
MODES = {mode: predict for objective in REGISTRY.values() for mode, predict in objective.MODES.items()}


def named(name):
    """The objective module of fine_tune.py's OBJECTIVE."""
    return REGISTRY[name]


def objective_of(model):
    """The objective of a loaded or training model: the one whose addition it carries, else the default."""
    return next((o for o in REGISTRY.values() if o.carries(model)), REGISTRY[UNRECORDED])


def prediction_mode(model, mode):
    """The mode to predict in when `mode` is asked of this model (its objective decides), or UserError."""
    return objective_of(model).prediction_mode(mode)


def load_for_inference(saved, *, device, dtype, image_longest_edge, image_splitting, quantize):
    """Processor at the chosen resolution and model in eval mode on `device` (device and dtype as picked),
    quantised as asked, with what its objective saved beside it: how the evaluation scripts, the app and the export
    load a model. `saved`: the model's record (vlmcls.saved.open_classifier)."""
    check_quantizable(quantize, device, dtype)
    processor = load_processor(saved.path)
    set_resolution(processor, image_longest_edge, image_splitting)
    model = load_int8_model(saved.path) if quantize == "int8" else load_model(saved.path, dtype, device).eval()
    return processor, saved.objective.load(saved.path, model, saved)
