"""vlmcls.training: which tokens carry labels, LoRA and freezing, resuming."""
import pytest

from conftest import COLOURS, load_tiny, red_image
from vlmcls.models import end_token_ids
from vlmcls.prompt import classification_question, conversation
from vlmcls.training import AnswerOnlyCollator, checkpoint_to_resume, prepare_model

QUESTION = classification_question(list(COLOURS))
ANSWERS = ["red", "Physical-Damage"]  # one short and one multi-token answer, so the batch has padding

# How each family's chat renders an answer after the generation prompt, up to its end token.
FAMILIES = {"tiny_smolvlm": " {}<end_of_utterance>", "tiny_llava": " {}</s>"}


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_answer_and_its_end_token_carry_labels(family, request):
    processor, model = load_tiny(request.getfixturevalue(family))
    collator = AnswerOnlyCollator(processor, end_token_ids(processor, model))
    batch = collator([{"images": [red_image()], **conversation(QUESTION, a)} for a in ANSWERS])
    for labels, answer in zip(batch["labels"], ANSWERS):
        positions = (labels != -100).nonzero().flatten()
        assert positions.tolist() == list(range(positions[0], positions[-1] + 1))  # one unbroken span
        assert processor.tokenizer.decode(labels[positions].tolist()) == FAMILIES[family].format(answer)


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
