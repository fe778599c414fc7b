"""objective=head: training through fine_tune.py, saving and loading, the evaluation scripts, cached states, resume."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import COLOURS, accuracy_in, load_tiny, make_colour_images, report_in, run_script
from vlmcls.objectives.head import HEAD_FILE, attach_head, class_weights, head_loss
from vlmcls.prompt import classification_question

CLASSES = sorted(COLOURS)
QUESTION = classification_question(CLASSES)
FAST = ["--objective=head", "--per_device_train_batch_size=4", "--gradient_accumulation_steps=1", "--warmup_steps=3",
        "--logging_steps=10", "--num_workers=0", "--min_validation_images=1"]


@pytest.fixture(scope="module")
def colour_work(tmp_path_factory):
    """A work folder with colour images and their training, validation and test JSON."""
    work = tmp_path_factory.mktemp("head")
    make_colour_images(work / "data", per_class=12)
    run_script("generate_train_json.py", "--dataset_dir=data", "--train_ratio=0.5", "--val_ratio=0.25", cwd=work)
    return work


def head_weights(folder):
    with safe_open(str(Path(folder) / HEAD_FILE), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# (family, fine_tune.py settings): full fine-tuning, LoRA with its merge, and the frozen backbone's cached states
TRAINED = {
    "smolvlm_full": ("tiny_smolvlm", ["--learning_rate=3e-3"]),
    "llava_lora": ("tiny_llava", ["--use_lora=true", "--learning_rate=3e-3"]),
    "smolvlm_frozen": ("tiny_smolvlm", ["--freeze_backbone=true", "--learning_rate=3e-2"]),
    "llava_frozen": ("tiny_llava", ["--freeze_backbone=true", "--learning_rate=3e-2"]),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "llava_frozen" else n
                                  for n in TRAINED])
def test_the_head_learns_the_colours_and_the_scripts_classify_with_it(name, colour_work, request):
    family, settings = TRAINED[name]
    out = colour_work / name
    run_script("fine_tune.py", f"--model_path={request.getfixturevalue(family)}", f"--output_dir={name}",
               "--max_steps=30", "--eval_steps=10", *FAST, *settings, cwd=colour_work)
    saved = json.loads((out / "classes.json").read_text())
    assert saved["objective"] == "head" and saved["class_bias"] is not None
    assert head_weights(out)["weight"].shape[0] == len(CLASSES)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:  # the base model's file stays loadable
        assert not any("classifier" in key for key in f.keys())

    run_script("vlm_benchmark_test_dataset.py", f"--model_path={name}", f"--report_dir={name}_test", "--num_workers=0",
               cwd=colour_work)
    assert accuracy_in(colour_work / f"{name}_test") >= 0.9
    run_script("vlm_test.py", f"--model_path={name}", "--dataset_dir=data", f"--report_dir={name}_full",
               "--num_workers=0", cwd=colour_work)
    report = report_in(colour_work / f"{name}_full")
    assert report["accuracy"] >= 0.9 and report["total"] == 3 * 12
    assert report["prediction"] == "head"  # the report says how the images were classified
    refused = run_script("vlm_benchmark_test_dataset.py", f"--model_path={name}", "--prediction=generate",
                         "--num_workers=0", cwd=colour_work, check=False)
    assert refused.returncode == 1 and "objective=head" in refused.stderr


def test_int8_classifies_as_float32_does(fine_tuned_head):
    for quantize in ("none", "int8"):
        run_script("vlm_benchmark_test_dataset.py", "--model_path=head", f"--quantize={quantize}",
                   f"--report_dir={quantize}_report", "--num_workers=0", cwd=fine_tuned_head)
    assert accuracy_in(fine_tuned_head / "int8_report") == accuracy_in(fine_tuned_head / "none_report") >= 0.9


def test_a_loaded_head_names_each_probability_by_the_class_it_was_trained_for(fine_tuned_head):
    """Asked for its classes in another order (a test JSON's, a typed list), the head's probabilities stay with
    their classes; other classes than its own are refused. Labelling the logits in the asked order, as before,
    swapped the classes' probabilities."""
    from vlmcls.cli import UserError
    from vlmcls.objectives import load_for_inference
    from vlmcls.prediction import evaluate
    from vlmcls.saved import open_classifier
    saved = open_classifier(fine_tuned_head / "head")
    trained = saved.classes
    processor, loaded = load_for_inference(saved, device="cpu", dtype=torch.float32, image_longest_edge=None,
                                           image_splitting=None, quantize="none")
    paths = [str(p) for c in trained for p in sorted((fine_tuned_head / "data" / c).glob("*.png"))[:1]]

    def probs(classes):
        return evaluate(loaded, processor, paths, saved.question, classes, "score", 4, 10**7)
    asked, reversed_ = probs(trained), probs(trained[::-1])
    assert [r["pred"] for r in asked] == [r["pred"] for r in reversed_] == trained  # each colour's image
    for a, b in zip(asked, reversed_):
        assert b["probs"] == pytest.approx(a["probs"], abs=1e-6)
    with pytest.raises(UserError, match="head scores"):
        probs(trained[:-1] + ["purple"])


def colour_paths(folder):
    return [str(p) for name in CLASSES for p in sorted((Path(folder) / name).glob("*.png"))[:2]]


def head_probs(model, processor, paths):
    from vlmcls.prediction import evaluate
    results = evaluate(model, processor, paths, QUESTION, CLASSES, "score", 4, 10**7, desc="head")
    return torch.tensor([[r["probs"][c] for c in CLASSES] for r in results])


class SavingTrainer:
    """What save_merged_lora asks of the Trainer, for a model trained here without one."""

    def __init__(self, model):
        self.model = model

    def save_model(self, folder):
        self.model.save_pretrained(folder)

    def is_world_process_zero(self):
        return True


@pytest.mark.parametrize("family", ["tiny_smolvlm", "tiny_llava"])
@pytest.mark.parametrize("lora", [False, True])
def test_probabilities_are_equal_after_saving_and_loading(family, lora, colour_dataset, request, tmp_path):
    from vlmcls.objectives import head, load_for_inference
    from vlmcls.saved import open_classifier
    from vlmcls.training import prepare_model, save_merged_lora
    folder = request.getfixturevalue(family)
    processor, model = load_tiny(folder)
    torch.manual_seed(1)
    model = prepare_model(attach_head(model, len(CLASSES)), use_lora=lora)
    with torch.no_grad():  # as if trained: LoRA's B is zero at first, and the head's trained copy is peft's own
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    paths = colour_paths(colour_dataset)
    before = head_probs(model, processor, paths)
    out = tmp_path / "saved"
    if lora:
        save_merged_lora(SavingTrainer(model), out, str(folder), head, len(CLASSES))
    else:
        head.save(model, out, model.save_pretrained)
    processor.save_pretrained(out)
    (out / "classes.json").write_text(json.dumps({"classes": CLASSES, "question": QUESTION, "objective": "head"}))
    processor, loaded = load_for_inference(open_classifier(out), device="cpu", dtype=torch.float32,
                                           image_longest_edge=None, image_splitting=None, quantize="none")
    after = head_probs(loaded, processor, paths)
    assert not torch.allclose(before, torch.full_like(before, 1 / len(CLASSES)), atol=0.02)  # a head that decides
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_the_app_gives_the_heads_probabilities(colour_dataset, tiny_smolvlm):
    from vlmcls.app import classify_files
    from vlmcls.prediction import TorchPredictor
    processor, model = load_tiny(tiny_smolvlm)
    torch.manual_seed(2)
    attach_head(model, len(CLASSES))
    paths = colour_paths(colour_dataset)
    expected = head_probs(model, processor, paths)
    ranked, _, problems = classify_files(TorchPredictor(model, processor), paths, CLASSES, QUESTION, batch_size=4,
                                         max_pixels=10**7)
    assert not problems
    shown = {(image, name): probability for image, classes, *_ in ranked for name, probability in classes}
    for path, row in zip(paths, expected):
        for name, probability in zip(CLASSES, row.tolist()):
            assert shown[Path(path).name, name] == pytest.approx(probability, abs=1e-6)


@pytest.mark.parametrize("family", ["tiny_smolvlm", pytest.param("tiny_llava", marks=pytest.mark.slow)])
def test_cached_states_train_the_head_the_backbone_would_train(family, colour_work, request):
    folder = request.getfixturevalue(family)
    heads = []
    for cached in ("true", "false"):
        name = f"cache_{cached}_{family}"
        proc = run_script("fine_tune.py", f"--model_path={folder}", f"--output_dir={name}", "--max_steps=6",
                          "--freeze_backbone=true", f"--cache_frozen_states={cached}", "--val_json=", "--test_json=",
                          "--learning_rate=3e-2", "--save_steps=100", *FAST, cwd=colour_work)
        heads.append(head_weights(colour_work / name))
        # With the states cached the backbone never runs again: no encoder outputs are kept for it.
        assert ("vision encoder:" in proc.stdout) == (cached == "false"), proc.stdout
    for key in heads[0]:
        torch.testing.assert_close(heads[0][key], heads[1][key], rtol=1e-4, atol=1e-5)


def test_a_resumed_run_ends_with_the_head_of_an_uninterrupted_one(colour_work, tiny_smolvlm):
    args = [f"--model_path={tiny_smolvlm}", "--output_dir=resumed", "--max_steps=6", "--save_steps=3",
            "--val_json=", "--test_json=", "--use_lora=true", "--learning_rate=3e-3", *FAST]
    run_script("fine_tune.py", *args, cwd=colour_work)
    whole = head_weights(colour_work / "resumed")
    out = colour_work / "resumed"
    # As if the run had died after its first checkpoint: the later checkpoint and the finished marks are gone.
    for leftover in ("checkpoint-6", "train_log_history.json", HEAD_FILE):
        target = out / leftover
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    proc = run_script("fine_tune.py", *args, cwd=colour_work)
    assert "resuming from resumed/checkpoint-3" in proc.stdout
    resumed = head_weights(out)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key])


