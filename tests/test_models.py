"""vlmcls.models and vlmcls.compat: loading, refusals of models that cannot be used, device and dtype choice."""
import pytest
import torch

import tiny_models
from conftest import run_script
from vlmcls import compat
from vlmcls.cli import UserError
from vlmcls.files import write_json
from vlmcls.models import load_processor, pick_device, pick_dtype


def test_a_processor_without_a_chat_template_is_refused(tiny_llava, tmp_path):
    processor = load_processor(str(tiny_llava))
    processor.chat_template = processor.tokenizer.chat_template = None
    processor.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no chat template"):
        load_processor(str(tmp_path))


def test_a_model_without_image_support_is_refused(tmp_path):
    """A text-only chat model: AutoProcessor gives its tokenizer, which has a chat template but takes no images."""
    from transformers import LlamaConfig
    tiny_models._tokenizer(["<s>", "</s>", "<pad>"], bos="<s>", eos="</s>", pad="<pad>",
                           chat_template=tiny_models.LLAVA_CHAT_TEMPLATE).save_pretrained(tmp_path)
    LlamaConfig(vocab_size=400, hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no image support"):
        load_processor(str(tmp_path))


def test_missing_model_is_a_clear_error(tmp_path):
    write_json(tmp_path / "t.json", {"classes": ["a"], "question": "q", "max_image_pixels": 10, "samples": []})
    proc = run_script("vlm_benchmark_test_dataset.py", "--model_path=./nowhere", "--test_json=t.json",
                      cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot load a processor from './nowhere'" in proc.stderr


def test_cpu_is_float32_and_a_named_device_is_kept():
    assert pick_dtype("cpu") == torch.float32 and pick_dtype("mps") == torch.float32
    assert pick_dtype("cpu", "bfloat16") == torch.bfloat16
    assert pick_device("cpu") == "cpu"
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert pick_device("auto") == "cpu"


def test_an_untested_library_version_is_one_clear_message(monkeypatch):
    monkeypatch.setattr(compat.metadata, "version", lambda name: "9.0.0")
    with pytest.raises(UserError, match=r"tested with in transformers 5\.x; transformers 9\.0\.0 is installed"):
        compat._check("transformers", "GenerationMixin._prepare_position_ids_for_generation")

    class NoPositions:
        pass
    with pytest.raises(UserError, match="transformers 9.0.0 is installed"):
        compat.generation_position_ids(NoPositions(), {"input_ids": None})


def test_library_versions_name_every_library():
    versions = compat.library_versions()
    assert set(versions) == {"python", "torch", "transformers", "trl", "peft", "accelerate", "datasets"}
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]


def test_the_fused_lm_head_scores_only_the_answers_with_the_same_loss_and_gradients(tiny_smolvlm, tmp_path,
                                                                                    monkeypatch):
    """compat.score_labelled_positions_only: on the CPU, TRL's fused LM head projects only the labelled positions
    (fails if the patch no longer reaches TRL: every position is projected), and the loss, metrics and gradients
    equal those of projecting every position (fails if it scores the wrong positions)."""
    from trl.trainer import utils
    from trl.trainer.utils import add_fused_lm_head

    from conftest import load_tiny, red_image
    from vlmcls.inputs import InputEncoder
    from vlmcls.models import end_token_ids
    from vlmcls.prompt import render_segments
    from vlmcls.objectives.answer import answer_only_collator
    processor, model = load_tiny(tiny_smolvlm)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    red_image().save(tmp_path / "red.png")
    ends = end_token_ids(processor, model)
    encoder = InputEncoder(processor, 10**8)
    batch = answer_only_collator(processor)([
        encoder.example(str(tmp_path / "red.png"), render_segments(processor, [("Colour?", answer)], ends), ends)
        for answer in ("red", "a dark shade of green")])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["labels"][:, 1:].numel() // 4
    projected = []
    chunked = utils._ChunkedLogProbFunction

    class Spy(chunked):
        @staticmethod
        def forward(ctx, hidden, *args):
            projected.append(hidden.shape[0])
            return chunked.forward(ctx, hidden, *args)
    monkeypatch.setattr(utils, "_ChunkedLogProbFunction", Spy)

    def run():
        model.zero_grad()
        out = model(**batch, fused_lm_head=True)
        out.loss.backward()
        weight = model.lm_head.weight.grad.clone()
        return out.loss.item(), out.entropy.sum().item(), out.is_top1.sum().item(), weight
    every = run()
    monkeypatch.setattr(utils, "_use_triton", utils._use_triton)  # undone after the test
    compat.score_labelled_positions_only()
    answers = run()
    assert projected == [batch["labels"][:, 1:].numel(), labelled]
    assert answers[:3] == pytest.approx(every[:3], rel=1e-5)
    assert torch.allclose(answers[3], every[3], atol=1e-6)


def test_a_trl_without_the_answers_only_switch_trains_on_with_a_note(monkeypatch, capsys):
    from trl.trainer import utils
    monkeypatch.delattr(utils, "_use_triton")
    compat.score_labelled_positions_only()
    assert "every position goes through the vocabulary" in capsys.readouterr().out
    assert not hasattr(utils, "_use_triton")
