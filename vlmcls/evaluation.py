"""Evaluation runs: each model over the same images, with its reports and a side-by-side comparison."""
import re
from pathlib import Path

from .calibration import saved_class_bias
from .compat import library_versions
from .files import write_csv
from .inputs import auto_workers
from .models import load_for_inference, pick_device, pick_dtype
from .prediction import evaluate
from .report import PREDICTION_HEADER, prediction_rows, print_accuracy, print_comparison, write_report


def default_report_dir(model_path, name):
    """Reports go next to a local model, or under ./reports/ for a Hub id."""
    if Path(model_path).is_dir():
        return Path(model_path) / "reports" / name
    return Path("reports") / re.sub(r"[^\w.-]+", "_", model_path) / name


def evaluate_models(model_paths, paths, true, classes, question, *, mode, batch_size, device, dtype,
                    image_longest_edge, image_splitting, enlarge_images, num_workers, max_pixels, report_dir,
                    report_name, quantize="none", class_bias=True, record=None):
    """Evaluate each model on the same images, print the original's lines for each and, for two or more,
    a side-by-side table. With labels, writes report.json, predictions.csv and confusion_matrix.png;
    without, predictions.csv only; report.json also records `record` (the script's settings) and the library
    versions. `quantize` ("none" or "int8") applies to every model; with `class_bias`, score mode adds the class
    bias saved with a model. Returns each model's metrics (None without labels)."""
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    outcomes = []
    for model_path in model_paths:
        int8 = ", int8" if quantize == "int8" else ""
        print(f"\n=== {model_path} ({len(paths)} images, {mode} mode, {device}{int8}) ===\nquestion: {question}")
        processor, model = load_for_inference(model_path, device=device, dtype=dtype, quantize=quantize,
                                              image_longest_edge=image_longest_edge, image_splitting=image_splitting)
        bias = saved_class_bias(model_path, classes) if class_bias and mode in ("score", "head") else None
        if bias:
            print(f"class bias of strength {bias['strength']:.1f}, chosen on the validation images, added to the "
                  "scores (class_bias=false: without)")
        results = evaluate(model, processor, paths, question, classes, mode, batch_size, max_pixels,
                           enlarge=enlarge_images, workers=auto_workers(num_workers),
                           bias=bias["values"] if bias else None)
        out = Path(report_dir) / Path(model_path).name if report_dir and len(model_paths) > 1 else \
            Path(report_dir) if report_dir else default_report_dir(model_path, report_name)
        if true is None:
            write_csv(out / "predictions.csv", PREDICTION_HEADER, prediction_rows(paths, results))
            for path, r in zip(paths, results):
                prob = f" ({r['probs'][r['pred']]:.3f})" if r["probs"] else ""
                print(f"{path}: {r['pred']}{prob}")
            outcomes.append(None)
        else:
            extra = {"model": str(model_path), "prediction": mode, "classes": classes, "question": question,
                     "class_bias": bias["bias"] if bias else None, "settings": record or {},
                     "versions": library_versions()}
            result = write_report(out, paths, results, true, classes, extra)
            print_accuracy(result)
            outcomes.append(result)
        print(f"report written to {out}")
        del model
    if true is not None and len(model_paths) > 1:
        print_comparison(model_paths, outcomes, classes)
    return outcomes


