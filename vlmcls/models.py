"""Models: device and dtype choice, torchrun's process group, loading a processor and model (int8 too), image
resolution, end tokens."""
import json
import re
from pathlib import Path

from .cli import OneOf, UserError
from .compat import replace_data
from .inputs import LONGEST_EDGE_SIZE, image_family

DEVICES = OneOf("auto", "cuda", "mps", "cpu", other=("cuda:N", lambda v: re.fullmatch(r"cuda:\d+", v)))
DTYPES = OneOf("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = OneOf("none", "int8")
VISION_MODULES = ("vision_model", "vision_tower", "visual")  # the vision encoder's name in each family


def pick_device(name="auto"):
    """'auto' picks CUDA, then Apple MPS, then the CPU."""
    import torch
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device, name="auto"):
    """'auto' is bfloat16 on CUDA where the GPU supports it, else float16 there, and float32 elsewhere."""
    import torch
    if name != "auto":
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise UserError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
        return getattr(torch, name)
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def join_processes(device):
    """(rank, number of processes, device) of this process. Under torchrun the processes join one group (gloo on
    the CPU, NCCL on GPUs) and "cuda" becomes this process's own GPU; alone, it is rank 0 of 1."""
    from accelerate import PartialState
    state = PartialState(cpu=device == "cpu")
    if state.num_processes > 1 and device == "cuda":
        device = str(state.device)
    return state.process_index, state.num_processes, device


def leave_processes(world):
    """Under torchrun, wait for every process, then leave the process group: a process tearing gloo down while
    another still runs can abort ("terminate called without an active exception") or hang joining its threads.
    A process that stops on an error instead makes torchrun end the others, so none waits here forever."""
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()


def end_token_ids(processor, model):
    """The token ids generation stops on: the end-of-answer tokens that training must teach."""
    ids = model.generation_config.eos_token_id
    if ids is None:
        ids = processor.tokenizer.eos_token_id
    return [ids] if isinstance(ids, int) else list(ids)


def check_chat_vlm(processor, model_path):
    """Refuse a model whose processor cannot render an image into a chat prompt."""
    if getattr(processor, "image_processor", None) is None:
        raise UserError(f"{model_path}: the processor has no image support (no image processor); a vision-language "
                        "model is needed, such as SmolVLM, Qwen2-VL or LLaVA")
    if not getattr(processor, "chat_template", None):
        raise UserError(f"{model_path}: the processor has no chat template, so prompts cannot be rendered; use an "
                        "instruction-tuned (chat) model, or add a chat_template to its processor")


def set_resolution(processor, longest_edge, splitting):
    """Set how large images reach the model; saved with the processor, so evaluation sees what training saw.

    `longest_edge` maps to each family's own setting (LONGEST_EDGE_SIZE). SmolVLM with splitting also cuts
    tiles of max_image_size (512) plus one global tile; without splitting every image is one tile.
    """
    image_processor = processor.image_processor
    family = image_family(image_processor)
    if longest_edge is not None and family in LONGEST_EDGE_SIZE:
        image_processor.size = LONGEST_EDGE_SIZE[family](image_processor.size, int(longest_edge))
    elif longest_edge is not None:
        crop = getattr(image_processor, "crop_size", None)
        fixed = f" (every image becomes a {crop['width']}x{crop['height']} crop)" if crop else ""
        print(f"note: {family} has no longest-edge setting{fixed}; image_longest_edge ignored")
    if splitting is not None and hasattr(image_processor, "do_image_splitting"):
        image_processor.do_image_splitting = bool(splitting)
    elif splitting:
        print(f"note: {family} does not split images into tiles; image_splitting ignored")
    if longest_edge is not None and hasattr(image_processor, "max_image_size"):
        tile = image_processor.max_image_size["longest_edge"]
        if longest_edge > tile and not image_processor.do_image_splitting:
            print(f"note: without image splitting every image is one {tile}px tile; "
                  f"image_longest_edge={longest_edge} has an effect only with image_splitting=true")


def load_processor(model_path):
    from transformers import AutoProcessor
    try:
        processor = AutoProcessor.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a processor from {model_path!r} (a local folder or a Hub id; "
                        f"offline, download it first): {str(e).splitlines()[0]}") from None
    except ImportError as e:  # Qwen2-VL's and SmolVLM2's processors need torchvision for their video part
        raise UserError(f"cannot load a processor from {model_path!r}: {str(e).strip().split('. ')[0]} "
                        "(install the torchvision build that matches your torch)") from None
    check_chat_vlm(processor, model_path)
    return processor


