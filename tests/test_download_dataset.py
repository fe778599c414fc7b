"""download_dataset.py: class folders from Kaggle, elpv or a folder; unusable layouts refused, nothing half-written."""
import pytest
from PIL import Image

from conftest import run_script


def test_unusable_layouts_are_refused_with_what_was_found(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    proc = run_script("download_dataset.py", "--source=flat", "--dataset_dir=data", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "no class sub-folders found" in proc.stderr and "x.png" in proc.stderr
    (tmp_path / "flat" / "empty_class").mkdir()
    (tmp_path / "flat" / "cats").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "cats" / "c.png")
    proc = run_script("download_dataset.py", "--source=flat", "--dataset_dir=data", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "class folder(s) with no images: empty_class" in proc.stderr
    assert not (tmp_path / "data").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["flat"], "nothing half-written is left behind"


def test_kaggle_without_network_says_what_to_do(tmp_path):
    proc = run_script("download_dataset.py", cwd=tmp_path, check=False,
                      env={"KAGGLE_USERNAME": "nobody", "KAGGLE_KEY": "x", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "could not download 'pythonafroz/solar-panel-images'" in proc.stderr and "--source=" in proc.stderr
    assert not (tmp_path / "Faulty_solar_panel").exists()


def test_elpv_source_gives_four_classes_with_the_package_counts(tmp_path):
    pytest.importorskip("elpv_dataset")
    out = run_script("download_dataset.py", "--source=elpv", "--dataset_dir=elpv", cwd=tmp_path).stdout
    counts = {p.name: len(list(p.iterdir())) for p in (tmp_path / "elpv").iterdir()}
    assert counts == {"functional": 1508, "possibly-defective": 295, "likely-defective": 106, "defective": 715}
    assert "4 classes" in out
    run_script("download_dataset.py", "--source=elpv", "--dataset_dir=two", "--elpv_two_classes=true", cwd=tmp_path)
    counts = {p.name: len(list(p.iterdir())) for p in (tmp_path / "two").iterdir()}
    assert counts == {"functional": 1508 + 295, "defective": 106 + 715}