@pytest.mark.parametrize("settings, message", [
    (["--objective=answer", "--freeze_backbone=true"], "objective=head only"),
    (["--objective=answer", "--class_balance=weighted"], "objective=head only"),
    (["--objective=head", "--freeze_backbone=true", "--use_lora=true"], "LoRA adapters would stay untrained"),
    (["--objective=head", "--freeze_backbone=true", "--augment=hflip"], "augment=none"),
])
def test_settings_that_mean_nothing_together_are_refused(settings, message, colour_work):
    proc = run_script("fine_tune.py", "--model_path=unused", *settings, cwd=colour_work, check=False)
    assert proc.returncode == 1 and message in proc.stderr


def test_weighted_loss_weighs_each_class_by_its_inverse_frequency():
    labels = ["red"] * 6 + ["green"] * 2 + ["blue"]
    weights = class_weights(labels, ["red", "green", "blue"], "weighted")
    assert weights == pytest.approx([9 / 18, 9 / 6, 9 / 3])
    assert class_weights(labels, ["red", "green", "blue"], "none") is None

    class Logits(torch.nn.Module):  # a model whose head gave these logits
        def forward(self, pooled):
            from transformers.modeling_outputs import SequenceClassifierOutput
            return SequenceClassifierOutput(logits=pooled)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    targets = torch.tensor([0, 1, 2])
    loss, _ = head_loss(Logits(), {"pooled": logits, "labels": targets}, weights, 0.0)
    per_image = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = (per_image * torch.tensor(weights)).sum() / sum(weights)
    torch.testing.assert_close(loss, expected)


