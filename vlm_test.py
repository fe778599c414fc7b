"""Step 5: accuracy of a model on every image under DATASET_DIR (one sub-folder per class).

Given a folder of unlabelled images, or one image, it writes predictions only. Evaluate the base
model and the fine-tuned one side by side with --compare_with.
"""
from pathlib import Path

from vlmcls.cli import UserError, configure, run_main, settings_of
from vlmcls.evaluation import evaluate_models
from vlmcls.explain import EXPLAIN_METHODS
from vlmcls.images import class_folders, list_files
from vlmcls.models import DEVICES, DTYPES, QUANTIZATIONS
from vlmcls.prediction import PREDICTIONS
from vlmcls.prediction_files import RESUMES
from vlmcls.runtime import RUNTIME_CHOICES
from vlmcls.saved import open_classifier

MODEL_PATH = "HuggingFaceTB/SmolVLM-256M-Instruct"  # model to evaluate: local folder, Hub id or exported folder (ONNX)
DATASET_DIR = "./Faulty_solar_panel"  # class folders, a folder of unlabelled images, or one image
PREDICTION = "score"  # "score": rank every class by likelihood; "generate": let the model write (the original)
BATCH_SIZE = 8  # images per forward pass
COMPARE_WITH = ""  # a second model evaluated on the same images, e.g. the fine-tuned one
REPORT_DIR = ""  # where reports go; "" = <model>/reports/full_dataset
CLASSES = []  # class names for unlabelled images; [] = those saved with the model
MAX_IMAGE_PIXELS = 40_000_000  # larger images are skipped (decompression bombs)
IMAGE_LONGEST_EDGE = None  # None = the resolution saved with the model
IMAGE_SPLITTING = None  # None = as saved with the model
ENLARGE_IMAGES = False  # resize smaller images up to the longest edge, as the processor does (the original)
NUM_WORKERS = -1  # processes preparing the next images while the model runs; -1: one per CPU core (shared under torchrun), at least 1
DEVICE = "auto"  # auto, cuda, mps or cpu
DTYPE = "auto"  # auto (bf16/fp16 on CUDA, fp32 elsewhere), float32, bfloat16 or float16
QUANTIZE = "none"  # "int8": int8 weights in the linear layers, faster on the CPU (CPU only; exported: model.int8.onnx)
RUNTIME = "onnxruntime"  # an exported model's runtime: onnxruntime, or openvino (faster on the CPU: docs/deploy.md)
CLASS_BIAS = True  # score mode: add the class bias fine_tune.py chose on the validation images (False: raw scores)
MIN_CONFIDENCE = 0.0  # a prediction whose top probability is below this is "uncertain" (0 = never; docs/calibration.md)
TARGET_ACCURACY = 0.0  # instead: the threshold certified to keep this accuracy on new images (0 = not used)
CONFIDENCE_LEVEL = 0.9  # how sure TARGET_ACCURACY's certificate is: the target holds with this probability
RESUME = "auto"  # "auto": continue an interrupted run in REPORT_DIR (same settings only); "overwrite": predict afresh
EXPLAIN = False  # heatmaps of the evidence for each best guess: explanations/, 2 columns of predictions.csv (PyTorch)
EXPLAIN_METHOD = "gradcam"  # gradcam (2.3 forward passes an image); occlusion (17, sharper); guided_gradcam (4.6)


def labelled_images():
    """(paths, labels, classes) of a class-folder data set, or (paths, None, None) for unlabelled images."""
    root = Path(DATASET_DIR)
    if root.is_file():
        return [root], None, None
    if root.is_dir() and not any(p.is_dir() for p in root.iterdir()):
        return list_files(root), None, None
    folders = class_folders(root)
    labels = {p: f.name for f in folders for p in list_files(f)}
    return sorted(labels), labels, [f.name for f in folders]


def classes_and_question(saved, classes):
    """Class names and question: those of the class folders, else for unlabelled images CLASSES, or those saved
    with the model (`saved`: its record) and its question."""
    found = saved.classes_and_question(classes or CLASSES)
    if not found:
        raise UserError("unlabelled images: give the class names with --classes='[\"a\", \"b\"]' "
                        f"(no classes.json saved with {MODEL_PATH})")
    return found


def main():
    paths, labels, classes = labelled_images()
    if not paths:
        raise UserError(f"{DATASET_DIR}: no files")
    models = [open_classifier(path) for path in [MODEL_PATH] + ([COMPARE_WITH] if COMPARE_WITH else [])]
    classes, question = classes_and_question(models[0], classes)
    evaluate_models(models, paths,
                    [labels[p] for p in paths] if labels else None, classes, question,
                    mode=PREDICTION, batch_size=BATCH_SIZE, device=DEVICE, dtype=DTYPE,
                    image_longest_edge=IMAGE_LONGEST_EDGE, image_splitting=IMAGE_SPLITTING,
                    enlarge_images=ENLARGE_IMAGES, num_workers=NUM_WORKERS,
                    max_pixels=MAX_IMAGE_PIXELS, report_dir=REPORT_DIR, quantize=QUANTIZE, runtime=RUNTIME,
                    class_bias=CLASS_BIAS,
                    resume=RESUME, min_confidence=MIN_CONFIDENCE, target_accuracy=TARGET_ACCURACY,
                    confidence_level=CONFIDENCE_LEVEL,
                    report_name="full_dataset" if labels else "predictions",
                    explain=EXPLAIN, explain_method=EXPLAIN_METHOD, record=settings_of(globals()))


if __name__ == "__main__":
    configure(globals(), choices={"PREDICTION": PREDICTIONS, "DEVICE": DEVICES, "DTYPE": DTYPES,
                                  "QUANTIZE": QUANTIZATIONS, "RUNTIME": RUNTIME_CHOICES, "RESUME": RESUMES,
                                  "EXPLAIN_METHOD": EXPLAIN_METHODS})
    run_main(main)
