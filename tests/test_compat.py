"""vlmcls.compat: the shape of every library internal it relies on (a signature, an attribute, a call path), so that
a release that changes one fails here rather than silently in a run; and the version series checked."""
import ast
import inspect
from pathlib import Path

import pytest
import torch

from vlmcls import compat

PACKAGE = Path(__file__).resolve().parents[1] / "vlmcls"


def parameters(function):
    return list(inspect.signature(function).parameters)


def test_tested_names_every_library_whose_internals_are_used():
    assert {"transformers", "trl", "peft", "torch"} <= set(compat.TESTED)
    from importlib import metadata
    for package, series in compat.TESTED.items():
        assert metadata.version(package).startswith(series), f"{package} {metadata.version(package)} is not {series}x"


def test_no_module_but_compat_assigns_a_forward_or_tensor_data():
    """The patches live in compat.py: elsewhere no `x.forward = ...`, `x.data = ...`, nor the Trainer's internals."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr in ("forward", "data", "_total_train_tokens",
                                                                            "model_accepts_loss_kwargs"):
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} assigns .{target.attr}")
            if isinstance(node, ast.Attribute) and node.attr in ("MethodType", "_metrics", "_total_train_tokens"):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses {node.attr}")
    assert not found, "library patches outside compat.py:\n" + "\n".join(found)


def test_generation_position_ids_relies_on_generations_own_method():
    from transformers import GenerationMixin
    assert parameters(GenerationMixin._prepare_position_ids_for_generation) == ["self", "inputs_tensor",
                                                                               "model_kwargs"]


def test_idefics3_resized_size_relies_on_the_processors_resize_rule():
    from transformers.models.idefics3.image_processing_pil_idefics3 import get_resize_output_image_size
    assert parameters(get_resize_output_image_size) == ["image", "resolution_max_side"]
    assert compat.idefics3_resized_size(100, 300, 150) == (50, 150)


def test_sft_trainer_class_relies_on_the_trainers_loss_evaluate_callbacks_and_metrics():
    from transformers import Trainer
    from transformers.trainer_callback import CallbackHandler
    from trl import SFTTrainer
    assert issubclass(SFTTrainer, Trainer)
    assert parameters(Trainer.compute_loss) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert parameters(Trainer.evaluate) == ["self", "eval_dataset", "ignore_keys", "metric_key_prefix"]
    assert parameters(CallbackHandler.on_evaluate)[:5] == ["self", "args", "state", "control", "metrics"]
    # the Trainer sets model_accepts_loss_kwargs when it is made, and reads it to count the tokens and scale the loss
    assert "self.model_accepts_loss_kwargs =" in inspect.getsource(Trainer.__init__)
    assert "self.model_accepts_loss_kwargs" in inspect.getsource(Trainer._get_num_items_in_batch)
    assert "self.model_accepts_loss_kwargs" in inspect.getsource(Trainer.training_step)
    assert parameters(Trainer.get_tp_size) == ["self"]
    # SFTTrainer's own loss scales a token-counted loss by the processes, and logs these metrics so
    sft_loss = inspect.getsource(SFTTrainer.compute_loss)
    assert "loss * (self.accelerator.num_processes // self.get_tp_size())" in sft_loss
    for line in ('self._metrics[mode]["entropy"].append', 'self._metrics[mode]["mean_token_accuracy"].append',
                 "self._total_train_tokens += num_tokens_in_batch // self._tp_size",
                 'self._metrics[mode]["num_tokens"] = [self._total_train_tokens]'):
        assert line in sft_loss
    assert "self._metrics[mode]" in inspect.getsource(SFTTrainer.log)
    for loss in (lambda model, inputs: None, lambda model, inputs, num_items_in_batch=None: None):
        trainer = compat.sft_trainer_class(loss)
        assert issubclass(trainer, SFTTrainer)
        assert parameters(trainer.evaluate) == parameters(Trainer.evaluate)
        assert parameters(trainer.compute_loss) == parameters(Trainer.compute_loss)


def test_set_forward_relies_on_module_calls_reading_the_instances_forward():
    layer = torch.nn.Linear(2, 2)
    x = torch.ones(1, 2)
    compat.set_forward(layer, lambda self, inputs: inputs * 0 + 7)
    assert torch.equal(layer(x), torch.full((1, 2), 7.0)) and compat.own_forward(layer) is not None
    removed = compat.remove_forward(layer)
    assert compat.own_forward(layer) is None and torch.equal(layer(x), torch.nn.Linear.forward(layer, x))
    compat.set_forward(layer, removed, bound=True)
    assert torch.equal(layer(x), torch.full((1, 2), 7.0))
    compat.remove_forward(layer)
    compat.run_without_grad(layer)
    assert not layer(x).requires_grad


def test_the_vision_cache_relies_on_the_encoders_arguments_and_its_call():
    """VisionCache replaces the encoder's forward: the model must call it through the module with
    pixel_values and patch_attention_mask."""
    from transformers.models.idefics3 import modeling_idefics3 as idefics3
    assert parameters(idefics3.Idefics3VisionTransformer.forward)[:3] == ["self", "pixel_values",
                                                                          "patch_attention_mask"]
    assert "self.vision_model(" in inspect.getsource(idefics3.Idefics3Model.get_image_features)


def test_replace_data_keeps_the_parameter_and_takes_the_new_storage():
    layer = torch.nn.Linear(2, 2)
    weight, new = layer.weight, torch.zeros(2, 2)
    compat.replace_data(layer.weight, new)
    assert layer.weight is weight and weight.data_ptr() == new.data_ptr()


@pytest.mark.parametrize("package", ["transformers"])
def test_a_missing_internal_names_the_versions(monkeypatch, package):
    from importlib import metadata

    from vlmcls.cli import UserError
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1")
    with pytest.raises(UserError, match=f"{package} 0.0.1 is installed"):
        compat._check(package, "something")
