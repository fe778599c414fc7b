"""The browser page: images in, every class's probability and the image as the model sees it out; also as APIs."""
import math
from pathlib import Path

from .calibration import UNCERTAIN, best_guesses, load_calibration, uncertain_rule
from .cli import UserError
from .explain import Explainer, overlay, unexplainable
from .images import images_in_turn, load_image, read_dataset_json, recorded_json
from .prediction import evaluate_with

RESULT_HEADERS = ["image", "class", "probability"]
MULTI_LABEL_HEADERS = [*RESULT_HEADERS, "threshold", "present"]  # a multi-label model's: each class on its own
# System fonts: the default theme's web fonts would be fetched from the internet by every browser opening the page.
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]


def model_view(image_processor, pixel_values):
    """An image as the model receives it, from its pixel tensors: resized (never enlarged beyond its own size;
    SmolVLM without tiles: squeezed into one square tile) by the image processor, its normalisation undone.
    With tiles, the last: the view of the whole image."""
    import numpy as np
    from PIL import Image
    pixels = np.asarray(pixel_values, dtype=np.float32)
    tile = pixels.reshape(-1, *pixels.shape[-3:])[-1]
    if image_processor.do_normalize:
        tile = tile * np.array(image_processor.image_std)[:, None, None] + \
            np.array(image_processor.image_mean)[:, None, None]
    if image_processor.do_rescale:
        tile = tile / image_processor.rescale_factor
    return Image.fromarray(np.clip(tile.transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8))


def classify_files(predictor, paths, classes, question, *, batch_size, max_pixels, calibration=None):
    """Score mode over the files with a predictor (vlmcls/runtime.py), as the evaluation scripts run it
    (`calibration`: calibration.load_calibration's). Returns ([(file name, every class with its probability, the top
    class first, whether it is uncertain, the file, the labels predicted: a multi-label model's, at or above their
    thresholds, else None)] for each usable file; [(image as the model sees it, caption)]; one message per file that
    cannot be used, naming it and saying why).

    Each file is decoded and run through the processor once: the encoder keeps the result, which the
    prediction takes and the model's view is drawn from."""
    encoder = predictor.encoder(max_pixels)
    usable, problems = [], []
    for path in paths:
        try:
            encoder.image_part(path)
            usable.append(path)
        except UserError as e:
            # the message starts with the upload's temporary path: the page names the file instead
            problems.append(str(e).replace(str(path), Path(path).name, 1))
    results = evaluate_with(predictor, usable, question, classes, "score", batch_size, max_pixels, encoder=encoder,
                            calibration=calibration, desc="page") if usable else []
    ranked, views = [], []
    for path, result in zip(usable, results):
        unsure, labels = bool(result.get("uncertain")), result.get("labels")
        ranked.append((Path(path).name, sorted(result["probs"].items(), key=lambda item: -item[1]), unsure, path,
                       labels))
        top, probability = ranked[-1][1][0]
        said = f"{UNCERTAIN} (best guesses: {best_guesses(result)})" if unsure else \
            (", ".join(labels) or "no label") if labels is not None else f"{top} ({probability:.3f})"
        views.append((model_view(predictor.processor.image_processor, encoder.image_part(path)[1]["pixel_values"]),
                      f"{Path(path).name}: {said}"))
    return ranked, views, problems


def results_table(ranked, thresholds=None):
    """Every class of each image with its probability, as a table styled to show 3 decimals: the page shows the
    rounded numbers, the API still returns the probabilities themselves. A multi-label model's (`thresholds`: its
    {class: threshold}) also has each class's threshold, and "yes" under "present" where the label is predicted."""
    import pandas as pd
    if thresholds is None:
        rows = [[name, label, probability] for name, classes, *_ in ranked for label, probability in classes]
        return pd.DataFrame(rows, columns=RESULT_HEADERS).style.format({"probability": "{:.3f}"})
    rows = [[name, label, probability, thresholds[label], "yes" if label in labels else ""]
            for name, classes, _, _, labels in ranked for label, probability in classes]
    return pd.DataFrame(rows, columns=MULTI_LABEL_HEADERS).style.format({"probability": "{:.3f}",
                                                                         "threshold": "{:.3f}"})


