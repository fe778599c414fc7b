"""vlmcls.training: which tokens carry labels, LoRA and freezing, resuming."""
import pytest
import torch

from conftest import COLOURS, load_tiny, red_image
from vlmcls.inputs import InputEncoder
from vlmcls.models import end_token_ids
from vlmcls.prompt import classification_question
from vlmcls.objectives.answer import answer_only_collator, chat_dataset
from vlmcls.prompt import chat_rows as rows
from vlmcls.training import checkpoint_to_resume, checkpointing, prepare_model

QUESTION = classification_question(list(COLOURS))
ANSWERS = ["red", "Physical-Damage"]  # one short and one multi-token answer, so the batch has padding

# How each family's chat renders an answer after the generation prompt, up to its end token.
FAMILIES = {"tiny_smolvlm": " {}<end_of_utterance>", "tiny_llava": " {}</s>"}


def labelled_spans(labels):
    """The unbroken runs of labelled positions in one row of labels."""
    spans, start = [], None
    for i, label in enumerate(labels.tolist() + [-100]):
        if label != -100 and start is None:
            start = i
        elif label == -100 and start is not None:
            spans.append((start, i))
            start = None
    return spans


def training_batch(folder, samples, **row_settings):
    processor, model = load_tiny(folder)
    data = {"question": QUESTION, "samples": samples}
    examples = chat_dataset(rows(data, **row_settings), InputEncoder(processor, 10**6), processor,
                            end_token_ids(processor, model))
    return processor, answer_only_collator(processor)([examples[i] for i in range(len(examples))])


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_answer_and_its_end_token_carry_labels(family, request, tmp_path):
    red_image().save(tmp_path / "red.png")
    samples = [{"image": str(tmp_path / "red.png"), "qa": [{"question": QUESTION, "answer": a}]} for a in ANSWERS]
    processor, batch = training_batch(request.getfixturevalue(family), samples, multi_turn=False)
    _, model = load_tiny(request.getfixturevalue(family))
    end_ids = end_token_ids(processor, model)
    for labels, input_ids, answer in zip(batch["labels"], batch["input_ids"], ANSWERS):
        (start, end), = labelled_spans(labels)
        assert processor.tokenizer.decode(labels[start:end].tolist()) == FAMILIES[family].format(answer)
        # The labels are the ids the model reads at those positions (the model shifts them itself): exactly the
        # answer's tokens as the chat tokenises them, then its end token.
        expected = processor.tokenizer(FAMILIES[family].format(answer), add_special_tokens=False)["input_ids"]
        assert labels[start:end].tolist() == input_ids[start:end].tolist() == expected
        assert expected[-1] in end_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_a_multi_turn_chat_labels_every_answer_and_its_end_token_and_nothing_else(family, request, tmp_path):
    red_image().save(tmp_path / "red.png")
    qa = [{"question": QUESTION, "answer": "red"}, {"question": "Describe it.", "answer": "A red panel."},
          {"question": "What is wrong?", "answer": "Nothing."}]
    samples = [{"image": str(tmp_path / "red.png"), "qa": qa}]
    processor, batch = training_batch(request.getfixturevalue(family), samples)
    _, only = training_batch(request.getfixturevalue(family), samples, train_questions="classification")
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert len(batch["input_ids"]) == 1  # one row, with the image's tokens once for all its answers
    assert (batch["input_ids"][0] == image_id).sum() == (only["input_ids"][0] == image_id).sum() > 0

    def answers(labels):
        return [processor.tokenizer.decode(labels[a:b].tolist()) for a, b in labelled_spans(labels)]
    assert answers(batch["labels"][0]) == [FAMILIES[family].format(q["answer"]) for q in qa]
    assert answers(only["labels"][0]) == [FAMILIES[family].format("red")]


@pytest.mark.parametrize("settings, vision_trained, others_trained", [
    ({}, True, True),
    ({"freeze_vision": True}, False, True),
    ({"use_lora": True}, False, True),
    ({"use_lora": True, "lora_vision": True}, True, True),
])
def test_prepare_model_trains_what_the_settings_say(tiny_smolvlm, settings, vision_trained, others_trained):
    _, model = load_tiny(tiny_smolvlm)
    model = prepare_model(model, **settings)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".vision_model." in n for n in trained) == vision_trained
    assert any(".text_model." in n for n in trained) == others_trained
    if settings.get("use_lora"):
        assert all("lora_" in n for n in trained)
    # "auto" recomputes activations exactly where the vision encoder trains; true and false are obeyed
    assert checkpointing("auto", model) is vision_trained
    assert checkpointing(True, model) is True and checkpointing(False, model) is False


