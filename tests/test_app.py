"""vlm_app.py: the page in a real browser, its API through gradio_client, and the parts it is built from."""
import contextlib
import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, ROOT, as_multi_label, load_tiny, run_script
from vlmcls.app import build_page, example_images, model_view
from vlmcls.inputs import InputEncoder
from vlmcls.prediction import TorchPredictor
from vlmcls.saved import open_classifier

ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots of the page, kept after the run (ignored by git)
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's packages


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url, proc, log, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vlm_app.py exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"vlm_app.py did not answer within {timeout} s:\n{log.read_text()}")


@contextlib.contextmanager
def serving(work, model, env=None, *flags):
    """vlm_app.py serving the model folder `model` of the work folder, started there as a user starts it (with `env`
    added to the environment, and `flags`); yields its URL."""
    url, log = f"http://127.0.0.1:{free_port()}/", work / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "vlm_app.py"), f"--model_path={model}",
                                 f"--port={url.rsplit(':', 1)[1].strip('/')}", *flags], cwd=work,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                                     **(env or {})})
    try:
        wait_until_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def app(fine_tuned_smolvlm):
    """vlm_app.py serving the fine-tuned model; yields its URL."""
    with serving(fine_tuned_smolvlm, "finetuned") as url:
        yield url


def vlm_test_says(work, image, model="finetuned"):
    """(class, probability to 3 decimals as printed, probability to 6 decimals from predictions.csv)."""
    report = work / "reports" / image.stem
    out = run_script("vlm_test.py", f"--model_path={model}", f"--dataset_dir={image}", f"--report_dir={report}",
                     cwd=work).stdout
    name, printed = re.search(rf"{re.escape(str(image))}: (\S+) \((\d\.\d+)\)", out).groups()
    row = next(csv.DictReader(open(report / "predictions.csv")))
    return name, float(printed), float(row["probability"])


