"""vlmcls.inputs: the model gets what the processor would give it, each image is encoded once, none is enlarged."""
import pytest
import torch
from PIL import Image

from conftest import load_tiny
from vlmcls import inputs
from vlmcls.inputs import InputEncoder, auto_workers, collate
from vlmcls.models import set_resolution
from vlmcls.prompt import render_segments

QUESTION = "Which colour is this?"


def noisy_image(path, size, seed):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return path


@pytest.mark.parametrize("family, splitting", [("tiny_smolvlm", False), ("tiny_smolvlm", True), ("tiny_llava", None)])
def test_batches_equal_what_the_processor_gives(family, splitting, request, tmp_path):
    processor, _ = load_tiny(request.getfixturevalue(family))
    set_resolution(processor, 1024 if splitting else None, splitting)
    # Both images are at least the longest edge, so the processor's one setting is right for both; with
    # splitting they make different numbers of tiles, so the batch has padding tiles too.
    paths = [noisy_image(tmp_path / "a.jpg", (1100, 700), 0), noisy_image(tmp_path / "b.png", (1030, 1030), 1)]
    prompt = render_segments(processor, [(QUESTION, None)])
    encoder = InputEncoder(processor, 10**8)
    batch = collate([encoder.example(p, prompt) for p in paths], processor.tokenizer.pad_token_id, "left")
    images = [[Image.open(p).convert("RGB")] for p in paths]
    expected = processor(images=images, text=[prompt[0][0]] * 2, padding=True, padding_side="left",
                         return_tensors="pt", add_special_tokens=False)
    del batch["labels"]
    assert set(batch) == set(expected)
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key
    if splitting:
        assert expected["pixel_values"].shape[1] > 1


def test_no_image_is_enlarged_and_tiles_follow_its_own_size(tiny_smolvlm, tmp_path):
    processor, _ = load_tiny(tiny_smolvlm)
    set_resolution(processor, 2048, True)  # SmolVLM's shipped setting
    small = noisy_image(tmp_path / "small.png", (300, 300), 0)
    large = noisy_image(tmp_path / "large.png", (1280, 960), 1)
    prompt = render_segments(processor, [(QUESTION, None)])

    def tiles(path, enlarge):
        return InputEncoder(processor, 10**8, enlarge=enlarge).example(path, prompt)["tensors"]["pixel_values"].shape[1]
    assert tiles(small, enlarge=True) == 17  # the processor's way: resized up to 2048 px
    assert tiles(small, enlarge=False) == 1
    own = processor(images=[[Image.open(large)]], text=[prompt[0][0]], size={"longest_edge": 1280},
                    return_tensors="pt", add_special_tokens=False)
    assert tiles(large, enlarge=False) == own["pixel_values"].shape[1] < tiles(large, enlarge=True)


def test_each_image_is_decoded_once_and_again_only_when_it_changes(tiny_smolvlm, tmp_path, monkeypatch):
    processor, _ = load_tiny(tiny_smolvlm)
    path = noisy_image(tmp_path / "a.png", (64, 48), 0)
    decoded = []
    real_load = inputs.load_image
    monkeypatch.setattr(inputs, "load_image", lambda p, m: decoded.append(p) or real_load(p, m))
    segments = render_segments(processor, [(QUESTION, "red")])
    encoder = InputEncoder(processor, 10**8)
    first = encoder.example(path, segments)
    for _ in range(3):  # epochs, and other questions about the same image
        assert torch.equal(encoder.example(path, segments)["tensors"]["pixel_values"],
                           first["tensors"]["pixel_values"])
    assert len(decoded) == 1
    noisy_image(path, (80, 60), 1)
    assert not torch.equal(encoder.example(path, segments)["tensors"]["pixel_values"],
                           first["tensors"]["pixel_values"])
    assert len(decoded) == 2


def test_a_disk_cache_is_reused_across_runs_and_not_across_settings(tiny_smolvlm, tmp_path, monkeypatch):
    processor, _ = load_tiny(tiny_smolvlm)
    paths = [noisy_image(tmp_path / f"{i}.png", (64, 48), i) for i in range(3)]
    segments = render_segments(processor, [(QUESTION, None)])
    expected = [InputEncoder(processor, 10**8, cache=False).example(p, segments) for p in paths]
    InputEncoder(processor, 10**8, cache_dir=tmp_path / "cache").prepare(paths, workers=2)
    decoded = []
    real_load = inputs.load_image
    monkeypatch.setattr(inputs, "load_image", lambda p, m: decoded.append(p) or real_load(p, m))
    again = InputEncoder(processor, 10**8, cache_dir=tmp_path / "cache")  # a later run
    for path, want in zip(paths, expected):
        got = again.example(path, segments)
        assert got["input_ids"] == want["input_ids"]
        assert torch.equal(got["tensors"]["pixel_values"], want["tensors"]["pixel_values"])
    assert decoded == []
    set_resolution(processor, 256, False)
    InputEncoder(processor, 10**8, cache_dir=tmp_path / "cache").example(paths[0], segments)
    assert decoded == [paths[0]]


def test_a_bad_file_stops_preparation_with_its_name(tiny_smolvlm, tmp_path):
    from vlmcls.cli import UserError
    processor, _ = load_tiny(tiny_smolvlm)
    paths = [noisy_image(tmp_path / f"{i}.png", (64, 48), i) for i in range(3)]
    paths[1].write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="1.png"):
        InputEncoder(processor, 10**8).prepare(paths, workers=2)


def test_workers_default_to_the_cores_shared_among_local_processes(monkeypatch):
    assert auto_workers(3) == 3
    monkeypatch.setattr(inputs.os, "sched_getaffinity", lambda _: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert auto_workers(-1) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_workers(-1) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert auto_workers(-1) == 0
