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
from .labels import parse_labels
from .multi_label import print_measures
from .multi_label import write_report as write_multi_label_report
from .report import PREDICTION_HEADER, multi_label_columns, print_accuracy, print_comparison, write_summary
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
                    explain_method="gradcam", multi_label=False):
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
    model's metrics (None without labels, or in the other processes). Multi-label models (their record says so) are
    evaluated on multi-label labels (`multi_label`: `true` holds each image's labels as a labels CSV writes them):
    each class's probability and the labels at or above its saved threshold, and with labels
    multi_label.write_report's report.json and pr_curves.png (no calibration, uncertain or label audit yet)."""
    multi = check_multi_label(models, true, multi_label, min_confidence, target_accuracy, explain)
    if explain:
        check_explainable(models, mode, quantize)
    header = PREDICTION_HEADER + (multi_label_columns(classes) if multi else []) + (COLUMNS if explain else [])
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
            if scoring and not multi else None
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
                    **({"explain_method": explain_method} if explain else {}),
                    **({"thresholds": saved.thresholds} if multi else {})}
        files = PredictionFiles(out, header, settings)
        done = open_files(files, resume, len(paths), rank, world)
        predictor = load_predictor(saved, device=device, dtype=dtype, quantize=quantize, runtime=runtime,
                                   image_longest_edge=image_longest_edge, image_splitting=image_splitting)
        if bias:
            say(f"class bias of strength {bias['strength']:.1f}, chosen on the validation images, added to the "
                "scores (class_bias=false: without)")
        for line in describe_calibration(calibration) if calibration else []:
            say(line)
        if multi:
            say(f"multi-label: a label is predicted at or above its threshold ({saved.classes_json.get('thresholds_chosen')}"
                "): " + ", ".join(f"{name} {t:.4f}" for name, t in saved.thresholds.items()))
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
            calibration, training_hashes(saved.classes_json), max_pixels, explain, saved.thresholds))
    if rank == 0 and true is not None and len(models) > 1:
        print_comparison([saved.path for saved in models], outcomes, classes)
    leave_processes(world)
    return outcomes


def check_multi_label(models, true, multi_label, min_confidence, target_accuracy, explain):
    """Whether the models (their records) are multi-label; UserError naming a model folder where some are and some
    are not, where labels (`true`; `multi_label`: multi-label ones) are of the other kind, or where a setting asked
    for does not apply to multi-label models yet."""
    multi = [saved.multi_label for saved in models]
    if any(multi) and not all(multi):
        raise UserError(f"{models[multi.index(False)].path}: a single-label model, compared with a multi-label one "
                        f"({models[multi.index(True)].path}): compare models of one kind")
    if true is not None and multi[0] != multi_label:
        raise UserError(f"{models[0].path}: a {'multi' if multi[0] else 'single'}-label model, and these labels are "
                        f"{'multi' if multi_label else 'single'}-label: evaluate it on a "
                        f"{'multi' if multi[0] else 'single'}-label test JSON (generate_train_json.py)")
    if multi[0]:
        for setting, value in (("min_confidence", min_confidence), ("target_accuracy", target_accuracy),
                               ("explain", explain)):
            if value:
                raise UserError(f"{setting}={value}: {models[0].path} is a multi-label model, which {setting} does "
                                "not take yet (issue 44)")
    return multi[0]


def report_rows(files, out, total, true, classes, extra, calibration=None, trained=None, max_pixels=None,
                explain=False, thresholds=None):
    """The end of a run, from the rows written (a continued run's too): what was skipped, and with labels the
    reports and the original's lines; accuracy and macro-F1 count the best guesses, uncertain or not. With
    probabilities (score mode), report.json's "calibration" section (calibration.calibration_report) and its
    pictures, and the label audit of the images the model did not train on (`trained`: the pixel hashes of those it
    did, None where it records none; label_issues.label_issues_of_run), summed up in report.json's "label_issues".
    With `explain`, the explanations' maps.npz and contact sheet (vlmcls/explain.py). A multi-label model's rows
    (`thresholds`: its {class: threshold}) get multi_label.write_report's measures and picture instead. Returns the
    metrics (None without labels)."""
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
    if true is not None and thresholds:
        labels = [parse_labels(r["true_class"], classes, files.paths["predictions"]) for r in rows]
        result = write_multi_label_report(out, labels, [json.loads(r["probabilities"]) for r in rows],
                                          [r["predicted_labels"].split(";") if r["predicted_labels"] else []
                                           for r in rows], classes, {**extra, "thresholds": thresholds})
        print_measures(result, thresholds)
        print("note: multi-label runs have no calibration section and no label audit yet (issue 44)")
    elif true is not None:
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
