"""vlmcls.prediction: score mode is the likelihood of each class's answer; every mode names a class or says none."""
import math

import pytest
import torch
from PIL import Image

from conftest import COLOURS, load_tiny, red_image
from vlmcls.calibration import with_class_bias as shift
from vlmcls.inputs import InputEncoder, PromptBatches
from vlmcls.models import end_token_ids
from vlmcls.objectives import MODES, ranked
from vlmcls.objectives.answer import class_answer_ids, predict_scores
from vlmcls.prediction import evaluate
from vlmcls.prompt import NO_CLASS, classification_question, render, render_segments

QUESTION = classification_question(list(COLOURS))


@pytest.mark.parametrize("family", ["tiny_smolvlm", "tiny_llava"])
def test_scores_are_the_likelihood_of_the_answer_and_its_end_token(family, request):
    """The cached-prompt shortcut of predict_scores gives what one forward pass over the whole chat gives."""
    processor, model = load_tiny(request.getfixturevalue(family))
    images, classes = [red_image(), red_image((40, 90))], list(COLOURS)
    prompt, completions = render(processor, QUESTION, classes, end_token_ids(processor, model))
    expected = torch.zeros(len(images), len(classes))
    for i, image in enumerate(images):
        for j, answer in enumerate(class_answer_ids(processor, model, completions)):
            batch = processor(images=[[image]], text=[prompt], return_tensors="pt", add_special_tokens=False)
            ids = torch.cat([batch["input_ids"], torch.tensor([answer])], dim=1)
            with torch.no_grad():
                logp = model(**{**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits[0]
            start = batch["input_ids"].shape[1]
            expected[i, j] = sum(logp.log_softmax(-1)[start - 1 + k, t] for k, t in enumerate(answer))
    batch = PromptBatches(processor, QUESTION, 10**6, enlarge=True)(images)
    scores = predict_scores(model, processor, batch, QUESTION, classes)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


def test_untrained_model_in_every_mode_names_a_class_or_says_none(tiny_smolvlm, tmp_path):
    processor, model = load_tiny(tiny_smolvlm)
    paths = []
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (50, 40), colour).save(paths[-1])
    classes = ["red", "green", "blue"]
    scored = evaluate(model, processor, paths, "Colour?", classes, "score", 3, 10**6)
    generated = evaluate(model, processor, paths, "Colour?", classes, "generate", 3, 10**6)
    assert set(MODES) == {"score", "generate", "head"}  # the head mode: tests/test_head.py
    assert len(scored) == len(generated) == 4
    for r in scored:
        assert r["pred"] in classes
        assert sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["probs"][r["pred"]] == max(r["probs"].values())
    assert all(g["pred"] in classes + [NO_CLASS] for g in generated)


def test_a_file_that_is_not_an_image_stops_evaluation_with_its_name(tiny_smolvlm, tmp_path):
    from vlmcls.cli import UserError
    processor, model = load_tiny(tiny_smolvlm)
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for path in paths:
        Image.new("RGB", (50, 40), "red").save(path)
    paths[2].write_text("not an image")
    with pytest.raises(UserError, match="2.png: not an image"):
        evaluate(model, processor, paths, "Colour?", ["red", "green"], "score", 1, 10**6, workers=2)


def test_a_bias_shifts_the_log_probabilities_and_ranks_again():
    classes = ["a", "b", "c"]
    results = [ranked(classes, [0.6, 0.3, 0.1]), {"answer": "b!", "pred": "b", "probs": None, "top2": ["b"]}]
    assert shift(results, classes, [0.0, 0.0, 0.0])[0]["probs"] == pytest.approx(results[0]["probs"])
    moved = shift(results, classes, [0.0, 0.0, math.log(10)])
    # c's probability times 10, then all of them normalised: 0.6, 0.3, 1.0 over 1.9
    assert moved[0]["probs"] == pytest.approx({"a": 0.6 / 1.9, "b": 0.3 / 1.9, "c": 1.0 / 1.9})
    assert moved[0]["pred"] == moved[0]["answer"] == "c" and moved[0]["top2"] == ["c", "a"]
    assert moved[1] == results[1]  # a written answer has no probabilities to shift
    assert results[0]["pred"] == "a"  # the results given are left as they were


class OwnQuestion:
    """An encoder that asks each image its own question. LLaVA-1.5 makes every image the same number of tokens, so
    only prompts of different lengths make its batches padded."""

    def __init__(self, encoder, processor, questions):
        self.encoder = encoder
        self.segments = {image: render_segments(processor, [(q, None)]) for image, q in questions.items()}

    def example(self, image, segments):
        return self.encoder.example(image, self.segments[image])


@pytest.mark.parametrize("family, splitting", [("tiny_smolvlm", True), ("tiny_llava", None)])
def test_a_left_padded_batch_scores_each_image_as_it_scores_alone(family, splitting, request, tmp_path):
    """Padding, padding tiles and the positions of a left-padded batch change no image's scores."""
    from vlmcls.models import set_resolution
    processor, model = load_tiny(request.getfixturevalue(family))
    set_resolution(processor, 1024 if splitting else None, splitting)
    classes = list(COLOURS)
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i, size in enumerate([(1100, 700), (300, 200), (1030, 1030)]):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    questions = [QUESTION, "Colour?", QUESTION + " Look closely at the whole picture before you answer."]
    encoder = OwnQuestion(InputEncoder(processor, 10**8, cache=False), processor, dict(zip(paths, questions)))
    prompts = PromptBatches(processor, QUESTION, 10**8, enlarge=False, encoder=encoder)
    batch = prompts(paths)
    together = predict_scores(model, processor, batch, QUESTION, classes)
    alone = torch.cat([predict_scores(model, processor, prompts([p]), QUESTION, classes) for p in paths])
    assert (batch["attention_mask"] == 0).sum(1).unique().numel() == len(paths)  # each image padded by its own amount
    if splitting:  # the images make different numbers of tiles, so some are padded with empty tiles
        assert (batch["pixel_attention_mask"] == 0).any()
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