def example_images(model_path, test_json, count):
    """Up to `count` images of the test JSON, taken from each class in turn; by default the test JSON that
    fine_tune.py recorded for the model, when it is still there (paths are relative to the current folder)."""
    test_json = test_json or recorded_json(model_path, "test_json")
    return images_in_turn(read_dataset_json(test_json), count) if test_json else []


def parse_class_names(text):
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def build_page(predictor, *, classes, examples, batch_size, max_pixels, quantize, class_bias=True,
               min_confidence=0.0, target_accuracy=0.0, confidence_level=0.9):
    """The Gradio page of a predictor (vlmcls/runtime.py: a PyTorch model, or an exported one in ONNX Runtime) and
    the record it carries (its `saved`: classes, question, calibration).
    `classes` ([] = those saved with the model) can be replaced on the page; a model with neither gets a field
    asking for them. The probabilities are calibrated as saved with the model for those classes
    (calibration.load_calibration: the class bias with `class_bias`, the temperature), and an image whose top
    probability is below the threshold (`min_confidence`, or the one certified for `target_accuracy` at
    `confidence_level`; every image where none is) is uncertain, its
    best guesses shown. Classifying is also the API endpoint /classify (images and class names in, the table, the
    model's views and messages out), /predict classifies one image in Gradio's label format (label
    "uncertain" below the threshold, the confidences still every class's), and /explain gives one image's evidence
    for its top class (the point and the overlay). The switch "Show where it looked" (off at first) shows that
    overlay beside each classified image; a model that cannot be explained (exported, int8 weights:
    explain.unexplainable) is refused by /explain, and its switch is disabled, saying why."""
    import gradio as gr
    saved = predictor.saved
    default = saved.classes_and_question(classes)
    settings = {"class_bias": class_bias, "min_confidence": min_confidence, "target_accuracy": target_accuracy,
                "confidence_level": confidence_level}
    # a threshold that cannot be chosen stops the page before it starts
    # a multi-label model is decided by its per-class thresholds: no class bias, temperature or "uncertain" yet
    multi, thresholds = saved.multi_label, saved.thresholds
    calibrated = load_calibration(saved, default[0], **settings) if default and not multi else None
    refusal = unexplainable(saved, quantize)

    def scoring(class_names):
        """(classes, question, calibration) for the class names given, else the page's; None when there are fewer
        than two."""
        found = saved.classes_and_question(parse_class_names(class_names) or classes)
        if not found or len(found[0]) < 2:
            return None
        return (*found, None if multi else load_calibration(saved, found[0], **settings))

    def run(paths, found):
        return classify_files(predictor, paths, *found[:2], batch_size=batch_size, max_pixels=max_pixels,
                              calibration=found[2])

    def evidence(found, tops):
        """The strongest point of each (image file, class) of `tops`, in the image's pixels, and its overlay
        (vlmcls/explain.py's default method; `found`: scoring's)."""
        explainer = Explainer(predictor.model, predictor.processor, found[1], found[0], max_pixels=max_pixels)
        for path, top in tops:
            picture = load_image(path, max_pixels)
            heat = explainer(picture, top)
            yield heat["point"], overlay(picture, heat["map"], heat["point"])

    def classify(images, class_names):
        """The table, the model's views, the messages, and what the overlays need: the classes and question, and
        each usable image with its best guess (a gr.State, which the API leaves out)."""
        try:
            found = scoring(class_names)
        except UserError as e:  # target_accuracy with class names other than the model's
            return [], [], str(e), None
        if not found:
            return [], [], "Give two or more class names, separated by commas.", None
        if not images:
            return [], [], "Drop, paste or pick one image or several.", None
        try:
            ranked, views, problems = run([path for path, _ in images], found)
        except UserError as e:  # classes an exported model was not exported with
            return [], [], f"**Not classified:** {e}", None
        threshold = found[2]["threshold"] if found[2] else 0
        below = f"top probability below {threshold:.3f}" if math.isfinite(threshold) else \
            "no threshold is certified for the target accuracy"
        unsure = [f"**Not sure:** {name}: {below}; best guesses: "
                  + ", ".join(f"{label} {p:.3f}" for label, p in probabilities[:2])
                  for name, probabilities, uncertain, *_ in ranked if uncertain]
        return results_table(ranked, thresholds), views, "\n\n".join(
            unsure + [f"**Not classified:** {p}" for p in problems]), \
            {"found": found, "tops": [(path, probabilities[0][0]) for _, probabilities, _, path, _ in ranked]}

    def looked(classified, show):
        """With the switch on, each classified image's overlay, captioned with its best guess and strongest point;
        hidden with it off."""
        if not (show and classified):
            return gr.Gallery(value=None, visible=bool(show))
        tops = classified["tops"]
        return gr.Gallery(value=[(shown, f"{Path(path).name}: {top}, strongest at ({x:.0f}, {y:.0f})")
                                 for (path, top), ((x, y), shown) in zip(tops, evidence(classified["found"], tops))],
                          visible=True)

    def predict(image):
        """One image in, Gradio's label format out: the top class, or "uncertain", and every class's confidence; of
        a multi-label model, the labels predicted (joined by ';' as "label", and as a list) and the thresholds
        too."""
        found = scoring("")
        if not found:
            raise gr.Error("This model has no class names saved: give them with --classes, or call /classify.")
        if not image:
            raise gr.Error("Give one image.")
        ranked, _, problems = run([image], found)
        if problems:
            raise gr.Error(problems[0])
        _, probabilities, unsure, _, labels = ranked[0]
        confidences = [{"label": label, "confidence": p} for label, p in probabilities]
        if multi:
            return {"label": ";".join(labels), "labels": labels, "confidences": confidences, "thresholds": thresholds}
        return {"label": UNCERTAIN if unsure else probabilities[0][0], "confidences": confidences}

    def explain(image):
        """One image in: its top class, the point of strongest evidence for it in the image's pixels, and the
        overlay (vlmcls/explain.py's default method). PyTorch models only."""
        found = scoring("")
        if not found:
            raise gr.Error("This model has no class names saved: give them with --classes.")
        if refusal:
            raise gr.Error(f"{refusal}.")
        if not image:
            raise gr.Error("Give one image.")
        ranked, _, problems = run([image], found)
        if problems:
            raise gr.Error(problems[0])
        top = ranked[0][1][0][0]
        (x, y), shown = next(evidence(found, [(image, top)]))
        return {"label": top, "x": x, "y": y}, shown

    known = f"classes: {', '.join(default[0])}" if default else "no class names saved with this model"
    name = Path(saved.path).name
    with gr.Blocks(title=f"{name}: image classifier", analytics_enabled=False) as page:
        scored = predictor.objective.SCORED_BY
        calibration = ("" if not calibrated else
                       f" Probabilities calibrated with temperature {calibrated['temperature']:.2f}."
                       if calibrated["temperature"] else " Probabilities uncalibrated (no temperature saved).")
        rule = uncertain_rule(calibrated) if calibrated and calibrated["threshold"] else ""
        unsure = f" {rule[:1].upper()}{rule[1:]}." if rule else ""
        decided = (f" Multi-label: each class has its own probability (a sigmoid), and is present at or above its "
                   f"threshold ({saved.classes_json.get('thresholds_chosen', 'as saved with the model')})."
                   if multi else "")
        gr.Markdown(f"## {name}\n{known}. Every class is scored by {scored}"
                    f"{' (int8 weights)' if quantize == 'int8' else ''}.{calibration}{unsure}{decided}")
        with gr.Row():
            with gr.Column():
                images = gr.Gallery(label="Images: drop, paste or pick one or several", type="filepath",
                                    interactive=True, sources=["upload", "clipboard"], columns=4, height=320,
                                    elem_id="images")
                class_names = gr.Textbox(label="Class names, separated by commas", visible=default is None,
                                         placeholder="e.g. Clean, Dusty, Snow-Covered", elem_id="class_names")
                # off at first: the overlays cost about 2.4 forward passes an image (docs/explain.md)
                switch = gr.Checkbox(label="Show where it looked", value=False, interactive=refusal is None,
                                     info=f"{refusal}." if refusal else
                                     "The evidence for each image's best guess, over the image (Grad-CAM): "
                                     "about 2.4 forward passes more an image.", elem_id="explain")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                messages = gr.Markdown(label="Messages", elem_id="messages")
                table = gr.Dataframe(headers=MULTI_LABEL_HEADERS if multi else RESULT_HEADERS,
                                     datatype=["str", "str", "number"] + (["number", "str"] if multi else []),
                                     interactive=False, label="Every class, most likely first", elem_id="results")
                with gr.Row():
                    seen = gr.Gallery(label="As the model sees it (after resizing)", columns=3, height=320,
                                      interactive=False, format="png", elem_id="seen")
                    overlays = gr.Gallery(label="Where it looked: the evidence for the best guess, the strongest "
                                          "point ringed", columns=3, height=320, interactive=False, format="png",
                                          visible=False, elem_id="looked")
        classified = gr.State()
        outputs = [table, seen, messages, classified]

        def then_looked(event):
            """After each classification, the overlays of its images when the switch is on."""
            event.then(looked, [classified, switch], overlays, api_visibility="private", concurrency_id="model")
        then_looked(button.click(classify, [images, class_names], outputs, api_name="classify",
                                 concurrency_id="model"))
        switch.change(looked, [classified, switch], overlays, api_visibility="private", concurrency_id="model")
        # The API of Hugging Face's image classifiers: one image in, gr.Label's format out. A file component, not
        # gr.Image, so that the file reaches the model as uploaded (gr.Image would decode and re-encode it).
        one_image, label = gr.File(type="filepath", visible=False), gr.Label(visible=False)
        # returned as gr.Label's data itself: its own formatting would name the top class, never "uncertain"
        gr.Button(visible=False).click(predict, one_image, label, api_name="predict", concurrency_id="model",
                                       postprocess=False)
        # /explain: one image in; its top class and strongest point as JSON, and the overlay
        gr.Button(visible=False).click(explain, one_image, [gr.JSON(visible=False),
                                                            gr.Image(visible=False, type="pil", format="png")],
                                       api_name="explain", concurrency_id="model")
        # New images (an upload, a paste, a click on an example) are classified at once.
        then_looked(images.upload(classify, [images, class_names], outputs, api_visibility="private",
                                  concurrency_id="model"))
        if examples:
            shown = gr.Examples([[[path]] for path in examples], inputs=[images], examples_per_page=len(examples),
                                label="Test images: click one to classify it",
                                example_labels=[Path(path).name for path in examples])
            then_looked(shown.load_input_event.then(classify, [images, class_names], outputs,
                                                    api_visibility="private", concurrency_id="model"))
    return page


def serve(page, *, host, port, max_file_mb, examples):
    """Start the page and block. Uploads over max_file_mb are refused by Gradio on the page, before any decoding;
    of the files outside Gradio's upload folder, only the example images may be served."""
    import gradio as gr
    try:
        page.launch(server_name=host, server_port=port, max_file_size=f"{max_file_mb}mb", allowed_paths=examples,
                    show_error=False, theme=gr.themes.Default(font=FONTS, font_mono=MONO_FONTS))
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port} ({e}); choose another --port") from None
