"""QUANTIZE=int8: int8 weights in the linear layers on the CPU, predicting as float32 does."""
import gc
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_tiny, red_image, report_in, run_script
from vlmcls.cli import UserError
from vlmcls.images import read_dataset_json
from vlmcls.models import load_int8_model, load_model, quantize_model
from vlmcls.prediction import evaluate


def test_int8_replaces_every_linear_layer_and_predicts_as_float32(fine_tuned_smolvlm):
    processor, model = load_tiny(fine_tuned_smolvlm / "finetuned")
    data = read_dataset_json(fine_tuned_smolvlm / "solar_panel_test_dataset.json")
    args = ([s["image"] for s in data["samples"]], data["question"], data["classes"], "score", 8,
            data["max_image_pixels"])
    fp32 = evaluate(model, processor, *args)
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    int8_model = quantize_model(model, "int8", "cpu")
    int8 = evaluate(int8_model, processor, *args)
    assert linear > 20 and not any(isinstance(m, torch.nn.Linear) for m in int8_model.modules())
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8_model.modules()) == linear
    same = sum(a["pred"] == b["pred"] for a, b in zip(fp32, int8))
    differences = [abs(a["probs"][c] - b["probs"][c]) for a, b in zip(fp32, int8) for c in data["classes"]]
    assert same >= 0.9 * len(fp32)
    assert 0 < max(differences) < 0.05  # int8 changes the numbers, a little


def test_int8_is_refused_off_the_cpu_and_from_half_precision(tiny_smolvlm):
    _, model = load_tiny(tiny_smolvlm)
    assert quantize_model(model, "none", "cuda") is model
    with pytest.raises(UserError, match="CPU only"):
        quantize_model(model, "int8", "cuda")
    with pytest.raises(UserError, match="float32 weights, not torch.bfloat16"):
        quantize_model(model.to(torch.bfloat16), "int8", "cpu")


def test_evaluation_scripts_run_int8_and_record_it(fine_tuned_smolvlm):
    work = fine_tuned_smolvlm
    out = run_script("vlm_benchmark_test_dataset.py", "--model_path=finetuned", "--quantize=int8",
                     "--report_dir=int8", cwd=work).stdout
    report = report_in(work / "int8")
    assert "cpu, int8)" in out and report["settings"]["quantize"] == "int8" and report["accuracy"] >= 0.9
    refused = run_script("vlm_test.py", "--model_path=finetuned", "--dataset_dir=data", "--quantize=int8",
                         "--device=cuda", cwd=work, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "quantize=int8 runs on the CPU only" in refused.stderr
    wrong = run_script("vlm_test.py", "--quantize=int4", cwd=work, check=False)
    assert wrong.returncode == 2 and "'int4' is not valid: use none, int8" in wrong.stderr


@pytest.fixture(scope="module")
def tied_sharded_bf16_llava(tmp_path_factory, tiny_llava):
    """The tiny LLaVA with its output layer tied to the input embeddings, saved in bfloat16 in several shards."""
    from transformers import AutoConfig, LlavaForConditionalGeneration
    folder = tmp_path_factory.mktemp("models") / "tied-llava"
    shutil.copytree(tiny_llava, folder)
    for path in folder.glob("model*.safetensors"):
        path.unlink()
    config = AutoConfig.from_pretrained(tiny_llava)
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    torch.manual_seed(1)
    model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


def logits(processor, model):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    with torch.inference_mode():
        return model(**processor(text=[text], images=[[red_image()]], return_tensors="pt")).logits


@pytest.mark.parametrize("name", ["fine_tuned_smolvlm", "tiny_llava", "tied_sharded_bf16_llava"])
def test_lean_int8_load_is_the_quantised_model_exactly(name, request):
    folder = request.getfixturevalue(name)
    folder = folder / "finetuned" if name == "fine_tuned_smolvlm" else folder
    processor, model = load_tiny(folder)
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    assert tied == (name == "tied_sharded_bf16_llava")
    old = quantize_model(model, "int8", "cpu")
    lean = load_int8_model(str(folder))
    assert [type(m) for m in lean.modules()] == [type(m) for m in old.modules()]
    assert lean.get_input_embeddings().weight.dtype == torch.float32
    assert torch.equal(logits(processor, lean), logits(processor, old))


def mapped_files():
    return Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("name", ["tiny_smolvlm", "tiny_llava"])
def test_lean_int8_load_keeps_no_float_linear_weight_and_no_mapping_of_the_weights(name, request, tmp_path):
    folder = shutil.copytree(request.getfixturevalue(name), tmp_path / "model")  # a path only this test maps
    weights = sorted(str(path) for path in folder.glob("model*.safetensors"))
    fp32 = load_model(str(folder), torch.float32)
    assert any(path in mapped_files() for path in weights)  # from_pretrained maps the file: the check sees it
    del fp32
    gc.collect()  # its reference cycles too, so that what stays mapped is the int8 model's
    model = load_int8_model(str(folder))
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules()) > 10
    assert not any(path in mapped_files() for path in weights)
