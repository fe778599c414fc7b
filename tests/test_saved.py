"""vlmcls.saved: a model folder read once into one validated record, and the objectives it refuses. (An exported
folder's record and its checks are tested with the export, in test_export.py.)"""
import json

import pytest

from vlmcls.cli import UserError
from vlmcls.prompt import classification_question
from vlmcls.saved import open_classifier

CLASSES = ["red", "green", "blue"]
QUESTION = classification_question(CLASSES)


def model_folder(folder, classes_json=None, head=False):
    """A model folder's files that the record reads: classes.json (`classes_json`, or none) and, with `head`,
    the head's weights file (its contents are not read here)."""
    folder.mkdir(parents=True, exist_ok=True)
    if classes_json is not None:
        (folder / "classes.json").write_text(classes_json if isinstance(classes_json, str) else
                                             json.dumps(classes_json))
    if head:
        (folder / "classifier.safetensors").write_bytes(b"weights")
    return folder


def test_a_model_folder_is_read_into_one_record(tmp_path):
    saved = {"classes": CLASSES, "question": QUESTION, "objective": "head", "max_image_pixels": 10,
             "class_bias": {"strength": 1.0, "bias": dict.fromkeys(CLASSES, 0.5)}, "temperature": {"value": 2.0},
             "validation_confidences": [[0.9, True]], "training_images": {"pixel_sha256": ["ab" * 32]}}
    record = open_classifier(model_folder(tmp_path / "m", saved, head=True))
    assert record.objective.NAME == "head" and record.classes == CLASSES and record.question == QUESTION
    assert record.classes_json == saved and record.export is None  # every entry, the unknown ones too
    assert (record.class_bias, record.temperature, record.validation_confidences) == \
        (saved["class_bias"], {"value": 2.0}, [[0.9, True]])
    assert record.reported_mode("score") == "head" and record.reported_mode("generate") == "generate"
    assert record.classes_and_question([]) == (CLASSES, QUESTION)
    assert record.classes_and_question(["a", "b"]) == (["a", "b"], classification_question(["a", "b"]))


def test_a_model_saved_before_objectives_were_recorded_is_an_answer_model(tmp_path):
    record = open_classifier(model_folder(tmp_path / "old", {"classes": CLASSES, "question": QUESTION}))
    assert record.objective.NAME == "answer" and record.reported_mode("score") == "score"
    hub = open_classifier("HuggingFaceTB/SmolVLM-256M-Instruct")  # nothing saved: an answer model without classes
    assert hub.objective.NAME == "answer" and hub.classes is None and hub.classes_json == {}
    assert hub.classes_and_question([]) is None


@pytest.mark.parametrize("classes_json, head, message", [
    ({"classes": CLASSES, "question": QUESTION, "objective": "bogus"}, False,
     r"m/classes.json: objective 'bogus' is not one of answer, head"),
    ({"classes": CLASSES, "question": QUESTION}, True,
     r"m/classifier.safetensors: the objective head's file, but classes.json records no objective"),
    (None, True, r"m/classifier.safetensors: the objective head's file"),
    ('{"classes": ["red", "gr', False, r"m/classes.json: cannot be read as JSON"),
    ({"classes": ["red", "red"], "question": QUESTION}, False, r"m/classes.json: \"classes\" must be a list"),
    ({"classes": CLASSES, "objective": "answer", "training_images": ["ab" * 32]}, False,
     r"m/classes.json: \"training_images\" must be"),
    ({"classes": CLASSES, "objective": "answer", "training_images": {"pixel_sha256": ["not a digest"]}}, False,
     r"m/classes.json: \"training_images\" must be"),
])
def test_an_unknown_or_unrecorded_objective_or_a_broken_file_is_refused_naming_it(classes_json, head, message,
                                                                                 tmp_path):
    """Never run as another objective: today's saved_objective ran both the unknown objective and the head model
    recording none as answer models."""
    with pytest.raises(UserError, match=message):
        open_classifier(model_folder(tmp_path / "m", classes_json, head))
