"""generate_train_json.py: the split is by image, stratified, seeded, and writes what it did."""
import json

from conftest import make_colour_images, run_script


def split(work, *args):
    run_script("generate_train_json.py", "--dataset_dir=images", *args, cwd=work)
    load = lambda name: json.loads((work / name).read_text())
    return load("solar_panel_train_dataset.json"), load("solar_panel_test_dataset.json")


def images_of(data):
    return [s["image"] for s in data["samples"]]


def test_no_image_in_both_files_and_every_class_in_both(tmp_path):
    make_colour_images(tmp_path / "images", per_class=7)
    train, test = split(tmp_path)
    assert not set(images_of(train)) & set(images_of(test))
    assert len(images_of(train)) + len(images_of(test)) == 21
    for data in (train, test):
        assert {s["label"] for s in data["samples"]} == {"red", "green", "blue"}
    assert train["counts"]["test"] == {"blue": 1, "green": 1, "red": 1}
    assert train["counts"]["train"] == {"blue": 6, "green": 6, "red": 6}


def test_two_images_per_class_still_give_one_test_image_each(tmp_path):
    make_colour_images(tmp_path / "images", per_class=2)
    train, test = split(tmp_path, "--train_ratio=0.9")
    assert sorted(s["label"] for s in test["samples"]) == ["blue", "green", "red"]
    assert sorted(s["label"] for s in train["samples"]) == ["blue", "green", "red"]


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    make_colour_images(tmp_path / "images", per_class=10)
    split(tmp_path)
    first = (tmp_path / "solar_panel_test_dataset.json").read_bytes()
    split(tmp_path)
    assert (tmp_path / "solar_panel_test_dataset.json").read_bytes() == first
    _, other = split(tmp_path, "--seed=7")
    assert json.dumps(other).encode() != first and set(images_of(other)) != set(images_of(json.loads(first)))


def test_question_uses_folder_names_as_spelled_and_paths_resolve_anywhere(tmp_path):
    make_colour_images(tmp_path / "images", per_class=3)
    (tmp_path / "images" / "red").rename(tmp_path / "images" / "Bird-drop")
    (tmp_path / "out").mkdir()
    run_script("generate_train_json.py", f"--dataset_dir={tmp_path / 'images'}", "--train_json=out/tr.json",
               "--test_json=out/te.json", "--question_templates=[]", cwd=tmp_path)
    data = json.loads((tmp_path / "out" / "tr.json").read_text())
    assert data["classes"] == ["Bird-drop", "blue", "green"]
    assert "Bird-drop, blue, green" in data["question"]
    assert all(s["qa"] == [{"question": data["question"], "answer": s["label"]}] for s in data["samples"])
    import vlm_common
    for sample in vlm_common.read_dataset_json(tmp_path / "out" / "tr.json")["samples"]:
        assert (tmp_path / "out" / sample["image"]).is_file()
