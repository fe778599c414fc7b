"""Evaluation runs: each model over the same images, with its reports and a side-by-side comparison."""
import io
import json
import re
from functools import partial
from pathlib import Path

from .calibration import calibration_pictures, calibration_report, describe_calibration, load_calibration, \
    print_calibration
from .cli import UserError
from .explain import COLUMNS, Explainer, check_explainable, explaining, pack_maps, write_sheet
from .compat import library_versions
from .files import atomic_write
from .inputs import auto_workers
from .label_issues import label_issues_of_run, training_hashes
from .models import leave_processes
from .prediction_files import PredictionFiles, images_digest, model_files, open_files, predict_into
from .report import PREDICTION_HEADER, print_accuracy, print_comparison, write_summary
from .runtime import load_predictor, start


def default_report_dir(model_path, name):
    """Reports go next to a local model, or under ./reports/ for a Hub id."""
    if Path(model_path).is_dir():
        return Path(model_path) / "reports" / name
    return Path("reports") / re.sub(r"[^\w.-]+", "_", model_path) / name


def evaluate_models(models, paths, true, classes, question, *, mode, batch_size, device, dtype,
                    image_longest_edge, image_splitting, enlarge_images, num_workers, max_pixels, report_dir,
                    report_name, quantize="none", runtime="onnxruntime", class_bias=True, resume="auto", record=None,
                    min_confidence=0.0, target_accuracy=0.0, confidence_level=0.9, explain=False,
                    explain_method="gradcam"):
    """Evaluate each model (`models`: their records, vlmcls.saved.open_classifier) on the same images, print the
    original's lines for each and, for two or more,
    a side-by-side table. predictions.csv (and skipped.csv: files that cannot be used) grow as batches finish;
    an interrupted run is continued (`resume` "auto") or started afresh ("overwrite"); under torchrun each process
    predicts its share and the main process writes. Each model predicts in the runtime its folder calls for
    (runtime.load_predictor: PyTorch, or for an exported one ONNX Runtime or OpenVINO, as `runtime` names). With
    labels, report.json,
    confusion_matrix.png and the suspected label errors (label_issues.csv and .png) follow, computed from the rows
    written; report.json also records `record` (the script's settings) and the library versions. `quantize` ("none"
    or "int8") applies to every model. Score mode's probabilities are calibrated as saved with each model
    (calibration.load_calibration: its class bias with `class_bias`, its temperature), and a result below the
    threshold (`min_confidence`, or the one certified for `target_accuracy` at `confidence_level`) is uncertain;
    with labels, report.json's "calibration" section, reliability.png and coverage.png measure them. With
    `explain`, each image's evidence for its best guess by `explain_method` (vlmcls/explain.py): predictions.csv's
    explanation_x and explanation_y, and explanations/ in the report folder (PyTorch models only). Returns each
    model's metrics (None without labels, or in the other processes)."""
    if explain:
        check_explainable(models, mode, quantize)
    header = PREDICTION_HEADER + (COLUMNS if explain else [])
    rank, world, device, dtype = start(models, device, dtype)
    say = print if rank == 0 else lambda *_: None
    # -1: at least one worker, also where a process's share of the cores is one (torchrun with a GPU per core):
    # the next images are then decoded while the model runs, not in turn with it.
    workers = max(auto_workers(num_workers), 1) if num_workers < 0 else num_workers
    outcomes = []
    for saved in models:
        model_path = saved.path
        int8 = ", int8" if quantize == "int8" else ""
        processes = f", {world} processes" if world > 1 else ""
        used = saved.reported_mode(mode)
        say(f"\n=== {model_path} ({len(paths)} images, {used} mode, {device}{int8}{processes}) ===\n"
            f"question: {question}")
        scoring = mode in ("score", "head")
        if not scoring and (min_confidence or target_accuracy):
            raise UserError(f"prediction={mode} gives no probabilities, so min_confidence and target_accuracy cannot "
                            "apply: use prediction=score")
        calibration = load_calibration(saved, classes, class_bias=class_bias, min_confidence=min_confidence,
                                   target_accuracy=target_accuracy, confidence_level=confidence_level) \
            if scoring else None
        bias = calibration["class_bias"] if calibration else None
        out = Path(report_dir) / Path(model_path).name if report_dir and len(models) > 1 else \
            Path(report_dir) if report_dir else default_report_dir(model_path, report_name)
        settings = {"model": str(Path(model_path).resolve()) if Path(model_path).is_dir() else model_path,
                    "model_files": model_files(model_path), "images": images_digest(paths, true),
                    "image_count": len(paths), "prediction": used, "classes": classes, "question": question,
                    "class_bias": bias["values"] if bias else None, "image_longest_edge": image_longest_edge,
                    "image_splitting": image_splitting, "enlarge_images": enlarge_images,
                    "max_image_pixels": max_pixels, "quantize": quantize, "dtype": str(dtype),
                    "temperature": calibration["temperature"] if calibration else None,
                    "uncertain_below": calibration["threshold"] if calibration else 0, "columns": header,
                    **({"explain_method": explain_method} if explain else {})}
        files = PredictionFiles(out, header, settings)
        done = open_files(files, resume, len(paths), rank, world)
        predictor = load_predictor(saved, device=device, dtype=dtype, quantize=quantize, runtime=runtime,
                                   image_longest_edge=image_longest_edge, image_splitting=image_splitting)
        if bias:
            say(f"class bias of strength {bias['strength']:.1f}, chosen on the validation images, added to the "
                "scores (class_bias=false: without)")
        for line in describe_calibration(calibration) if calibration else []:
            say(line)
        predict_batches = explaining(predictor.predict_batches, Explainer(
            predictor.model, predictor.processor, question, classes, explain_method, max_pixels, enlarge_images),
            out) if explain else predictor.predict_batches
        predict = partial(predict_batches, question=question, classes=classes, mode=mode,
                          max_pixels=max_pixels, enlarge=enlarge_images, workers=workers, calibration=calibration)
        predict_into(files, predict, paths, true, start=done, batch_size=batch_size, rank=rank, world=world,
                     echo=true is None)
        del predictor
        if rank != 0:
            continue
        outcomes.append(report_rows(files, out, len(paths), true, classes, {
            "model": str(model_path), "prediction": used, "classes": classes, "question": question,
            "class_bias": bias["bias"] if bias else None, "settings": record or {}, "versions": library_versions()},
            calibration, training_hashes(saved.classes_json), max_pixels, explain))
    if rank == 0 and true is not None and len(models) > 1:
        print_comparison([saved.path for saved in models], outcomes, classes)
    leave_processes(world)
    return outcomes


