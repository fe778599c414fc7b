"""Library internals the project relies on, in one place, with the versions they were checked on.

Each function below is the one place its internal is used; its docstring names the versions it was checked on,
and tests/test_compat.py fails when the internal changes shape (a signature, an attribute, a call path).
"""
from importlib import metadata

from .cli import UserError

# Packages whose private or unexported parts are used below, and the release series they were checked against.
TESTED = {"transformers": "5.", "trl": "1.", "peft": "0.", "torch": "2."}
RECORDED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


def library_versions(extra=()):
    """Python's and each library's installed version (RECORDED, then `extra`), for run_config.json, report.json
    and export.json; None for a library not installed."""
    import platform
    versions = {"python": platform.python_version()}
    for name in RECORDED + tuple(extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _check(package, what):
    version = metadata.version(package)
    if not version.startswith(TESTED[package]):
        raise UserError(f"{what} is an internal part of {package} that this project was tested with in "
                        f"{package} {TESTED[package]}x; {package} {version} is installed: install the versions in "
                        "requirements.txt")
    return version


def generation_position_ids(model, batch):
    """Position ids as generate() makes them, so that a forward pass on a cache can continue them: a cached
    forward pass cannot infer them in every family (Qwen2-VL's M-RoPE positions depend on the image grid).
    GenerationMixin._prepare_position_ids_for_generation(input_ids, model_kwargs); checked on transformers 5.24."""
    prepare = getattr(model, "_prepare_position_ids_for_generation", None)
    if prepare is None:
        _check("transformers", "GenerationMixin._prepare_position_ids_for_generation")
        raise UserError(f"{type(model).__name__} has no _prepare_position_ids_for_generation; score mode needs it "
                        "(use --prediction=generate, or the transformers version in requirements.txt)")
    return prepare(batch["input_ids"], dict(batch))


def idefics3_resized_size(height, width, longest_edge):
    """(height, width) that Idefics3's PIL image processor first resizes an image of this size to
    (image_processing_pil_idefics3.get_resize_output_image_size(image, resolution_max_side); checked on
    transformers 5.24)."""
    import numpy as np
    try:
        from transformers.models.idefics3.image_processing_pil_idefics3 import get_resize_output_image_size
    except ImportError:
        _check("transformers", "image_processing_pil_idefics3.get_resize_output_image_size")
        raise
    return get_resize_output_image_size(np.empty((0, height, width)), longest_edge)  # reads the shape alone


def sft_trainer_class(loss, scores=None):
    """trl's SFTTrainer, with `loss` ((loss, outputs) = loss(model, inputs)) in place of trl's, and `scores` (a dict
    = scores(trainer, metric_key_prefix)) as what trainer.evaluate() with no data set logs and returns, the callbacks
    told as Trainer.evaluate tells them; trainer.evaluate(dataset) still computes that data set's loss.

    A loss over tokens takes `num_items_in_batch`, as a model's own loss does: the Trainer then counts the labelled
    tokens of every micro-batch of an optimizer step on every process and passes the count, and the loss, divided
    by it, is scaled as SFTTrainer.compute_loss scales it (times the processes, whose gradients DDP averages; no
    division by the accumulation steps). Its outputs' per-token `entropy` and `is_top1` are logged as SFTTrainer
    logs its own (entropy, mean_token_accuracy, num_tokens). Any other loss is a mean over its batch, which the
    Trainer divides by the accumulation steps.

    Relies on Trainer.compute_loss(model, inputs, return_outputs, num_items_in_batch), Trainer.evaluate(eval_dataset,
    ignore_keys, metric_key_prefix), the Trainer's model_accepts_loss_kwargs (whether it counts the tokens and leaves
    the division by the accumulation steps to the loss), get_tp_size(), callback_handler.on_evaluate(args, state,
    control, metrics), and SFTTrainer's _metrics and _total_train_tokens; checked on transformers 5.24 and trl 1.16."""
    import inspect

    import torch
    from trl import SFTTrainer
    per_token = "num_items_in_batch" in inspect.signature(loss).parameters

    class ObjectiveSFTTrainer(SFTTrainer):
        def __init__(self, **arguments):
            super().__init__(**arguments)
            self.model_accepts_loss_kwargs = per_token

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not per_token:
                value, outputs = loss(model, inputs)
                return (value, outputs) if return_outputs else value
            value, outputs = loss(model, inputs, num_items_in_batch=num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                value = value * (self.accelerator.num_processes // self.get_tp_size())
            self.log_token_metrics(inputs, outputs)
            return (value, outputs) if return_outputs else value

        def log_token_metrics(self, inputs, outputs):
            """SFTTrainer.compute_loss's metrics, from the loss's per-token outputs (every process takes part)."""
            mode = "train" if self.model.training else "eval"
            gather = self.accelerator.gather_for_metrics
            valid = gather(torch.tensor(len(outputs.is_top1), device=outputs.is_top1.device)).sum()
            for name, values in (("entropy", outputs.entropy), ("mean_token_accuracy", outputs.is_top1)):
                self._metrics[mode][name].append((gather(values.float().sum()).sum() / valid).item()
                                                 if valid > 0 else 0.0)
            if mode == "train":
                self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if scores is None or eval_dataset is not None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            result = scores(self, metric_key_prefix)
            self.log(result)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, result)
            return result
    return ObjectiveSFTTrainer


def set_forward(module, forward, bound=False):
    """Make `forward` the module's forward for its calls from now on: module(...) runs it (nn.Module.__call__ looks
    forward up on the instance first). An unbound function gets the module as its first argument; `bound`: a
    callable to call as it is (a bound method, a callable object). Checked on torch 2.13 and transformers 5.24,
    whose models call their submodules and themselves through __call__."""
    import types
    module.forward = forward if bound else types.MethodType(forward, module)


def remove_forward(module):
    """Undo set_forward: the module's class forward again; returns the forward that was set (None where none)."""
    return module.__dict__.pop("forward", None)


def own_forward(module):
    """The forward set on this module by set_forward, or None."""
    return module.__dict__.get("forward")


def run_without_grad(module):
    """Make the module's forward run without autograd (its weights frozen, nothing before it trained), through
    set_forward; checked on torch 2.13."""
    import torch
    set_forward(module, torch.no_grad()(module.forward), bound=True)


def replace_data(tensor, value):
    """Point a parameter or buffer at `value`'s storage (tensor.data = value), keeping the Parameter object the
    module holds, so that references to it stay valid. Checked on torch 2.13."""
    tensor.data = value

