"""The pipeline with a second architecture family: LLaVA (CLIP + Llama, `USER: ... ASSISTANT:` chat) beside SmolVLM.

Switching family is only --model_path; these tests check what must follow the model: the rendered
prompt, the labels, the answer scores and the refusals of models that cannot be used.
"""
import importlib
import sys

import pytest
import torch
from PIL import Image

import tiny_models
import vlm_common
from conftest import COLOURS, accuracy_from, run_script

QUESTION = vlm_common.classification_question(list(COLOURS))
ANSWERS = ["red", "Physical-Damage"]  # one short and one multi-token answer, so the batch has padding

# How each family's chat renders an answer after the generation prompt, up to its end token.
FAMILIES = {"tiny_smolvlm": " {}<end_of_utterance>", "tiny_llava": " {}</s>"}


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    torch.manual_seed(0)
    return tiny_models.build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="module")
def fine_tune():
    """fine_tune.py as a module; it reads its settings from the command line when imported."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["fine_tune.py"])
        return importlib.import_module("fine_tune")


def load(folder):
    processor = vlm_common.load_processor(str(folder))
    vlm_common.set_resolution(processor, 512, False)
    return processor, vlm_common.load_model(str(folder), torch.float32).eval()


def red_image(size=(64, 48)):
    return Image.new("RGB", size, COLOURS["red"])


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_answer_and_its_end_token_carry_labels(family, request, fine_tune):
    processor, model = load(request.getfixturevalue(family))
    collator = fine_tune.AnswerOnlyCollator(processor, vlm_common.end_token_ids(processor, model))
    batch = collator([{"images": [red_image()], **vlm_common.conversation(QUESTION, a)} for a in ANSWERS])
    for labels, answer in zip(batch["labels"], ANSWERS):
        positions = (labels != -100).nonzero().flatten()
        assert positions.tolist() == list(range(positions[0], positions[-1] + 1))  # one unbroken span
        assert processor.tokenizer.decode(labels[positions].tolist()) == FAMILIES[family].format(answer)


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_the_likelihood_of_the_answer_and_its_end_token(family, request):
    """The cached-prompt shortcut of predict_scores gives what one forward pass over the whole chat gives."""
    processor, model = load(request.getfixturevalue(family))
    images, classes = [red_image(), red_image((40, 90))], list(COLOURS)
    end_ids = vlm_common.end_token_ids(processor, model)
    prompt, completions = vlm_common.render(processor, QUESTION, classes, end_ids)
    expected = torch.zeros(len(images), len(classes))
    for i, image in enumerate(images):
        for j, answer in enumerate(vlm_common.class_answer_ids(processor, model, completions)):
            batch = processor(images=[[image]], text=[prompt], return_tensors="pt", add_special_tokens=False)
            ids = torch.cat([batch["input_ids"], torch.tensor([answer])], dim=1)
            with torch.no_grad():
                logp = model(**{**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits[0]
            start = batch["input_ids"].shape[1]
            expected[i, j] = sum(logp.log_softmax(-1)[start - 1 + k, t] for k, t in enumerate(answer))
    scores = vlm_common.predict_scores(model, processor, images, QUESTION, classes)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


def test_a_processor_without_a_chat_template_is_refused(tiny_llava, tmp_path):
    processor = vlm_common.load_processor(str(tiny_llava))
    processor.chat_template = processor.tokenizer.chat_template = None
    processor.save_pretrained(tmp_path)
    with pytest.raises(vlm_common.UserError, match="no chat template"):
        vlm_common.load_processor(str(tmp_path))


def test_a_model_without_image_support_is_refused(tmp_path):
    """A text-only chat model: AutoProcessor gives its tokenizer, which has a chat template but takes no images."""
    from transformers import LlamaConfig
    tiny_models._tokenizer(["<s>", "</s>", "<pad>"], bos="<s>", eos="</s>", pad="<pad>",
                           chat_template=tiny_models.LLAVA_CHAT_TEMPLATE).save_pretrained(tmp_path)
    LlamaConfig(vocab_size=400, hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path)
    with pytest.raises(vlm_common.UserError, match="no image support"):
        vlm_common.load_processor(str(tmp_path))


def test_llava_learns_the_classes_end_to_end(tiny_llava, colour_dataset, tmp_path):
    """Only --model_path names the family: LLaVA's processor settings, chat and end token follow the model."""
    run_script("download_dataset.py", f"--source={colour_dataset}", "--dataset_dir=images", cwd=tmp_path)
    run_script("generate_train_json.py", "--dataset_dir=images", "--question_templates=[]", cwd=tmp_path)
    trained = run_script("fine_tune.py", f"--model_path={tiny_llava}", "--output_dir=tuned", "--max_steps=50",
                         "--per_device_train_batch_size=4", "--gradient_accumulation_steps=1",
                         "--learning_rate=3e-3", "--warmup_steps=5", "--logging_steps=10", "--save_steps=1000",
                         "--gradient_checkpointing=false", cwd=tmp_path)
    assert "image_longest_edge ignored" in trained.stdout  # CLIP's fixed crop, said rather than silently dropped

    scored = run_script("vlm_benchmark_test_dataset.py", "--model_path=tuned", f"--compare_with={tiny_llava}",
                        "--report_dir=scored", cwd=tmp_path)
    tuned, untrained = scored.stdout.split("\n=== ")[1:]
    assert accuracy_from(untrained) <= 1 / len(COLOURS) + 0.01
    assert accuracy_from(tuned) >= 0.9, scored.stdout
    generated = run_script("vlm_benchmark_test_dataset.py", "--model_path=tuned", "--prediction=generate",
                           "--report_dir=generated", cwd=tmp_path)
    assert accuracy_from(generated.stdout) >= 0.9, generated.stdout  # it names the class and stops
