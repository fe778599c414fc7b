"""The one validated record of a saved or exported classifier: a model folder (classes.json, and what its objective
saved beside the model) or a folder export_model.py wrote (export.json with its manifest, the graphs, classes.json),
read once and checked, then carried by whatever predicts with it, calibrates it or exports it.

A model folder records its objective in classes.json; one saved before objectives were recorded and carrying no
objective's file is an answer model. An objective this version does not know, or an objective's file (a head's
weights) with no objective recorded, is refused: a model is never run as another objective than it was trained
with. An exported folder is checked against its manifest (export.json: the SHA-256 of every other file) and its
graph against the classes and objective the graph itself records (ONNX metadata_props)."""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .cli import UserError
from .label_issues import TRAINING_IMAGES
from .objectives import REGISTRY, UNRECORDED
from .prompt import classification_question

CLASSES_FILE = "classes.json"  # what fine_tune.py saves with a model: classes, question, objective, calibration
EXPORT_FILE = "export.json"  # what export_model.py exported: its presence makes a folder an exported model
MODEL_FILE = "model.onnx"  # the float32 graph
INT8_FILE = "model.int8.onnx"  # the graph with int8 weights (export_model.py --quantize=int8)
OPENVINO_INT8_FILE = "model.openvino-int8.xml"  # OpenVINO's graph with int8 weights and activations (its .bin beside)
EXPORT_FORMAT = 2  # export.json's "format": 2 has the manifest and a graph recording its classes and objective
GRAPH_KEYS = {"objective": "vlmcls.objective", "classes": "vlmcls.classes"}  # the graph's metadata_props keys


def is_exported(model_path):
    """Whether a model path is a folder export_model.py wrote."""
    return (Path(model_path) / EXPORT_FILE).is_file()


def sha256(file):
    """The SHA-256 of a file's bytes, as hex."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def manifest(folder, leave_out=(EXPORT_FILE,)):
    """{path relative to `folder`: SHA-256} of every file under it but those named in `leave_out`."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in leave_out}


def graph_metadata(objective, classes):
    """The graph's metadata_props: the objective's name and the classes of its outputs, in their order."""
    return {GRAPH_KEYS["objective"]: objective, GRAPH_KEYS["classes"]: json.dumps(list(classes))}


@dataclass(frozen=True)
class SavedClassifier:
    """A saved or exported classifier as open_classifier read and checked it."""
    path: str  # as given: a model folder, a Hub id, or an exported folder
    objective: object  # the objective module (objectives.REGISTRY) it was trained with
    classes: list | None  # the classes saved (exported) with it, in the order of its outputs; None: none saved
    question: str | None  # the question it was trained on, asked word for word
    classes_json: dict  # classes.json whole ({} where there is none): calibration, training-image hashes, ...
    export: dict | None = None  # an exported folder's export.json (with its "manifest"); None for a model folder

    def file(self, name):
        return Path(self.path) / name

    @property
    def class_bias(self):
        return self.classes_json.get("class_bias")

    @property
    def temperature(self):
        return self.classes_json.get("temperature")

    @property
    def validation_confidences(self):
        return self.classes_json.get("validation_confidences")

    @property
    def multi_label(self):
        """Whether it was trained on multi-label data: one independent probability per class."""
        return bool(self.classes_json.get("multi_label"))

    @property
    def thresholds(self):
        """A multi-label model's {class: threshold} (a label is predicted at or above it); None for another."""
        return self.classes_json.get("thresholds") if self.multi_label else None

    def refuse_multi_label(self, what):
        """UserError naming the model folder where it is multi-label and `what` (words) does not take one yet."""
        if self.multi_label:
            raise UserError(f"{self.path}: a multi-label model, which {what} does not take yet (issue 44)")

    def classes_and_question(self, classes):
        """`classes` with the classification question, else the classes saved with the model and the question it
        was trained on (asked word for word, it answers as it learned to); None when there are neither."""
        if classes:
            return list(classes), classification_question(classes)
        return (list(self.classes), self.question) if self.classes else None

    def reported_mode(self, mode):
        """The prediction mode it runs in, as its reports record it: score mode of a model fine-tuned with another
        objective than the answer is that objective's own way of scoring."""
        return self.objective.SCORE_MODE if mode == "score" else mode

    def check_graph(self, file, metadata):
        """UserError naming export.json where the graph `file` (its metadata_props, `metadata`) records another
        objective or other classes, or another order of them, than export.json says."""
        recorded = {"objective": metadata.get(GRAPH_KEYS["objective"]), "classes": metadata.get(GRAPH_KEYS["classes"])}
        said = {"objective": self.objective.NAME, "classes": json.dumps(self.classes)}
        for key, value in recorded.items():
            if value != said[key]:
                raise UserError(f"{self.file(EXPORT_FILE)}: its {key} {said[key]} is not what {Path(file).name} "
                                f"records ({value}); export the model again")


