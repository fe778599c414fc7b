"""Step 7: export a fine-tuned model for a machine without PyTorch: an ONNX graph from image and prompt to class
scores (either objective; the answer objective's class list fixed at export), optionally with int8 weights, and
what prediction needs beside it (processor files, classes.json with its class bias and temperature, export.json).

vlm_test.py, vlm_benchmark_test_dataset.py and vlm_app.py take the exported folder as --model_path and predict
with ONNX Runtime (--quantize=int8: with the int8 graph). See docs/deploy.md.
"""
from vlmcls.cli import configure, run_main, settings_of
from vlmcls.export import OPSET, calibration_images, describe, export_model
from vlmcls.models import QUANTIZATIONS
from vlmcls.saved import open_classifier

MODEL_PATH = "./SmolVLM-256M-Instruct-finetuned"  # the saved model folder to export (fine_tune.py's OUTPUT_DIR)
OUTPUT_DIR = "./SmolVLM-256M-Instruct-finetuned-onnx"  # the exported folder (an earlier export there is replaced)
QUANTIZE = "none"  # "int8": also model.int8.onnx, int8 weights (onnxruntime's dynamic quantisation); "none": fp32 only
# With QUANTIZE=int8, a data set JSON (generate_train_json.py's) whose images calibrate OpenVINO's int8 graph of int8
# weights and activations (--runtime=openvino --quantize=int8); "" = the training JSON fine_tune.py recorded
CALIBRATION_JSON = ""
CALIBRATION_IMAGES = 16  # images of CALIBRATION_JSON that calibrate it, taken from each class in turn
# images of CALIBRATION_JSON after the calibration images (taken the same way, never calibrating) on which the
# OpenVINO int8 graph must keep the float graph's top class, beside the synthetic 1- and 3-tile check images
CHECK_IMAGES = 8
CLASSES = []  # objective=answer: the classes the graph scores, fixed at export; [] = those saved with the model
IMAGE_LONGEST_EDGE = None  # None = the resolution saved with the model (the graph takes any; this sets the processor)
IMAGE_SPLITTING = None  # None = as saved with the model
OPSET_VERSION = OPSET  # ONNX opset of the graph


def main():
    saved = open_classifier(MODEL_PATH)
    record = export_model(saved, OUTPUT_DIR, classes=CLASSES, quantize=QUANTIZE,
                          image_longest_edge=IMAGE_LONGEST_EDGE, image_splitting=IMAGE_SPLITTING,
                          opset=OPSET_VERSION, record=settings_of(globals()),
                          calibration=calibration_images(saved, CALIBRATION_JSON, CALIBRATION_IMAGES, CHECK_IMAGES)
                          if QUANTIZE == "int8" else None)
    print(describe(record, OUTPUT_DIR))


if __name__ == "__main__":
    configure(globals(), choices={"QUANTIZE": QUANTIZATIONS})
    run_main(main)
