"""Model inputs: each image decoded, resized (never enlarged) and tokenised once, kept for reuse, and batched with
answer labels, or as left-padded prompts."""
import hashlib
import json
import os
import re
from pathlib import Path

from .cli import UserError
from .images import load_image
from .pixels import arithmetic, handles, pixel_values
from .prompt import render_segments

IGNORE = -100  # the label of a token the loss skips
TOKEN_KEYS = ("token_type_ids", "mm_token_type_ids")  # per-token processor outputs (Gemma, Qwen2.5-VL), 0 on text


# How each family's image processor takes image_longest_edge, by class name (backend suffix dropped).
# Idefics3 (SmolVLM) and SmolVLM (SmolVLM2) resize the longest edge; Qwen2-VL's (also Qwen2.5-VL's) size is a
# pixel count, so the edge becomes a budget of edge x edge pixels. Families not listed ignore the setting.
LONGEST_EDGE_SIZE = {
    "Idefics3ImageProcessor": lambda size, edge: {"longest_edge": edge},
    "SmolVLMImageProcessor": lambda size, edge: {"longest_edge": edge},
    "Qwen2VLImageProcessor": lambda size, edge: {"shortest_edge": size["shortest_edge"], "longest_edge": edge * edge},
}


def image_family(image_processor):
    """The image processor's class name without its backend suffix: the key of LONGEST_EDGE_SIZE."""
    return re.sub(r"(Pil|Fast)$", "", type(image_processor).__name__)


def longest_edge_for(image_processor, image, enlarge=False):
    """Image-processor keyword arguments that keep `image` from being enlarged: its longest edge becomes the smaller
    of the setting and its own, and with splitting its tiles follow its own size. {} where the family has no
    longest-edge setting, or where `enlarge` asks for the processor's own behaviour (every image resized up to
    the setting: a 300x300 photo at SmolVLM's shipped 2048 px becomes 17 tiles)."""
    family = image_family(image_processor)
    size = image_processor.size
    # Qwen2-VL's pixel budget is a ceiling: it never enlarges an image beyond its own size anyway.
    if enlarge or family not in LONGEST_EDGE_SIZE or family.startswith("Qwen2VL"):
        return {}
    own = max(image.size)
    return {"size": LONGEST_EDGE_SIZE[family](size, own)} if own < size["longest_edge"] else {}


