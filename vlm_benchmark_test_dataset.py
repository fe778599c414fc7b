"""Step 4: accuracy of a model on the held-out test images of TEST_JSON.

Prints the original's per-category lines and closing 'Total Correct' line, and writes report.json,
predictions.csv and confusion_matrix.png next to the model (or to REPORT_DIR). A multi-label TEST_JSON (a multi-label
model's) gets per-class precision, recall, F1 and AP, mAP, micro and macro F1, exact-set accuracy and Hamming loss,
and pr_curves.png instead of the confusion matrix (docs/evaluation.md).
"""
from vlmcls.cli import configure, run_main, settings_of
from vlmcls.evaluation import evaluate_models
from vlmcls.explain import EXPLAIN_METHODS
from vlmcls.images import read_dataset_json
from vlmcls.labels import label_text
from vlmcls.models import DEVICES, DTYPES, QUANTIZATIONS
from vlmcls.prediction import PREDICTIONS
from vlmcls.prediction_files import RESUMES
from vlmcls.runtime import RUNTIME_CHOICES
from vlmcls.saved import open_classifier

MODEL_PATH = "./SmolVLM-256M-Instruct-finetuned"  # model to evaluate: local folder, Hub id or exported folder (ONNX)
TEST_JSON = "solar_panel_test_dataset.json"  # from generate_train_json.py
PREDICTION = "score"  # "score": rank every class by likelihood; "generate": let the model write (the original)
BATCH_SIZE = 8  # images per forward pass
COMPARE_WITH = ""  # a second model evaluated on the same images, e.g. the base model
REPORT_DIR = ""  # where reports go; "" = <model>/reports/test_set
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


def main():
    data = read_dataset_json(TEST_JSON)
    samples = data["samples"]
    models = [open_classifier(path) for path in [MODEL_PATH] + ([COMPARE_WITH] if COMPARE_WITH else [])]
    multi_label = bool(data.get("multi_label"))  # each image's labels as a labels CSV writes them
    true = [label_text(s["labels"]) for s in samples] if multi_label else [s["label"] for s in samples]
    evaluate_models(models, [s["image"] for s in samples], true, data["classes"],
                    data["question"], mode=PREDICTION, batch_size=BATCH_SIZE, device=DEVICE, dtype=DTYPE,
                    image_longest_edge=IMAGE_LONGEST_EDGE, image_splitting=IMAGE_SPLITTING,
                    enlarge_images=ENLARGE_IMAGES, num_workers=NUM_WORKERS,
                    max_pixels=data["max_image_pixels"], report_dir=REPORT_DIR, report_name="test_set",
                    quantize=QUANTIZE, runtime=RUNTIME, class_bias=CLASS_BIAS, resume=RESUME,
                    min_confidence=MIN_CONFIDENCE, target_accuracy=TARGET_ACCURACY, confidence_level=CONFIDENCE_LEVEL,
                    explain=EXPLAIN, explain_method=EXPLAIN_METHOD, record=settings_of(globals()),
                    multi_label=multi_label)


if __name__ == "__main__":
    configure(globals(), choices={"PREDICTION": PREDICTIONS, "DEVICE": DEVICES, "DTYPE": DTYPES,
                                  "QUANTIZE": QUANTIZATIONS, "RUNTIME": RUNTIME_CHOICES, "RESUME": RESUMES,
                                  "EXPLAIN_METHOD": EXPLAIN_METHODS})
    run_main(main)