def test_a_finished_run_is_not_replaced_and_a_bad_checkpoint_is_refused(tmp_path):
    from vlmcls.cli import UserError
    (tmp_path / "out").mkdir()
    assert checkpoint_to_resume(tmp_path / "out", "auto") is None
    (tmp_path / "out" / "train_log_history.json").write_text("[]")
    with pytest.raises(UserError, match="holds a finished run"):
        checkpoint_to_resume(tmp_path / "out", "auto")
    assert checkpoint_to_resume(tmp_path / "out", "overwrite") is None
    with pytest.raises(UserError, match="not a complete checkpoint folder"):
        checkpoint_to_resume(tmp_path / "out", str(tmp_path))


def lora_gradients(folder, batch, settings, checkpointing, skip):
    """The trainable parameters' gradients after one backward pass, and whether the encoder's output needed grad."""
    from vlmcls.models import find_vision_encoder
    _, model = load_tiny(folder)
    model.train()
    encoder = find_vision_encoder(model)
    torch.manual_seed(0)  # the same LoRA initialisation for both runs
    model = prepare_model(model, **settings, skip_frozen_backward=skip)
    if checkpointing:  # as the Trainer sets it up, input-gradient hook included
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    outputs = []
    encoder.register_forward_hook(lambda module, args, out: outputs.append(out.last_hidden_state.requires_grad))
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, outputs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("settings", [{"use_lora": True}, {"freeze_vision": True}])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_frozen_vision_encoder_is_not_differentiated(family, settings, checkpointing, request, tmp_path):
    red_image().save(tmp_path / "red.png")
    samples = [{"image": str(tmp_path / "red.png"), "qa": [{"question": QUESTION, "answer": "red"}]}]
    folder = request.getfixturevalue(family)
    _, batch = training_batch(folder, samples)
    before, before_out = lora_gradients(folder, batch, settings, checkpointing, skip=False)
    after, after_out = lora_gradients(folder, batch, settings, checkpointing, skip=True)
    assert after_out == [False]
    if checkpointing:  # what the input-gradient hook did before: the whole encoder was differentiated
        assert before_out == [True]
    assert before.keys() == after.keys() and before
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_flipped_tile_is_the_processors_tile_of_the_flipped_image(family, request, tmp_path):
    from PIL import Image, ImageOps

    from vlmcls.augment import augment
    processor, _ = load_tiny(request.getfixturevalue(family))
    generator = torch.Generator().manual_seed(0)
    # LLaVA's centre crop of an odd margin sits one pixel off-centre, so its mirror would be a pixel off: square there
    height = 48 if family == "tiny_smolvlm" else 64
    image = Image.fromarray(torch.randint(0, 256, (height, 64, 3), generator=generator, dtype=torch.uint8).numpy())
    encoder = InputEncoder(processor, 10**6, cache=False)
    _, tensors, _ = encoder.encode_image(image)

    class Always:  # every draw asks for the transform
        def random(self):
            return 0.0
    for how, flip in (("hflip", ImageOps.mirror), ("flips", lambda im: ImageOps.flip(ImageOps.mirror(im)))):
        flipped = augment(tensors, how, Always())
        _, expected, _ = encoder.encode_image(flip(image))
        for key in expected:
            # resampling weights mirror exactly; float sums in the mirrored order may differ in the last bit
            assert torch.allclose(flipped[key].float(), expected[key].float(), atol=1e-5), (how, key)
        assert not torch.equal(flipped["pixel_values"], tensors["pixel_values"])
    turned = augment(tensors, "dihedral", Always())["pixel_values"]
    assert torch.equal(turned, tensors["pixel_values"].flip([-1, -2]).transpose(-1, -2))


def test_augmentation_is_seeded_draws_every_variant_and_refuses_tile_grids(tiny_smolvlm, tmp_path):
    import random

    from vlmcls.cli import UserError
    from vlmcls.augment import augment
    pixels = torch.arange(2 * 2 * 3, dtype=torch.float32).view(1, 1, 3, 2, 2)
    tensors = {"pixel_values": pixels, "pixel_attention_mask": torch.ones(1, 1, 2, 2, dtype=torch.long)}
    assert augment(tensors, "none", random.Random(0)) is tensors

    def variants(how, seed):
        return [tuple(augment(tensors, how, rng)["pixel_values"].flatten().tolist())
                for rng in [random.Random(seed)] for _ in range(64)]
    assert variants("dihedral", 1) == variants("dihedral", 1) != variants("dihedral", 2)
    assert len(set(variants("hflip", 0))) == 2 and len(set(variants("flips", 0))) == 4
    assert len(set(variants("dihedral", 0))) == 8
    grid = {"pixel_values": torch.zeros(1, 5, 3, 2, 2)}
    with pytest.raises(UserError, match="one tile"):
        augment(grid, "hflip", random.Random(0))
