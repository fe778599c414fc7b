"""What the seven scripts share, in layers (docs/package.md; tests/test_layers.py checks them): cli, files and
compat; images, labels, prompt, pixels, augment, inputs, report, confidence, multi_label and label_issues; models and
vision_cache; objectives (answer, head) and saved (the record of a saved or exported classifier); prediction,
calibration, validation, training, onnx_runtime, openvino_runtime, runtime and explain; prediction_files, evaluation,
app and export."""
