"""vlmcls.inputs: the model gets what the processor would give it, each image is encoded once, none is enlarged."""
import pytest
import torch
from PIL import Image

from conftest import load_tiny
from vlmcls import inputs, pixels
from vlmcls.inputs import InputEncoder, auto_workers, collate, longest_edge_for
from vlmcls.models import load_processor, set_resolution
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
    assert bool(encoder.arithmetic) == (family == "tiny_smolvlm")  # SmolVLM's went the fast way (vlmcls.pixels)


def processor_part(processor, image, enlarge=False):
    """What the processor itself makes of one image: its token ids and pixel tensors."""
    out = processor(images=[[image]], text=[processor.image_token], add_special_tokens=False, return_tensors="pt",
                    **longest_edge_for(processor.image_processor, image, enlarge))
    return out.pop("input_ids")[0].tolist(), {k: v for k, v in out.items() if k != "attention_mask"}


@pytest.mark.parametrize("edge, splitting, enlarge", [(512, False, False), (300, False, True), (512, True, False),
                                                      (1024, True, False), (2048, True, True), (None, None, False)])
def test_the_fast_path_gives_the_processors_tensors_exactly(edge, splitting, enlarge, tiny_smolvlm, monkeypatch):
    # None: the processor as loaded from its folder, as evaluation uses it (its sizes are then SizeDicts)
    processor = load_processor(str(tiny_smolvlm))
    set_resolution(processor, edge, splitting)
    generator = torch.Generator().manual_seed(edge or 0)
    sizes = [(800, 600), (600, 800), (300, 200), (199, 301), (1030, 1030), (1100, 700), (513, 97), (77, 1999)]
    images = [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy())
              for w, h in sizes]
    through_processor = []
    real = InputEncoder._processor_part
    monkeypatch.setattr(InputEncoder, "_processor_part",
                        lambda self, *a: through_processor.append(1) or real(self, *a))
    encoder = InputEncoder(processor, 10**8, enlarge=enlarge, cache=False)
    for image in images:
        ids, tensors, _ = encoder.encode_image(image)
        want_ids, want = processor_part(processor, image, enlarge)
        assert ids == want_ids
        assert tensors.keys() == want.keys()
        for key in want:  # bit for bit, dtype and shape included
            assert tensors[key].dtype == want[key].dtype and torch.equal(tensors[key], want[key]), key
    assert encoder.arithmetic
    # The processor ran once per tile layout, to check the first image of it and give its token ids.
    assert len(through_processor) == len(encoder.layouts) < len(images)


def test_an_image_or_setting_the_fast_path_does_not_handle_goes_through_the_processor(tiny_smolvlm):
    processor, _ = load_tiny(tiny_smolvlm)
    grey = Image.fromarray(torch.randint(0, 256, (600, 800), dtype=torch.uint8).numpy())
    assert not pixels.handles(processor.image_processor, grey)
    encoder = InputEncoder(processor, 10**8, cache=False)
    processor.image_processor.do_normalize = False
    colour = grey.convert("RGB")
    assert not pixels.handles(processor.image_processor, colour)
    for image in (grey, colour):
        ids, tensors, _ = encoder.encode_image(image)
        want_ids, want = processor_part(processor, image)
        assert ids == want_ids and all(torch.equal(tensors[k], want[k]) for k in want)


def test_should_the_fast_path_ever_differ_the_processor_takes_over(tiny_smolvlm, monkeypatch, capsys):
    processor, _ = load_tiny(tiny_smolvlm)
    real = pixels.pixel_values

    def off_by_a_little(*args, **kwargs):
        values, *rest = real(*args, **kwargs)
        return (values + 1e-6, *rest)
    monkeypatch.setattr(inputs, "pixel_values", off_by_a_little)
    encoder = InputEncoder(processor, 10**8, cache=False)
    images = [Image.fromarray(torch.randint(0, 256, (600, 800, 3), dtype=torch.uint8).numpy()) for _ in range(2)]
    for image in images:
        assert torch.equal(encoder.encode_image(image)[1]["pixel_values"], processor_part(processor, image)[1][
            "pixel_values"])
    assert encoder.arithmetic is False
    assert "through the processor from now on" in capsys.readouterr().out


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
