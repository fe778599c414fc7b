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
