"""Step 6: try the classifier in the browser, on one image or several, or call it as an API.

Starts a Gradio page at http://HOST:PORT: drop, paste or pick images and see every class with its
probability (score mode, as vlm_test.py computes it), the top class first, and each image as the model
sees it after resizing; the switch "Show where it looked" (off at first) adds beside each image the evidence for
its best guess (docs/explain.md). A multi-label model's page shows each class's own probability (sigmoid) with its
threshold, the labels at or above theirs marked present. The test images are examples one click away. Programs call
the endpoints, e.g. with gradio_client: /predict (one image in, the top class and every class's confidence out, in
Gradio's label format; multi-label: the labels predicted and the thresholds too), /classify (the page's: several
images and other class names) or /explain (one image's evidence).
"""
from vlmcls.app import build_page, example_images, serve
from vlmcls.cli import configure, run_main
from vlmcls.evaluation import check_multi_label
from vlmcls.models import DEVICES, DTYPES, QUANTIZATIONS
from vlmcls.runtime import RUNTIME_CHOICES, load_predictor
from vlmcls.saved import open_classifier

MODEL_PATH = "./SmolVLM-256M-Instruct-finetuned"  # model to serve: local folder, Hub id or exported folder (ONNX)
HOST = "127.0.0.1"  # address to listen on; "0.0.0.0" lets other machines open the page
PORT = 7860  # port of the page
CLASSES = []  # class names; [] = those saved with the model (the page asks when there are none)
TEST_JSON = ""  # its images become examples; "" = the test JSON fine_tune.py recorded, if it is still there
EXAMPLES = 12  # at most this many example images, taken from each class in turn
BATCH_SIZE = 8  # images per forward pass
MAX_IMAGE_PIXELS = 40_000_000  # larger images are refused (decompression bombs)
MAX_FILE_MB = 20  # larger uploads are refused
IMAGE_LONGEST_EDGE = None  # None = the resolution saved with the model
IMAGE_SPLITTING = None  # None = as saved with the model
DEVICE = "auto"  # auto, cuda, mps or cpu
DTYPE = "auto"  # auto (bf16/fp16 on CUDA, fp32 elsewhere), float32, bfloat16 or float16
QUANTIZE = "none"  # "int8": int8 weights in the linear layers, faster on the CPU (CPU only; exported: model.int8.onnx)
RUNTIME = "onnxruntime"  # an exported model's runtime: onnxruntime, or openvino (faster on the CPU: docs/deploy.md)
CLASS_BIAS = True  # add the class bias fine_tune.py chose on the validation images to the scores (False: raw scores)
MIN_CONFIDENCE = 0.0  # a prediction whose top probability is below this is "uncertain" (0 = never; docs/calibration.md)
TARGET_ACCURACY = 0.0  # instead: the threshold certified to keep this accuracy on new images (0 = not used)
CONFIDENCE_LEVEL = 0.9  # how sure TARGET_ACCURACY's certificate is: the target holds with this probability


def main():
    saved = open_classifier(MODEL_PATH)
    check_multi_label([saved], None, False, MIN_CONFIDENCE, TARGET_ACCURACY, False)  # settings it takes
    predictor = load_predictor(saved, device=DEVICE, dtype=DTYPE, quantize=QUANTIZE,
                               runtime=RUNTIME, image_longest_edge=IMAGE_LONGEST_EDGE, image_splitting=IMAGE_SPLITTING)
    examples = example_images(MODEL_PATH, TEST_JSON, EXAMPLES)
    page = build_page(predictor, classes=CLASSES, examples=examples,
                      batch_size=BATCH_SIZE, max_pixels=MAX_IMAGE_PIXELS, quantize=QUANTIZE,
                      class_bias=CLASS_BIAS, min_confidence=MIN_CONFIDENCE, target_accuracy=TARGET_ACCURACY,
                      confidence_level=CONFIDENCE_LEVEL)
    serve(page, host=HOST, port=PORT, max_file_mb=MAX_FILE_MB, examples=examples)


if __name__ == "__main__":
    configure(globals(), choices={"DEVICE": DEVICES, "DTYPE": DTYPES, "QUANTIZE": QUANTIZATIONS,
                                  "RUNTIME": RUNTIME_CHOICES})
    run_main(main)
