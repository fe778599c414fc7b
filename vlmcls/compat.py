"""Library internals the project relies on, in one place, with the versions they were tested with."""
from importlib import metadata

from .cli import UserError

# Packages whose private or unexported parts are used below, and the release series they were checked against.
TESTED = {"transformers": "5."}
RECORDED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


def library_versions():
    """Python's and each library's installed version, for run_config.json and report.json."""
    import platform
    versions = {"python": platform.python_version()}
    for name in RECORDED:
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
    forward pass cannot infer them in every family (Qwen2-VL's M-RoPE positions depend on the image grid)."""
    prepare = getattr(model, "_prepare_position_ids_for_generation", None)
    if prepare is None:
        _check("transformers", "GenerationMixin._prepare_position_ids_for_generation")
        raise UserError(f"{type(model).__name__} has no _prepare_position_ids_for_generation; score mode needs it "
                        "(use --prediction=generate, or the transformers version in requirements.txt)")
    return prepare(batch["input_ids"], dict(batch))


def idefics3_resized_size(height, width, longest_edge):
    """(height, width) that Idefics3's PIL image processor first resizes an image of this size to."""
    import numpy as np
    try:
        from transformers.models.idefics3.image_processing_pil_idefics3 import get_resize_output_image_size
    except ImportError:
        _check("transformers", "image_processing_pil_idefics3.get_resize_output_image_size")
        raise
    return get_resize_output_image_size(np.empty((0, height, width)), longest_edge)  # reads the shape alone


def score_labelled_positions_only():
    """Make TRL's fused LM head (SFTTrainer's loss) project only the labelled positions (the answers) through the
    vocabulary on the CPU and MPS too, as it does on CUDA with Triton. Elsewhere it projects every position, to keep
    the shapes of compiled (Neuron) graphs fixed, which eager CPU and MPS do not need; the loss and the logged
    metrics are the same either way. On the CPU, projecting every position was a fifth of what a LoRA run of the
    256M architecture with a cached encoder spends above the encoder's own pass (benchmarks/README.md, frozen.py)."""
    from trl.trainer import utils
    original = getattr(utils, "_use_triton", None)
    if original is None:  # a speed-up only: training goes on without it
        print(f"note: trl {metadata.version('trl')} has no trl.trainer.utils._use_triton, so every position goes "
              "through the vocabulary on the CPU (slower; requirements.txt's versions avoid it)")
        return
    if getattr(original, "labelled_only", False):
        return

    def compact(device):
        return device.type in ("cpu", "mps") or original(device)
    compact.labelled_only = True
    utils._use_triton = compact
