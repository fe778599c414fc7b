"""vlmcls.prediction_files through vlm_test.py: rows written as batches finish, one decode per image, a run killed with
SIGKILL continued to the files of an uninterrupted run, changed settings refused, two processes under torchrun."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import ROOT, awkward_images, make_colour_images, run_script
from vlmcls.label_issues import SHEET_COUNT

SETTINGS = ["--image_longest_edge=512", "--image_splitting=false", "--num_workers=0"]
OUTPUTS = ["predictions.csv", "skipped.csv", "report.json", "confusion_matrix.png", "label_issues.csv"]
# awkward_images' files that cannot be used, with the reason skipped.csv gives
UNUSABLE = {"green/corrupt.png": "corrupt or truncated image", "green/truncated.png": "corrupt or truncated image",
            "red/empty.jpg": "empty file", "red/notes.txt": "not an image"}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Class folders with awkward and unusable files, and more images than one batch takes to run."""
    root = awkward_images(tmp_path_factory.mktemp("campaign") / "images")
    make_colour_images(root, per_class=10, seed=1)
    return root


def args(model, data, report, *extra):
    return [f"--model_path={model}", f"--dataset_dir={data}", f"--report_dir={report}", *SETTINGS, *extra]


def outputs(report):
    """The files of a run; report.json without the report folder it records among the settings."""
    files = {name: (report / name).read_bytes() for name in OUTPUTS}
    files["report.json"] = json.loads(files["report.json"])
    del files["report.json"]["settings"]["report_dir"]
    return files


def csv_rows(path):
    return list(csv.DictReader(open(path, newline="")))


def test_a_killed_run_continues_to_the_files_of_an_uninterrupted_run(tiny_smolvlm, campaign, tmp_path):
    run_script("vlm_test.py", *args(tiny_smolvlm, campaign, tmp_path / "whole", "--batch_size=2"), cwd=tmp_path)
    expected = outputs(tmp_path / "whole")
    skipped = csv_rows(tmp_path / "whole" / "skipped.csv")
    assert {r["path"].removeprefix(f"{campaign}/"): r["reason"].split(" (")[0] for r in skipped} == UNUSABLE
    total = len(csv_rows(tmp_path / "whole" / "predictions.csv")) + len(skipped)

    # Killed outright once some batches are written: the rows so far are on disk, flushed as each batch finished.
    report = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "vlm_test.py"), *args(tiny_smolvlm, campaign, report),
                             "--batch_size=2"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 120
    try:
        while not (report / "progress.json").is_file() or json.loads((report / "progress.json").read_text())["done"] < 6:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = json.loads((report / "progress.json").read_text())["done"]
    assert 6 <= done < total, "killed too late to test anything"
    assert 0 < len(csv_rows(report / "predictions.csv")) < total and not (report / "report.json").exists()
    # A kill in the middle of a write leaves half a line; it must not become a row.
    with open(report / "predictions.csv", "a") as f:
        f.write(f"{campaign}/red/red_1")

    again = run_script("vlm_test.py", *args(tiny_smolvlm, campaign, report, "--batch_size=2"), cwd=tmp_path).stdout
    assert re.search(rf"continuing an interrupted run: (\d+) of {total} images", again).group(1) == str(done)
    # Only the rest was predicted (the progress bar starts where the killed run stopped), and the files are the
    # uninterrupted run's, byte for byte; the reports count every image, not only this run's.
    assert outputs(report) == expected
    assert expected["report.json"]["total"] == total - len(UNUSABLE)

    # Started again once finished, it predicts nothing and leaves the files as they are.
    finished = run_script("vlm_test.py", *args(tiny_smolvlm, campaign, report, "--batch_size=2"), cwd=tmp_path)
    assert f"all {total} images were predicted already" in finished.stdout and outputs(report) == expected