def auto_workers(requested):
    """Processes for decoding and resizing images: `requested`, or for -1 the CPU cores this process may use,
    shared with the other processes of a torchrun job on this machine (0 = in the main process)."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return min(share, 8) if share > 1 else 0


def through_end(ids, end_ids):
    """An answer's tokens up to and including its first end token: what training labels and score mode scores.
    What the chat template adds after it (SmolVLM's newline) is neither: the model should learn to stop."""
    ends = [i for i, token in enumerate(ids) if token in end_ids]
    return list(ids[:ends[0] + 1]) if ends else list(ids)


def answer_labels(ids, end_ids):
    """Labels of an answer segment: its tokens through its end token, IGNORE after."""
    kept = through_end(ids, end_ids)
    return kept + [IGNORE] * (len(ids) - len(kept))


class InputEncoder:
    """Model inputs for (image, chat segments) equal to what the processor makes of the image and the joined text,
    with each image file decoded and resized once and each text segment tokenised once.

    An image's part is the processor's pixel tensors and the image tokens its placeholder expands into (as many
    as its size and tiles need). A segment is tokenised with the one placeholder, which the image tokens then
    replace: the expansion is special tokens only, and a tokenizer splits text at special tokens before anything
    else, so the ids are the processor's. Image parts are kept in memory, or with `cache_dir` in files named after
    the image file (path, size, modification time) in a folder named after the processor's settings, so that a
    changed image or setting is encoded afresh.
    """

    def __init__(self, processor, max_pixels, *, enlarge=False, cache=True, cache_dir=""):
        self.processor, self.max_pixels, self.enlarge = processor, max_pixels, enlarge
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.memory = {} if cache and not cache_dir else None
        self.folder = Path(cache_dir).expanduser() / self._settings_key() if cache and cache_dir else None
        self.texts = {}
        # vlmcls.pixels' arithmetic for this processor (None: not known yet; False: the processor makes the
        # tensors), and the processor's token ids of each tile layout (rows, cols).
        self.arithmetic, self.layouts = None, {}

    def __getstate__(self):
        # A pickled copy (the data set's fingerprint, a spawned worker) leaves the cache behind: it can be gigabytes.
        return {**self.__dict__, "memory": {} if self.memory is not None else None}

    def _settings_key(self):
        from transformers import __version__
        settings = [self.processor.image_processor.to_dict(), self.processor.tokenizer.name_or_path,
                    len(self.processor.tokenizer), self.processor.image_token, self.enlarge, self.max_pixels,
                    __version__]
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def encode_image(self, image):
        """(image token ids, pixel tensors, per-token values) of a decoded image, as the processor makes them.

        Where vlmcls.pixels handles the image, it computes the tensors, and the token ids are those of the first
        image of the same tile layout: the processor's expansion of the placeholder depends on nothing else. That
        first image also goes through the processor, which checks the tensors; should they ever differ, the
        processor makes every image's from then on.
        """
        image_processor = self.processor.image_processor
        size = longest_edge_for(image_processor, image, self.enlarge)
        fast = handles(image_processor, image)
        if fast and self.arithmetic is None:
            self.arithmetic = arithmetic(image_processor) or False
        if not (fast and self.arithmetic):
            return self._processor_part(image, size)
        tensors, rows, cols = self._pixels(image, size.get("size"))
        if (rows, cols) in self.layouts:
            return self.layouts[rows, cols][0], tensors, self.layouts[rows, cols][1]
        ids, expected, per_token = self._processor_part(image, size)
        if expected.keys() != tensors.keys() or not all(self._equal(expected[k], tensors[k]) for k in expected):
            print(f"note: {type(image_processor).__name__} made other pixel tensors than vlmcls.pixels; "
                  "images go through the processor from now on")
            self.arithmetic = False
            return ids, expected, per_token
        self.layouts[rows, cols] = ids, per_token
        return ids, tensors, per_token

    def _pixels(self, image, size):
        """(pixel tensors, rows, cols) of an image that vlmcls.pixels handles, as the processor would make them."""
        values, mask, rows, cols = pixel_values(self.processor.image_processor, image, self.arithmetic, size)
        return {"pixel_values": values, "pixel_attention_mask": mask}, rows, cols

    @staticmethod
    def _equal(a, b):
        import torch
        return torch.equal(a, b)

    def _processor_part(self, image, size):
        out = self.processor(images=[[image]], text=[self.processor.image_token], add_special_tokens=False,
                             return_tensors="pt", **size)
        ids = out.pop("input_ids")[0].tolist()
        out.pop("attention_mask", None)
        per_token = {k: out.pop(k)[0].tolist() for k in TOKEN_KEYS if k in out}
        return ids, dict(out), per_token

    def image_part(self, path):
        """encode_image of an image file, from the cache when it holds it."""
        key = file_key(path)
        if self.memory is not None and key in self.memory:
            return self.memory[key]
        file = self.folder / f"{key}.pt" if self.folder else None
        if file is not None and file.is_file():
            import torch
            return torch.load(file)
        part = self.encode_image(load_image(path, self.max_pixels))
        if self.memory is not None:
            self.memory[key] = part
        elif file is not None:
            import torch
            file.parent.mkdir(parents=True, exist_ok=True)
            partial = file.with_name(f".{file.name}.{os.getpid()}.tmp")
            torch.save(part, partial)
            os.replace(partial, file)
        return part

    def tokens(self, text):
        if text not in self.texts:
            self.texts[text] = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.texts[text]

    def example(self, image, segments, end_ids=()):
        """input_ids, labels (answers only), per-token values and pixel tensors of one image and its chat segments
        (prompt.render_segments); `image` is a file path or a decoded image."""
        image_ids, tensors, per_token = self.image_part(image) if isinstance(image, (str, Path)) \
            else self.encode_image(image)
        ids, labels, extra = [], [], {k: [] for k in per_token}
        for text, is_answer in segments:
            piece = self.tokens(text)
            at = piece.index(self.image_token_id) if self.image_token_id in piece else None
            for k in extra:
                extra[k] += [0] * len(piece) if at is None else \
                    [0] * at + per_token[k] + [0] * (len(piece) - at - 1)
            if at is not None:
                piece = piece[:at] + image_ids + piece[at + 1:]
            ids += piece
            labels += answer_labels(piece, end_ids) if is_answer else [IGNORE] * len(piece)
        return {"input_ids": ids, "labels": labels, **extra, "tensors": tensors}

    def prepare(self, paths, workers, desc="encoding images"):
        """Encode every image file into the cache ahead of training, in `workers` processes where the platform can
        fork them (their cache is gathered here); a file that cannot be used stops with its name and reason."""
        import multiprocessing

        from tqdm import tqdm
        paths = list(dict.fromkeys(str(p) for p in paths))
        if workers > 0 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers, _start_worker, (self,)) as pool:
                results = pool.imap(_prepare_one, paths, chunksize=4)
                for result in tqdm(results, total=len(paths), desc=desc, unit="img"):
                    if result[0] == "error":
                        raise UserError(result[1])
                    if self.memory is not None:
                        self.memory.update([result])
        else:
            for path in tqdm(paths, desc=desc, unit="img"):
                self.image_part(path)