def bad_files(folder):
    """A file named .png that is not an image, and a text file."""
    (folder / "fake.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("a text file")
    return folder / "fake.png", folder / "notes.txt"


@pytest.fixture
def browser():
    """Headless Chromium, as a user opens the page; the test is skipped without it, or fails where
    VLMCLS_BROWSER_TEST=required."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        missing = f"no {CHROMIUM} or {CHROMEDRIVER}: apt-get install chromium chromium-driver"
        if os.environ.get("VLMCLS_BROWSER_TEST") == "required":  # set by .ci/run wherever apt could install them
            pytest.fail(missing)
        pytest.skip(f"{missing} (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def upload(wait, path):
    """An image picked in the page's upload field (its upload classifies it)."""
    from selenium.webdriver.common.by import By
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#images input[type=file]"))[0].send_keys(str(path))


def loaded_images(browser, where):
    """The images shown in the element with that id that the browser has decoded (in one call: a gallery being
    hidden takes its images away meanwhile)."""
    return browser.execute_script("return [...document.querySelectorAll(arguments[0])].filter("
                                  "i => i.checkVisibility() && i.complete && i.naturalWidth)", f"#{where} img")


def page_rows(browser):
    """The results table's rows as shown: [image, class, probability]."""
    from selenium.webdriver.common.by import By
    rows = []
    for row in browser.find_elements(By.CSS_SELECTOR, "#results [role=row]"):
        cells = [cell.text.strip() for cell in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
        if len(cells) == 3 and all(cells):
            rows.append(cells)
    return rows


def test_page_in_a_browser_shows_what_vlm_test_prints(app, fine_tuned_smolvlm, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = fine_tuned_smolvlm / "data" / "green" / "green_03.png"
    name, probability, _ = vlm_test_says(fine_tuned_smolvlm, image)
    fake, notes = bad_files(tmp_path)
    wait = WebDriverWait(browser, 60)
    browser.get(app)
    upload(wait, image)
    rows = wait.until(lambda b: (r := page_rows(b)) and r[0][0] == image.name and r)
    seen = wait.until(lambda b: loaded_images(b, "seen"))[0]
    assert seen.get_property("naturalWidth") == 512  # resized from 64 px
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-page.png"))  # the classes, the probabilities, the model's view
    assert [rows[0][1], float(rows[0][2])] == [name, probability]
    assert sorted(r[1] for r in rows) == sorted(COLOURS)
    shown = [r[2] for r in rows]
    assert all(re.fullmatch(r"\d\.\d{3}", text) for text in shown)  # 3 decimals, as vlm_test.py prints
    shown = [float(text) for text in shown]  # each within 0.0005 of the probability it shows
    assert shown == sorted(shown, reverse=True) and sum(shown) == pytest.approx(1, abs=0.0005 * len(shown))
    assert f"{image.name}: {name} ({probability:.3f})" in browser.find_element(By.ID, "seen").text

    browser.get(app)
    upload(wait, fake)
    wait.until(lambda b: "fake.png: not an image" in b.find_element(By.ID, "messages").text)
    browser.save_screenshot(str(ARTIFACTS / "app-page-not-an-image.png"))
    browser.get(app)
    upload(wait, notes)  # refused by the page itself, before it reaches the app
    wait.until(lambda b: "notes.txt" in " ".join(t.text for t in b.find_elements(By.CSS_SELECTOR, ".toast-body")))

    browser.get(app)  # the app still answers; an example is one click away
    example = wait.until(lambda b: b.find_elements(By.XPATH, "//button[contains(., 'red_')]"))[0]
    example.click()
    wait.until(lambda b: (r := page_rows(b)) and r[0][0] == example.text.strip())
    assert page_rows(browser)[0][1] == "red"


def test_the_switch_shows_where_it_looked_beside_each_image(app, fine_tuned_smolvlm, browser):
    """Off at first: classifying shows no overlay. On: each classified image's overlay (at the image's own size,
    not the model's 512 px view) beside the model's view, captioned with the point /explain gives; off again,
    hidden; on before classifying, the new image's overlay."""
    from gradio_client import Client, handle_file
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    image, other = (fine_tuned_smolvlm / "data" / name for name in ("blue/blue_04.png", "red/red_07.png"))
    client = Client(app, verbose=False)
    points = {}
    for path in (image, other):
        point, _ = client.predict(handle_file(str(path)), api_name="/explain")
        points[path.name] = f"{path.name}: {point['label']}, strongest at ({point['x']:.0f}, {point['y']:.0f})"
    wait = WebDriverWait(browser, 60)

    def switch():
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#explain input[type=checkbox]"))[0].click()

    def overlay_of(path):
        """The overlay shown for the image, once its caption is there."""
        wait.until(lambda b: points[path.name] in b.find_element(By.ID, "looked").text)
        return wait.until(lambda b: loaded_images(b, "looked"))

    browser.get(app)
    upload(wait, image)
    wait.until(lambda b: (r := page_rows(b)) and r[0][0] == image.name)
    wait.until(lambda b: loaded_images(b, "seen"))
    with pytest.raises(TimeoutException):  # an overlay drawn with the switch off would show within seconds
        WebDriverWait(browser, 3).until(lambda b: loaded_images(b, "looked"))
    switch()
    shown = overlay_of(image)
    assert len(shown) == 1 and shown[0].get_property("naturalWidth") == Image.open(image).width
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-page-where-it-looked.png"))
    switch()
    wait.until(lambda b: not loaded_images(b, "looked"))

    browser.get(app)  # on before classifying: the overlay comes with the classes
    switch()
    upload(wait, other)
    shown = overlay_of(other)
    assert len(shown) == 1 and points[image.name] not in browser.find_element(By.ID, "looked").text


def test_api_endpoint_gives_the_numbers_of_vlm_test(app, fine_tuned_smolvlm, tmp_path):
    from gradio_client import Client, handle_file
    image, other = (fine_tuned_smolvlm / "data" / name for name in ("blue/blue_02.png", "red/red_05.png"))
    name, _, probability = vlm_test_says(fine_tuned_smolvlm, image)
    fake, _ = bad_files(tmp_path)
    client = Client(app, verbose=False)
    table, seen, messages = client.predict([{"image": handle_file(str(image)), "caption": None}], "",
                                           api_name="/classify")
    top = table["data"][0]
    assert top[:2] == [image.name, name] and top[2] == pytest.approx(probability, abs=1e-6)
    assert table["metadata"]["display_value"][0][2] == f"{top[2]:.3f}"  # what the page shows
    assert messages == "" and Image.open(seen[0]["image"]).size == (512, 512)

    table, seen, messages = client.predict([{"image": handle_file(str(p)), "caption": None}
                                            for p in (image, fake, other)], "", api_name="/classify")
    assert [row[0] for row in table["data"]] == [image.name] * 3 + [other.name] * 3
    assert len(seen) == 2 and "fake.png: not an image" in messages


def test_predict_takes_one_image_and_answers_in_gradios_label_format(app, fine_tuned_smolvlm, tmp_path):
    """The README's call: one image in; the top class and every class's confidence out, as vlm_test.py gives them."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    image = fine_tuned_smolvlm / "data" / "green" / "green_07.png"
    report = fine_tuned_smolvlm / "reports" / "predict"
    run_script("vlm_test.py", "--model_path=finetuned", f"--dataset_dir={image}", f"--report_dir={report}",
               cwd=fine_tuned_smolvlm)
    row = next(csv.DictReader(open(report / "predictions.csv")))
    client = Client(app, verbose=False)
    result = client.predict(handle_file(str(image)), api_name="/predict")
    confidences = result["confidences"]
    assert result["label"] == row["predicted_class"] == confidences[0]["label"]
    assert confidences[0]["confidence"] == pytest.approx(float(row["probability"]), abs=1e-6)
    assert [c["label"] for c in confidences[:2]] == row["top2"].split(" | ")
    assert sorted(c["label"] for c in confidences) == sorted(COLOURS)
    assert sum(c["confidence"] for c in confidences) == pytest.approx(1, abs=1e-6)

    fake, _ = bad_files(tmp_path)
    with pytest.raises(AppError, match="fake.png: not an image"):
        client.predict(handle_file(str(fake)), api_name="/predict")
    table, _, _ = client.predict([{"image": handle_file(str(image)), "caption": None}], "", api_name="/classify")
    assert table["data"][0][1:] == [result["label"], pytest.approx(confidences[0]["confidence"], abs=1e-9)]


def test_explain_gives_the_strongest_point_and_the_overlay_of_the_top_class(app, fine_tuned_smolvlm):
    """/explain: one image in; its top class (as /predict's), the strongest point inside the image, and the overlay
    at the image's size."""
    from gradio_client import Client, handle_file
    image = fine_tuned_smolvlm / "data" / "red" / "red_03.png"
    client = Client(app, verbose=False)
    label = client.predict(handle_file(str(image)), api_name="/predict")["label"]
    point, shown = client.predict(handle_file(str(image)), api_name="/explain")
    size = Image.open(image).size
    assert point["label"] == label and 0 <= point["x"] < size[0] and 0 <= point["y"] < size[1]
    assert Image.open(shown).size == size


def test_a_head_models_endpoints_give_the_heads_probabilities(fine_tuned_head):
    """A model fine-tuned with objective=head, served by vlm_app.py: /predict and /classify answer with its head's
    probabilities (the class bias saved with it added), those vlm_test.py gives."""
    import torch
    from gradio_client import Client, handle_file

    from vlmcls.calibration import saved_class_bias
    from vlmcls.calibration import with_class_bias
    from vlmcls.inputs import PromptBatches
    from vlmcls.objectives import load_for_inference
    from vlmcls.objectives.head import head_mode
    model = fine_tuned_head / "head"
    images = [fine_tuned_head / "data" / name for name in ("green/green_04.png", "red/red_09.png")]
    saved = open_classifier(model)
    classes, question = saved.classes, saved.question
    processor, loaded = load_for_inference(saved, device="cpu", dtype=torch.float32, image_longest_edge=None,
                                           image_splitting=None, quantize="none")
    # The head's forward pass itself, not the choice of prediction mode that the scripts and the app share: scoring
    # the class answers, as for a model without a head, gives other numbers.
    batch = PromptBatches(processor, question, 10**8, False)([str(p) for p in images])
    bias = saved_class_bias(saved, classes)
    expected = with_class_bias(head_mode(loaded, processor, batch, question, classes), classes, bias["values"])
    name, _, probability = vlm_test_says(fine_tuned_head, images[0], model="head")
    assert (name, probability) == (expected[0]["pred"], pytest.approx(expected[0]["probs"][name], abs=1e-6))

    with serving(fine_tuned_head, "head") as url:
        client = Client(url, verbose=False)
        result = client.predict(handle_file(str(images[0])), api_name="/predict")
        table, _, messages = client.predict([{"image": handle_file(str(p)), "caption": None} for p in images], "",
                                            api_name="/classify")
    assert result["label"] == name
    assert {c["label"]: c["confidence"] for c in result["confidences"]} == \
        pytest.approx(expected[0]["probs"], abs=1e-6)
    assert messages == ""
    assert {(image, label): p for image, label, p in table["data"]} == \
        pytest.approx({(path.name, label): p for path, r in zip(images, expected) for label, p in r["probs"].items()},
                      abs=1e-6)


def test_model_view_is_the_image_as_the_model_gets_it(fine_tuned_smolvlm, tiny_smolvlm):
    """SmolVLM squeezes an image without tiles into one 512 px square; with tiles, the last is the whole image."""
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:, :32], pixels[:, 32:] = COLOURS["red"], COLOURS["blue"]

    def view(processor, image):
        model_input = InputEncoder(processor, 10**9, cache=False).encode_image(image)[1]["pixel_values"]
        return np.asarray(model_view(processor.image_processor, model_input), dtype=float)

    processor, _ = load_tiny(fine_tuned_smolvlm / "finetuned")
    seen = view(processor, Image.fromarray(pixels))
    assert seen.shape == (512, 512, 3)
    assert np.abs(seen[:, :200].mean((0, 1)) - COLOURS["red"]).max() < 2
    assert np.abs(seen[:, -200:].mean((0, 1)) - COLOURS["blue"]).max() < 2
    tiled, _ = load_tiny(tiny_smolvlm)
    tiled.image_processor.do_image_splitting, tiled.image_processor.size = True, {"longest_edge": 2048}
    seen = view(tiled, Image.fromarray(np.repeat(np.repeat(pixels, 25, 0), 25, 1)))
    assert seen.shape == (512, 512, 3) and np.abs(seen[:, -200:].mean((0, 1)) - COLOURS["blue"]).max() < 2


def test_examples_are_the_recorded_test_images_from_every_class(fine_tuned_smolvlm, monkeypatch, tmp_path):
    monkeypatch.chdir(fine_tuned_smolvlm)
    examples = example_images("finetuned", "", 4)
    assert [Path(p).parent.name for p in examples] == ["blue", "green", "red", "blue"]
    assert all(Path(p).is_file() for p in examples)
    assert example_images(str(tmp_path), "", 4) == []  # no run_config.json: no examples


def test_a_model_without_class_names_asks_for_them(tiny_smolvlm):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    processor, model = load_tiny(tiny_smolvlm)
    page = build_page(TorchPredictor(model, processor, open_classifier(tiny_smolvlm)), classes=[], examples=[],
                      batch_size=2, max_pixels=10**6, quantize="none")
    asks = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "class_names")
    assert asks.visible is True
    page.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(page.local_url, verbose=False)
        path = Path(tiny_smolvlm) / "red.png"
        Image.new("RGB", (40, 30), COLOURS["red"]).save(path)
        files = [{"image": handle_file(str(path)), "caption": None}]
        table, _, messages = client.predict(files, "", api_name="/classify")
        assert table["data"] == [] and "Give two or more class names" in messages
        table, _, messages = client.predict(files, "red, green, blue", api_name="/classify")
        assert sorted(row[1] for row in table["data"]) == ["blue", "green", "red"] and messages == ""
        with pytest.raises(AppError, match="no class names saved"):
            client.predict(handle_file(str(path)), api_name="/predict")
    finally:
        page.close()


def test_a_page_with_int8_weights_says_why_it_cannot_show_where_it_looked(fine_tuned_smolvlm):
    """int8 weights have no gradients (nor has an exported model PyTorch: tests/test_export.py): the switch is
    disabled, its line saying why, and /explain refuses with that line."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    model = fine_tuned_smolvlm / "finetuned"
    processor, loaded = load_tiny(model)
    page = build_page(TorchPredictor(loaded, processor, open_classifier(model)), classes=[], examples=[],
                      batch_size=2, max_pixels=10**6, quantize="int8")
    switch = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "explain")
    assert switch.interactive is False and switch.value is False
    assert switch.info == "int8 weights have no gradients: explanations need --quantize=none."
    page.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with pytest.raises(AppError, match="int8 weights have no gradients"):
            Client(page.local_url, verbose=False).predict(
                handle_file(str(fine_tuned_smolvlm / "data" / "red" / "red_03.png")), api_name="/explain")
    finally:
        page.close()


def test_the_page_adds_the_class_bias_saved_with_the_model(fine_tuned_smolvlm, tmp_path):
    from gradio_client import Client, handle_file
    processor, model = load_tiny(fine_tuned_smolvlm / "finetuned")
    saved = json.loads((fine_tuned_smolvlm / "finetuned" / "classes.json").read_text())
    saved["class_bias"] = {**saved["class_bias"], "bias": {c: 50.0 * (c == "green") for c in saved["classes"]}}
    (tmp_path / "classes.json").write_text(json.dumps(saved))  # the model's class names, with a bias for green
    image = fine_tuned_smolvlm / "data" / "red" / "red_05.png"
    top = {}
    for class_bias in (True, False):
        page = build_page(TorchPredictor(model, processor, open_classifier(tmp_path)), classes=[], examples=[],
                          batch_size=2, max_pixels=10**6, quantize="none", class_bias=class_bias)
        page.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            client = Client(page.local_url, verbose=False)
            table, _, _ = client.predict([{"image": handle_file(str(image)), "caption": None}], "",
                                         api_name="/classify")
            top[class_bias] = table["data"][0][1], client.predict(handle_file(str(image)), api_name="/predict")["label"]
        finally:
            page.close()
    assert top == {True: ("green", "green"), False: ("red", "red")}


@pytest.fixture(scope="module")
def multi_label_app(fine_tuned_head):
    """vlm_app.py serving the fine-tuned head recorded as multi-label (work/multi); yields the image, the URL and,
    as vlm_test.py predicts it, the image's probabilities, labels and the thresholds. The thresholds are set from
    the image's probabilities: its two most probable classes present, the second below 0.5 (so that neither a
    fixed 0.5 nor the top label alone gives the labels), the third absent."""
    import json

    def predicted():
        run_script("vlm_test.py", "--model_path=multi", f"--dataset_dir={image}", "--report_dir=reports/multi",
                   "--num_workers=0", "--resume=overwrite", cwd=fine_tuned_head)
        row = next(csv.DictReader(open(fine_tuned_head / "reports" / "multi" / "predictions.csv")))
        return ({c: float(row[f"probability_{c}"]) for c in classes},
                row["predicted_labels"].split(";") if row["predicted_labels"] else [])
    classes = ["blue", "green", "red"]
    model = as_multi_label(fine_tuned_head / "head", fine_tuned_head / "multi", dict.fromkeys(classes, 0.5))
    image = fine_tuned_head / "data" / "green" / "green_05.png"
    probs, _ = predicted()
    first, second, third = sorted(classes, key=probs.get, reverse=True)
    assert probs[second] < 0.5 - 1e-3 and probs[second] > 2e-3, probs  # room for a threshold under it
    thresholds = {first: round(probs[first] / 2, 3), second: round(probs[second] / 2, 3),
                  third: round(min(1.0, probs[third] * 2 + 1e-3), 3)}  # the page shows 3 decimals
    record = json.loads((model / "classes.json").read_text())
    (model / "classes.json").write_text(json.dumps({**record, "thresholds": thresholds}))
    probs, labels = predicted()
    assert sorted(labels) == sorted([first, second]), (probs, labels, thresholds)
    with serving(fine_tuned_head, "multi") as url:
        yield image, url, {"probs": probs, "labels": labels, "thresholds": thresholds}


def test_a_multi_label_models_page_marks_the_labels_at_or_above_their_thresholds(multi_label_app, browser):
    """Each class with its own probability (vlm_test.py's, a sigmoid each) and threshold, the most probable first,
    "yes" under "present" for exactly the labels at or above their thresholds; the switch says why it is off."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    image, url, expected = multi_label_app
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    upload(wait, image)

    def rows(b):
        found = [[cell.text.strip() for cell in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
                 for row in b.find_elements(By.CSS_SELECTOR, "#results [role=row]")]
        return [r for r in found if len(r) == 5 and r[0] == image.name]
    shown = wait.until(lambda b: len(rows(b)) == len(expected["thresholds"]) and rows(b))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-page-multi-label.png"))
    assert {r[1]: float(r[2]) for r in shown} == pytest.approx(expected["probs"], abs=0.0005)
    assert [float(r[2]) for r in shown] == sorted((float(r[2]) for r in shown), reverse=True)
    assert {r[1]: float(r[3]) for r in shown} == expected["thresholds"]
    assert sorted(r[1] for r in shown if r[4] == "yes") == sorted(expected["labels"])
    assert f"{image.name}: {', '.join(expected['labels'])}" in browser.find_element(By.ID, "seen").text
    switch = browser.find_element(By.CSS_SELECTOR, "#explain input[type=checkbox]")
    assert not switch.is_enabled() and "multi-label models are not built" in browser.find_element(By.ID, "explain").text


def test_predict_gives_a_multi_label_models_labels_every_probability_and_the_thresholds(multi_label_app):
    from gradio_client import Client, handle_file
    image, url, expected = multi_label_app
    result = Client(url, verbose=False).predict(handle_file(str(image)), api_name="/predict")
    assert result["labels"] == expected["labels"] and result["label"] == ";".join(expected["labels"])
    assert {c["label"]: c["confidence"] for c in result["confidences"]} == pytest.approx(expected["probs"], abs=1e-6)
    confidences = [c["confidence"] for c in result["confidences"]]
    assert confidences == sorted(confidences, reverse=True)
    assert abs(sum(confidences) - 1) > 0.01  # each class's own probability, not a softmax over them
    assert result["thresholds"] == expected["thresholds"]