def test_other_settings_are_refused_unless_overwrite_is_asked(tiny_smolvlm, campaign, tmp_path):
    data = tmp_path / "few"
    for name in ("red", "blue"):
        (data / name).mkdir(parents=True)
        for i in range(2):
            (data / name / f"{i}.png").write_bytes((campaign / name / f"{name}_{i:02d}.png").read_bytes())
    report = tmp_path / "report"
    run_script("vlm_test.py", *args(tiny_smolvlm, data, report), cwd=tmp_path)
    before = outputs(report)

    changed = run_script("vlm_test.py", *args(tiny_smolvlm, data, report, "--prediction=generate"), cwd=tmp_path,
                         check=False)
    assert changed.returncode == 1 and "Traceback" not in changed.stderr
    assert 'other settings (prediction: "score" -> "generate")' in changed.stderr
    assert "--resume=overwrite" in changed.stderr and outputs(report) == before
    # A retrained model in the same folder is another model.
    weights = tiny_smolvlm / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        retrained = run_script("vlm_test.py", *args(tiny_smolvlm, data, report), cwd=tmp_path, check=False)
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert retrained.returncode == 1 and "(model_files: " in retrained.stderr
    (data / "red" / "2.png").write_bytes((campaign / "red" / "red_02.png").read_bytes())
    more = run_script("vlm_test.py", *args(tiny_smolvlm, data, report), cwd=tmp_path, check=False)
    assert more.returncode == 1 and "image_count: 4 -> 5" in more.stderr

    run_script("vlm_test.py", *args(tiny_smolvlm, data, report, "--prediction=generate", "--resume=overwrite"),
               cwd=tmp_path)
    rows = csv_rows(report / "predictions.csv")
    assert len(rows) == 5 and all(r["probability"] == "" for r in rows)  # generate mode's rows only


def test_each_image_is_decoded_once(tiny_smolvlm, campaign, tmp_path, monkeypatch):
    """The check that a file can be used is its decode for the model: not a second pass over the folder."""
    from PIL import ImageFile

    import vlm_test
    decoded = Counter()
    load = ImageFile.ImageFile.load

    def counting_load(image):
        if image.tile:  # an image not decoded yet
            decoded[image.filename] += 1
        return load(image)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    from accelerate.state import PartialState
    for name, value in {"MODEL_PATH": str(tiny_smolvlm), "DATASET_DIR": str(campaign), "REPORT_DIR": str(tmp_path),
                        "IMAGE_LONGEST_EDGE": 512, "IMAGE_SPLITTING": False, "NUM_WORKERS": 0, "DEVICE": "cpu"}.items():
        monkeypatch.setattr(vlm_test, name, value)
    try:
        vlm_test.main()
    finally:
        PartialState._reset_state()
    predicted = [r["path"] for r in csv_rows(tmp_path / "predictions.csv")]
    # the contact sheet of suspected label errors decodes the images it shows once more, to draw them
    shown = {r["path"] for r in csv_rows(tmp_path / "label_issues.csv")[:SHEET_COUNT]}
    assert len(predicted) > 30 and set(predicted) <= set(decoded)
    assert {p: decoded[p] - (p in shown) for p in decoded} == dict.fromkeys(decoded, 1)


def test_two_processes_under_torchrun_write_what_one_process_writes(tiny_smolvlm, campaign, tmp_path):
    run_script("vlm_test.py", *args(tiny_smolvlm, campaign, tmp_path / "one", "--batch_size=3"), cwd=tmp_path)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "vlm_test.py"), *args(tiny_smolvlm, campaign, tmp_path / "two", "--batch_size=3")],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout}\n{proc.stderr}"
    one, two = tmp_path / "one", tmp_path / "two"
    # Each process took its share of the batches (3 images each, every other batch); the main process wrote.
    shares = {int(rank): int(n) for rank, n in re.findall(r"process (\d) of 2: (\d+) images", proc.stdout)}
    files = len(csv_rows(one / "predictions.csv")) + len(csv_rows(one / "skipped.csv"))
    assert set(shares) == {0, 1} and sum(shares.values()) == files and abs(shares[0] - shares[1]) <= 3
    assert proc.stdout.count("Total Correct") == 1
    # The same rows in the same order. Each torchrun process runs one thread, whose sums may round otherwise
    # than two threads' in the last digit of a probability.
    expected, got = csv_rows(one / "predictions.csv"), csv_rows(two / "predictions.csv")
    assert [{**r, "probability": None} for r in got] == [{**r, "probability": None} for r in expected]
    assert [float(r["probability"]) for r in got] == pytest.approx([float(r["probability"]) for r in expected],
                                                                    abs=2e-6)
    assert (two / "skipped.csv").read_bytes() == (one / "skipped.csv").read_bytes()
    reports = [json.loads((folder / "report.json").read_text()) for folder in (one, two)]
    assert reports[0]["confusion_matrix"] == reports[1]["confusion_matrix"]
    assert reports[0]["per_class"] == reports[1]["per_class"]