def file_key(path):
    """An image file's cache name: its path, size and modification time."""
    stat = Path(path).stat() if Path(path).is_file() else None
    return hashlib.sha256(f"{Path(path).resolve()}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}"
                          .encode()).hexdigest()[:24]


_WORKER = {}  # the encoder of a preparing worker process


def _start_worker(encoder):
    import torch
    torch.set_num_threads(1)  # one core per worker: the workers together fill the machine
    _WORKER["encoder"] = encoder


def _prepare_one(path):
    encoder = _WORKER["encoder"]
    try:
        part = encoder.image_part(path)
    except UserError as e:
        return ("error", str(e))
    return (file_key(path), part) if encoder.memory is not None else ("stored", None)


def collate(examples, pad_id, padding_side="right"):
    """A batch of InputEncoder.example()s as the processor pads one: sequences padded on `padding_side` (labels with
    IGNORE, the attention mask with 0); pixel tensors stacked, those with fewer tiles padded with empty ones."""
    import torch
    longest = max(len(e["input_ids"]) for e in examples)

    def pad(seq, value):
        fill = [value] * (longest - len(seq))
        return fill + seq if padding_side == "left" else seq + fill
    batch = {"input_ids": torch.tensor([pad(e["input_ids"], pad_id) for e in examples]),
             "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples])}
    for key in ("labels", *TOKEN_KEYS):
        if key in examples[0]:
            batch[key] = torch.tensor([pad(e[key], IGNORE if key == "labels" else 0) for e in examples])
    for key in examples[0]["tensors"]:
        parts = [e["tensors"][key] for e in examples]
        shape = [max(sizes) for sizes in zip(*(p.shape[1:] for p in parts))]
        padded = []
        for part in parts:
            if list(part.shape[1:]) != shape:
                grown = part.new_zeros((part.shape[0], *shape))
                grown[(slice(None), *(slice(0, n) for n in part.shape[1:]))] = part
                part = grown
            padded.append(part)
        batch[key] = torch.cat(padded)
    return batch


class PromptBatches:
    """Left-padded batches of the question's prompt with each image, as the processor makes them (run in data-loader
    workers; a file that cannot be used comes back as its message, to be raised or reported in the main process)."""

    def __init__(self, processor, question, max_pixels, enlarge, encoder=None):
        self.encoder = encoder or InputEncoder(processor, max_pixels, enlarge=enlarge, cache=False)
        self.segments = render_segments(processor, [(question, None)])
        self.pad = processor.tokenizer.pad_token_id or 0

    def __call__(self, images):
        batch, _, problems = self.checked(images)
        return problems[0][1] if problems else batch

    def checked(self, images):
        """Each image checked as it is encoded (one decode): (the batch of those that can be used, or None; their
        positions in `images`; [(position, message)] of those that cannot)."""
        examples, kept, problems = [], [], []
        for i, image in enumerate(images):
            try:
                examples.append(self.encoder.example(image, self.segments))
                kept.append(i)
            except UserError as e:
                problems.append((i, str(e)))
        if not examples:
            return None, kept, problems
        batch = collate(examples, self.pad, "left")
        del batch["labels"]
        return batch, kept, problems