def read_json(file):
    """A JSON object from a file, or UserError naming the file."""
    try:
        found = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: cannot be read as JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(found, dict):
        raise UserError(f"{file}: not a JSON object")
    return found


def registered(name, file):
    """The objective module named `name`, or UserError naming the file that records it."""
    if name not in REGISTRY:
        raise UserError(f"{file}: objective {name!r} is not one of {', '.join(REGISTRY)}; a model is never run as "
                        "another objective than it was trained with")
    return REGISTRY[name]


def checked_classes(found, file):
    """(classes, question) of a classes.json or export.json (`found`), or UserError naming the file; a file
    written by hand without the question gets the classification question of its classes."""
    classes = found.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        raise UserError(f"{file}: \"classes\" must be a list of distinct class names, not {classes!r}")
    question = found.get("question", classification_question(classes))
    if not isinstance(question, str):
        raise UserError(f"{file}: \"question\" must be a string, not {question!r}")
    return classes, question


def check_training_images(found, file):
    """UserError naming the file where its record of the training images (label_issues.TRAINING_IMAGES) is not a
    list of SHA-256 hex digests: the label audit would otherwise leave out the wrong images, or none."""
    record = found.get(TRAINING_IMAGES)
    digests = record.get("pixel_sha256") if isinstance(record, dict) else None
    if record is not None and not (isinstance(digests, list) and all(
            isinstance(d, str) and len(d) == 64 and set(d) <= set("0123456789abcdef") for d in digests)):
        raise UserError(f"{file}: \"{TRAINING_IMAGES}\" must be {{\"pixel_sha256\": [SHA-256 hex digests]}}, as "
                        "fine_tune.py writes it; remove the entry to audit every image")


def check_multi_label(found, classes, file):
    """UserError naming the file where its multi-label record is not "multi_label": true with a threshold in [0, 1]
    for each of its classes, as fine_tune.py writes it."""
    if "multi_label" not in found:
        return
    thresholds = found.get("thresholds")
    if found["multi_label"] is not True or not isinstance(thresholds, dict) or set(thresholds) != set(classes or ()) \
            or not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds.values()):
        raise UserError(f"{file}: \"multi_label\" must be true with \"thresholds\" {{class: a number in [0, 1]}} "
                        f"for each of its classes, as fine_tune.py writes them, not {found['multi_label']!r} and "
                        f"{thresholds!r}")


def open_model_folder(model_path):
    folder = Path(model_path)
    file = folder / CLASSES_FILE
    found = read_json(file) if file.is_file() else {}
    name = found.get("objective")
    if name is None:  # saved before objectives were recorded: an answer model, unless it carries an addition
        carried = [(o.NAME, f) for o in REGISTRY.values() for f in o.FILES if (folder / f).is_file()]
        if carried:
            raise UserError(f"{folder / carried[0][1]}: the objective {carried[0][0]}'s file, but "
                            f"{CLASSES_FILE} records no objective: add \"objective\": \"{carried[0][0]}\" to it")
        name = UNRECORDED
    objective = registered(name, file)
    classes, question = checked_classes(found, file) if found else (None, None)
    check_training_images(found, file)
    check_multi_label(found, classes, file)
    return SavedClassifier(str(model_path), objective, classes, question, found)


def open_exported(model_path):
    folder = Path(model_path)
    record = read_json(folder / EXPORT_FILE)
    if record.get("format") != EXPORT_FORMAT or not isinstance(record.get("manifest"), dict):
        raise UserError(f"{folder / EXPORT_FILE}: no manifest of the folder's files (format "
                        f"{record.get('format')!r}, not {EXPORT_FORMAT}); export the model again")
    for name, digest in record["manifest"].items():
        if not (folder / name).is_file():
            raise UserError(f"{folder / name}: missing (export.json's manifest lists it); copy the whole folder")
        if sha256(folder / name) != digest:
            raise UserError(f"{folder / name}: changed since export (its SHA-256 is not export.json's); export the "
                            "model again, or copy the folder as it was written")
    objective = registered(record.get("objective"), folder / EXPORT_FILE)
    classes, question = checked_classes(record, folder / EXPORT_FILE)
    found = read_json(folder / CLASSES_FILE) if (folder / CLASSES_FILE).is_file() else {}
    check_training_images(found, folder / CLASSES_FILE)
    check_multi_label(found, classes, folder / CLASSES_FILE)
    return SavedClassifier(str(model_path), objective, classes, question, found, record)


def open_classifier(model_path):
    """The record of a model path: an exported folder (export.json), a model folder, or a Hub id (nothing saved:
    an answer model without classes); UserError naming the file where it cannot be trusted."""
    return open_exported(model_path) if is_exported(model_path) else open_model_folder(model_path)
