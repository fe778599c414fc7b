"""vlmcls.vision_cache: a frozen vision encoder runs once per image, and training is what it would be without it."""
import json
import re

import pytest
import torch
from safetensors import safe_open

from conftest import make_colour_images, run_script

STEPS, BATCH = 6, 3


def weights(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


NO_VALIDATION = "--val_json="
VALIDATING = ["--min_validation_images=1", "--eval_steps=3", "--early_stopping_patience=0"]


@pytest.mark.parametrize("family, settings", [
    ("tiny_smolvlm", ["--objective=answer", "--freeze_vision=true", NO_VALIDATION]),
    ("tiny_smolvlm", ["--objective=head", "--freeze_vision=true", NO_VALIDATION]),
    pytest.param("tiny_llava", ["--objective=answer", "--freeze_vision=true", NO_VALIDATION], marks=pytest.mark.slow),
    # LoRA leaves the vision encoder frozen; LLaVA reads an earlier layer of it
    ("tiny_llava", ["--objective=answer", "--use_lora=true", NO_VALIDATION]),
    # validation encodes its images under inference mode, between training steps that reuse theirs
    ("tiny_smolvlm", ["--objective=head", "--freeze_vision=true", *VALIDATING]),
])
def test_a_cached_vision_encoder_trains_the_model_the_uncached_one_trains(family, settings, request, tmp_path):
    make_colour_images(tmp_path / "data", per_class=6)
    run_script("generate_train_json.py", "--dataset_dir=data", "--train_ratio=0.5", "--val_ratio=0.25",
               "--question_templates=[]", cwd=tmp_path)
    common = [f"--model_path={request.getfixturevalue(family)}", "--test_json=", f"--max_steps={STEPS}",
              f"--per_device_train_batch_size={BATCH}", "--gradient_accumulation_steps=1", "--learning_rate=3e-3",
              "--warmup_steps=0", "--gradient_checkpointing=false", "--num_workers=0", *settings]
    cached = run_script("fine_tune.py", *common, "--output_dir=cached", cwd=tmp_path)
    plain = run_script("fine_tune.py", *common, "--output_dir=plain", "--cache_vision=false", cwd=tmp_path)

    counts = re.search(r"vision encoder: ran on (\d+) images, their outputs reused (\d+) times", cached.stdout)
    assert counts, cached.stdout
    if NO_VALIDATION in settings:  # each image was encoded in the first epoch only; later epochs reused them all
        images = len(json.loads((tmp_path / "solar_panel_train_dataset.json").read_text())["samples"])
        assert images < STEPS * BATCH and (int(counts[1]), int(counts[2])) == (images, STEPS * BATCH - images)
    assert "vision encoder:" not in plain.stdout
    # The same seed gives the same trained weights (and head) as encoding every image at every step.
    for name in ["model.safetensors"] + (["classifier.safetensors"] if "--objective=head" in settings else []):
        with safe_open(str(tmp_path / "cached" / name), framework="pt") as a, \
                safe_open(str(tmp_path / "plain" / name), framework="pt") as b:
            assert a.keys() == b.keys()
            for key in a.keys():
                torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=1e-4, atol=1e-5)
    # The weights did move (the comparison would say nothing about a run that trained nothing).
    trained, base = weights(tmp_path / "cached"), weights(request.getfixturevalue(family))
    assert any(not torch.equal(trained[k], base[k]) for k in trained.keys() & base.keys())


def test_an_encoder_that_trains_is_not_cached(tiny_smolvlm, tmp_path):
    make_colour_images(tmp_path / "data", per_class=2)
    run_script("generate_train_json.py", "--dataset_dir=data", "--train_ratio=0.5", "--val_ratio=0",
               "--question_templates=[]", cwd=tmp_path)
    proc = run_script("fine_tune.py", f"--model_path={tiny_smolvlm}", "--test_json=", "--max_steps=2",
                      "--per_device_train_batch_size=3", "--num_workers=0", "--gradient_checkpointing=false",
                      cwd=tmp_path)
    assert "vision encoder:" not in proc.stdout
