"""The training objectives behind one interface (objectives/base.py): the registry, the objective of a model or of
a saved model, and loading a model with what its objective added. Training, prediction, validation, the app and
evaluation go through this module and never import an objective's own."""
from ..cli import OneOf
from ..models import check_quantizable, load_int8_model, load_model, load_processor, saved_classes, set_resolution
from . import answer, head
from .base import OPERATIONS, ranked

__all__ = ["OPERATIONS", "ranked", "REGISTRY", "UNRECORDED", "OBJECTIVES", "MODES", "named", "objective_of",
           "saved_objective", "prediction_mode", "reported_mode", "load_for_inference"]

# The objectives by name: a new objective is one module implementing OPERATIONS and one entry here.
REGISTRY = {objective.NAME: objective for objective in (answer, head)}
# a model recording no objective, or carrying no addition, was trained to write answers (not fine_tune.py's default)
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


def saved_objective(saved):
    """The objective a model's classes.json (`saved`, or None) records; the default where it records none (a
    model saved before objectives were recorded) or one not known."""
    return REGISTRY.get((saved or {}).get("objective", UNRECORDED), REGISTRY[UNRECORDED])


def prediction_mode(model, mode):
    """The mode to predict in when `mode` is asked of this model (its objective decides), or UserError."""
    return objective_of(model).prediction_mode(mode)


def reported_mode(model_path, mode):
    """The prediction mode a saved model is run in, as its reports record it: score mode of a model fine-tuned with
    another objective than the answer is that objective's own way of scoring."""
    return saved_objective(saved_classes(model_path)).SCORE_MODE if mode == "score" else mode


def load_for_inference(model_path, *, device, dtype, image_longest_edge, image_splitting, quantize):
    """Processor at the chosen resolution and model in eval mode on `device` (device and dtype as picked),
    quantised as asked, with what its objective saved beside it: how the evaluation scripts and the app load a
    model."""
    check_quantizable(quantize, device, dtype)
    processor = load_processor(model_path)
    set_resolution(processor, image_longest_edge, image_splitting)
    model = load_int8_model(model_path) if quantize == "int8" else load_model(model_path, dtype, device).eval()
    saved = saved_classes(model_path)
    return processor, saved_objective(saved).load(model_path, model, saved)
