"""vlmcls.report: metrics of known predictions, and the files agree with them."""
import csv
import json

import pytest
from PIL import Image

from vlmcls.prompt import NO_CLASS
from vlmcls.report import metrics, write_report


def test_metrics_of_known_predictions():
    true = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", NO_CLASS, "a"]
    m = metrics(true, pred, ["a", "b", "c"])
    assert m["labels"] == ["a", "b", "c", NO_CLASS]
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]]
    assert (m["correct"], m["total"], m["accuracy"]) == (3, 6, 0.5)
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)


def test_report_files_hold_the_metrics_and_the_settings(tmp_path):
    results = [{"answer": "a", "pred": "a", "probs": {"a": 0.9, "b": 0.1}, "top2": ["a", "b"]},
               {"answer": "zzz", "pred": NO_CLASS, "probs": None, "top2": [NO_CLASS]}]
    write_report(tmp_path, ["x.png", "y.png"], results, ["a", "b"], ["a", "b"], {"settings": {"batch_size": 8}})
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["correct"], report["total"], report["settings"]) == (1, 2, {"batch_size": 8})
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [(r["predicted_class"], r["probability"]) for r in rows] == [("a", "0.900000"), (NO_CLASS, "")]
    assert Image.open(tmp_path / "confusion_matrix.png").size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_matrix.png", "predictions.csv", "report.json"]