def load_model(model_path, dtype, device=None):
    from transformers import AutoModelForImageTextToText
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a vision-language model from {model_path!r}: {str(e).splitlines()[0]}") from None
    return model.to(device) if device is not None else model


def check_quantizable(how, device, dtype):
    """Refuse int8 where dynamic quantisation cannot run: off the CPU, or from half-precision weights."""
    import torch
    if how == "none":
        return
    if str(device) != "cpu":
        raise UserError(f"quantize={how} runs on the CPU only (dynamic int8 quantisation has no {device} kernels); "
                        "use --device=cpu, or --quantize=none")
    if dtype != torch.float32:
        raise UserError(f"quantize={how} starts from float32 weights, not {dtype}: use --dtype=float32 or auto")


def quantize_dynamic_int8(module):
    """torch's dynamic quantisation of `module`'s linear layers, in place: weights stored as int8, activations
    quantised on the fly per batch."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic
    # torch announces the move of this API to torchao; it works in the pinned torch, and torchao 0.18's int8 ran
    # 1.7x slower on this CPU with 2.4x the peak memory (benchmarks/README.md#int8-on-the-cpu-quantize-int8py)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize_model(model, how, device):
    """A loaded model with int8 weights in its linear layers ('int8'), or as it is ('none'). It runs on the CPU
    only, with float32 weights to start from. load_int8_model gets the same model with less memory."""
    check_quantizable(how, device, model.dtype)
    return model if how == "none" else quantize_dynamic_int8(model)


def checkpoint_files(model_path):
    """{tensor name: the safetensors file holding it} of the model's checkpoint (sharded or not), {} where it has
    no safetensors weights."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def local(name):  # the file in the folder, or in the Hub cache; None where the checkpoint has none
        try:
            return cached_file(model_path, name)
        except OSError:
            return None

    index = local("model.safetensors.index.json")
    if index:
        return {key: local(name) for key, name in json.loads(Path(index).read_text())["weight_map"].items()}
    single = local("model.safetensors")
    if not single:
        return {}
    with safe_open(single, framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def load_int8_model(model_path):
    """The model as quantize_model(load_model(...), "int8") makes it, without ever holding all its float32 weights.

    from_pretrained maps the weights file into memory and its tensors are views of that one mapping: every page
    that quantisation reads stays resident until the last view goes. So each tensor of a safetensors checkpoint
    is read again through a mapping of its own, released as soon as it is used: each linear layer's weight is
    quantised from it, every other tensor (biases too) copied from it. Tensors the checkpoint lacks (a tied
    output layer, buffers computed at construction) are the model's own.
    """
    import torch
    from safetensors import safe_open
    model = load_model(model_path, torch.float32).eval()
    files = checkpoint_files(model_path)

    def own(name, tensor, copy):
        if name not in files:
            return tensor.detach().clone() if copy else tensor
        with safe_open(files[name], framework="pt") as f:
            return f.get_tensor(name).to(tensor.dtype, copy=copy)

    def tensors(name, module):
        return [(f"{name}.{p}" if name else p, tensor) for p, tensor in
                [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]]

    linears = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    others = [pair for name, m in model.named_modules() if type(m) is not torch.nn.Linear for pair in tensors(name, m)]
    for name, tensor in others:
        replace_data(tensor, own(name, tensor, copy=True))
    elsewhere = {id(tensor) for _, tensor in others}  # tied to an embedding, say: a view would keep the mapping
    for name in linears:
        parent, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        for key, tensor in tensors(name, linear):  # the quantised layer keeps the bias as it is given
            replace_data(tensor, own(key, tensor, copy=key.endswith(".bias") or id(tensor) in elsewhere))
        setattr(model.get_submodule(parent), child, quantize_dynamic_int8(torch.nn.Sequential(linear))[0])
        del linear.qconfig  # torch's observer factory in it holds `linear`: a cycle that would keep its weights
    return model


def base_of(model):
    """The transformers model inside a peft wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def find_vision_encoder(model):
    inner = getattr(model, "model", model)
    for name in VISION_MODULES:
        if hasattr(inner, name):
            return getattr(inner, name)
    raise UserError(f"no vision encoder named any of {VISION_MODULES} in {type(model).__name__}")