def report_rows(files, out, total, true, classes, extra, calibration=None, trained=None, max_pixels=None,
                explain=False):
    """The end of a run, from the rows written (a continued run's too): what was skipped, and with labels the
    reports and the original's lines; accuracy and macro-F1 count the best guesses, uncertain or not. With
    probabilities (score mode), report.json's "calibration" section (calibration.calibration_report) and its
    pictures, and the label audit of the images the model did not train on (`trained`: the pixel hashes of those it
    did, None where it records none; label_issues.label_issues_of_run), summed up in report.json's "label_issues".
    With `explain`, the explanations' maps.npz and contact sheet (vlmcls/explain.py). Returns the metrics (None
    without labels)."""
    skipped = files.rows("skipped")
    if skipped:
        print(f"skipped {len(skipped)} file(s) that cannot be used (listed in {files.paths['skipped']})")
    rows = files.rows()
    if not rows:
        raise UserError(f"no usable image among the {total} file(s) (see {files.paths['skipped']})")
    if explain:
        pack_maps(out, rows)
        write_sheet(out, rows)
    result = None
    if true is not None:
        labels = [r["true_class"] for r in rows]
        section = calibration_report([json.loads(r["probabilities"]) for r in rows], labels, classes, calibration) \
            if all(r["probabilities"] for r in rows) else None
        pictures = calibration_pictures(section) if section else {}
        if section:
            section.pop("curve")  # one point per image: drawn in coverage.png, too long for report.json
        audit = label_issues_of_run(out, rows, classes, trained, max_pixels)
        result = write_summary(out, labels, [r["best_guess"] for r in rows], classes,
                               {**extra, "calibration": section, "label_issues": audit})
        print_accuracy(result)
        if section:
            print_calibration(section, result["accuracy"])
        for name, image in pictures.items():
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            atomic_write(out / name, buffer.getvalue())
    print(f"report written to {out}")
    return result