def test_a_padded_batch_pools_each_prompts_own_last_token(tiny_smolvlm, tmp_path):
    """Images of different tile counts make prompts of different lengths: training pads them on the right,
    prediction on the left; either way each image's state and probabilities are those it has alone."""
    from PIL import Image

    from vlmcls.objectives.head import pooled_state
    from vlmcls.inputs import InputEncoder, collate
    from vlmcls.models import set_resolution
    from vlmcls.prediction import evaluate
    from vlmcls.prompt import render_segments
    processor, model = load_tiny(tiny_smolvlm)
    set_resolution(processor, 1024, True)
    torch.manual_seed(3)
    attach_head(model, len(CLASSES))
    paths = []
    for name, size in (("wide", (1000, 600)), ("small", (64, 48))):
        Image.effect_noise(size, 60).convert("RGB").save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    encoder = InputEncoder(processor, 10**8)
    examples = [encoder.example(p, render_segments(processor, [(QUESTION, None)])) for p in paths]
    assert len(examples[0]["input_ids"]) > len(examples[1]["input_ids"])

    def states(group):
        batch = collate(group, processor.tokenizer.pad_token_id, "right")
        del batch["labels"]
        with torch.no_grad():
            return pooled_state(model, batch)
    torch.testing.assert_close(states(examples), torch.cat([states([e]) for e in examples]), rtol=1e-4, atol=1e-5)

    def probs(batch_size):
        results = evaluate(model, processor, paths, QUESTION, CLASSES, "score", batch_size, 10**8, encoder=encoder)
        return torch.tensor([[r["probs"][c] for c in CLASSES] for r in results])
    torch.testing.assert_close(probs(2), probs(1), rtol=1e-4, atol=1e-5)
