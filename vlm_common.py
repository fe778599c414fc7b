"""What the five scripts share: command-line constants, devices, images, prompts, models, scoring, reports.

Each script keeps its own settings as constants at its top; this module holds the logic, so that
training and evaluation cannot drift apart (same prompt, same answer tokens, same image loading).
"""
import argparse
import csv
import hashlib
import io
import json
import os
import re
import string
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

NO_CLASS = "(no class)"  # what an answer that names no class is reported as


class UserError(Exception):
    """A problem with the user's input or settings, reported as one sentence instead of a traceback."""


def run_main(main):
    """Run a script's main(); a UserError ends it with its message and exit status 1."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------- command-line constants

def _parse_bool(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_json(kind):
    def parse(text):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = [x.strip() for x in text.split(",") if x.strip()] if kind is list else None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {kind.__name__}, got {text!r}")
        return value
    return parse


def _parse_optional(text):
    """For constants whose default is None: 'none' or '' is None, JSON is decoded, anything else is a string."""
    if text.strip().lower() in ("", "none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parser_for(default):
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, (int, float, str)):
        return type(default)
    if isinstance(default, (list, dict)):
        return _parse_json(type(default))
    return _parse_optional


def _constant_comments(source_file):
    """The trailing '# comment' of each `NAME = value` line of a script, used as --help text."""
    comments = {}
    for line in Path(source_file).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)\s*=.*?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def configure(namespace, argv=None):
    """Let every UPPER_CASE constant of a script be set as --name=value or --name value.

    The value in the file is the default; `--help` lists each with its comment.
    """
    names = [k for k, v in namespace.items() if re.fullmatch(r"[A-Z][A-Z0-9_]*", k) and not callable(v)]
    comments = _constant_comments(namespace["__file__"])
    parser = argparse.ArgumentParser(description=(namespace.get("__doc__") or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in names:
        default = namespace[name]
        parser.add_argument(f"--{name.lower()}", dest=name, type=_parser_for(default), default=default,
                            metavar="VALUE", help=f"{comments.get(name, '')} (default: {default!r})")
    args = parser.parse_args(argv)
    namespace.update(vars(args))


# ---------------------------------------------------------------- device and precision

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


# ---------------------------------------------------------------- files

def atomic_write(path, data):
    """Write bytes or text to `path` through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes the file private; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())


# ---------------------------------------------------------------- images

def load_image(path, max_pixels):
    """Open and fully decode an image as RGB with its EXIF rotation applied, or raise UserError saying why not.

    Alpha is composited on white, 16-bit and float images are scaled to 8 bits, and an image over
    `max_pixels` is refused before it is decoded (a decompression bomb would otherwise fill memory).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UserError(f"{path}: {width}x{height} is {width * height} pixels, over the limit of "
                                f"{max_pixels} (possible decompression bomb)")
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated image ({e})") from None


def _to_rgb(image):
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(pixels.max()), 1e-12)
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def pixel_hash(image):
    """Hash of the decoded pixels: the same picture saved twice, under any name or format, hashes the same."""
    return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()


def list_files(folder):
    """Every file under `folder`, sorted, hidden files included (a file that is not an image is reported)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def class_folders(dataset_dir):
    """The class sub-folders of an image-folder data set, sorted by name; refuse a layout that cannot be used."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (run download_dataset.py first, or set --dataset_dir)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise UserError(f"{root}: no class sub-folders found (expected one folder of images per class; "
                        f"found {found or 'nothing'})")
    empty = [p.name for p in folders if not list_files(p)]
    if empty:
        raise UserError(f"{root}: class folder(s) with no images: {', '.join(empty)}")
    return folders


def scan_images(paths, max_pixels, progress=True):
    """Decode each file once. Returns ([(path, pixel hash)], [(path, reason)]) for the good and the skipped."""
    from tqdm import tqdm
    good, skipped = [], []
    for path in tqdm(paths, desc="checking images", unit="img", disable=not progress):
        try:
            good.append((path, pixel_hash(load_image(path, max_pixels))))
        except UserError as e:
            skipped.append((path, str(e).split(": ", 1)[1]))
    return good, skipped


def print_skipped(skipped, csv_path=None):
    """One summary line, and each skipped file with its reason (also to csv_path, if given)."""
    if csv_path is not None:
        write_csv(csv_path, ["path", "reason"], [(str(p), r) for p, r in skipped])
    if not skipped:
        return
    where = f" (listed in {csv_path})" if csv_path is not None else ""
    print(f"skipped {len(skipped)} file(s) that cannot be used{where}:")
    for path, reason in skipped:
        print(f"  {path}: {reason}")


# ---------------------------------------------------------------- prompt

def classification_question(classes):
    """The fixed classification question, built from the class names exactly as the folders spell them."""
    return (f"Classify this image into one of these categories: {', '.join(classes)}. "
            "Output only the category name.")


def conversation(question, answer=None):
    """The one place the chat is built, for training and evaluation alike: a user turn with the image first."""
    example = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]}
    if answer is not None:
        example["completion"] = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return example


def render_example(processor, example, end_ids=None):
    """Prompt and completion text of a conversation() example, rendered by the processor's chat template as
    TRL renders it (the completion is what the full chat adds after the generation prompt).

    A completion with none of the end tokens (end_token_ids; by default the tokenizer's eos) gets the first:
    llava-hf's template closes the assistant turn with a space instead of </s>, and a model never shown
    its end token never learns to stop.
    """
    from trl.data_utils import apply_chat_template
    text = apply_chat_template(example, processor)
    tokenizer = processor.tokenizer
    ends = tokenizer.convert_ids_to_tokens(list(end_ids)) if end_ids is not None else [tokenizer.eos_token]
    if not any(end in text["completion"] for end in ends):
        text["completion"] = text["completion"].rstrip() + ends[0]
    return text


def render(processor, question, answers, end_ids=None):
    """Prompt text and one completion text per answer, exactly as training renders them."""
    rendered = [render_example(processor, conversation(question, a), end_ids) for a in answers]
    return rendered[0]["prompt"], [r["completion"] for r in rendered]


def normalise(text):
    """Case, runs of spaces, '-' and '_' and surrounding punctuation do not matter when matching a class."""
    text = re.sub(r"[\s_\-]+", " ", text.strip().lower())
    return text.strip(string.punctuation + " ")


def match_answer(answer, classes):
    """The class an answer names exactly (after normalise), or None."""
    wanted = normalise(answer)
    for name in classes:
        if normalise(name) == wanted:
            return name
    return None


# ---------------------------------------------------------------- data set files

def read_dataset_json(path):
    """A data set written by generate_train_json.py, with image paths made absolute."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (run generate_train_json.py first, or set the path)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        classes, samples = data["classes"], data["samples"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a data set written by generate_train_json.py ({e!r})") from None
    for i, sample in enumerate(samples):
        if sample.get("label") not in classes:
            raise UserError(f"{path}: sample {i} ({sample.get('image')}) has label {sample.get('label')!r}, "
                            f"which is not one of the classes {classes}")
        sample["image"] = str((path.parent / sample["image"]).resolve())
    return data


# ---------------------------------------------------------------- model

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


# How each family's image processor takes image_longest_edge, by class name (backend suffix dropped).
# Idefics3 (SmolVLM) and SmolVLM (SmolVLM2) resize the longest edge; Qwen2-VL's (also Qwen2.5-VL's) size is a
# pixel count, so the edge becomes a budget of edge x edge pixels. Families not listed ignore the setting.
LONGEST_EDGE_SIZE = {
    "Idefics3ImageProcessor": lambda size, edge: {"longest_edge": edge},
    "SmolVLMImageProcessor": lambda size, edge: {"longest_edge": edge},
    "Qwen2VLImageProcessor": lambda size, edge: {"shortest_edge": size["shortest_edge"], "longest_edge": edge * edge},
}


def set_resolution(processor, longest_edge, splitting):
    """Set how large images reach the model; saved with the processor, so evaluation sees what training saw.

    `longest_edge` maps to each family's own setting (LONGEST_EDGE_SIZE). SmolVLM with splitting also cuts
    tiles of max_image_size (512) plus one global tile; without splitting every image is one tile.
    """
    image_processor = processor.image_processor
    family = re.sub(r"(Pil|Fast)$", "", type(image_processor).__name__)
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


# ---------------------------------------------------------------- prediction

def _encode_prompts(processor, images, prompt, device):
    batch = processor(images=[[im] for im in images], text=[prompt] * len(images), padding=True,
                      padding_side="left", return_tensors="pt", add_special_tokens=False)
    return batch.to(device)


def class_answer_ids(processor, model, completions):
    """Token ids of each class's completion as the training collator tokenises it, up to its end token
    (render puts one in every completion)."""
    ends = set(end_token_ids(processor, model))
    ids = processor(text=completions, add_special_tokens=False)["input_ids"]
    return [seq[:next(i for i, t in enumerate(seq) if t in ends) + 1] for seq in ids]


def predict_scores(model, processor, images, question, classes):
    """Log-likelihood of every class's answer (its tokens and its end token) for each image.

    The image and question are encoded once; the class answers then continue from a copy of the
    cached prompt, all classes in one batch. Returns a (len(images), len(classes)) tensor.
    """
    import torch
    prompt, completions = render(processor, question, classes, end_token_ids(processor, model))
    answers = class_answer_ids(processor, model, completions)
    n_images, n_classes, longest = len(images), len(classes), max(len(a) for a in answers)
    pad = processor.tokenizer.pad_token_id or 0
    answer_ids = torch.tensor([a + [pad] * (longest - len(a)) for a in answers], device=model.device)
    answer_mask = torch.tensor([[1] * len(a) + [0] * (longest - len(a)) for a in answers], device=model.device)

    with torch.inference_mode():
        batch = _encode_prompts(processor, images, prompt, model.device)
        # Positions made as generate() makes them, so the answers can continue them: a forward pass on a
        # cache cannot infer them in every family (Qwen2-VL's M-RoPE positions depend on the image grid).
        positions = model._prepare_position_ids_for_generation(batch["input_ids"], dict(batch))
        out = model(**batch, position_ids=positions, use_cache=True)
        first = out.logits[:, -1].float().log_softmax(-1)  # predicts each answer's first token
        cache = out.cache
        cache.batch_repeat_interleave(n_classes)
        attention = torch.cat([batch["attention_mask"].repeat_interleave(n_classes, 0),
                               answer_mask.repeat(n_images, 1)], dim=1)
        answer_positions = positions[..., -1:].repeat_interleave(n_classes, -2) + torch.arange(
            1, longest + 1, device=model.device)
        rest = model(input_ids=answer_ids.repeat(n_images, 1), attention_mask=attention, position_ids=answer_positions,
                     cache=cache).logits.float().log_softmax(-1)
    per_token = torch.cat([first.repeat_interleave(n_classes, 0).unsqueeze(1), rest[:, :-1]], dim=1)
    token_logp = per_token.gather(-1, answer_ids.repeat(n_images, 1).unsqueeze(-1)).squeeze(-1)
    scores = (token_logp * answer_mask.repeat(n_images, 1)).sum(-1)
    return scores.view(n_images, n_classes).cpu()


def predict_generate(model, processor, images, question, max_new_tokens=32):
    """The original's way: let the model write an answer, then decode it."""
    import torch
    prompt, _ = render(processor, question, [""])
    with torch.inference_mode():
        batch = _encode_prompts(processor, images, prompt, model.device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def evaluate(model, processor, paths, question, classes, mode, batch_size, max_pixels, desc="evaluating"):
    """Predict every image in batches. Returns one dict per image: answer, predicted class, class probabilities."""
    from tqdm import tqdm
    results = []
    bar = tqdm(total=len(paths), desc=desc, unit="img")
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = [load_image(p, max_pixels) for p in chunk]
        if mode == "score":
            probs = predict_scores(model, processor, images, question, classes).softmax(-1)
            for row in probs.tolist():
                order = sorted(range(len(classes)), key=lambda i: -row[i])
                results.append({"answer": classes[order[0]], "pred": classes[order[0]],
                                "probs": dict(zip(classes, row)), "top2": [classes[i] for i in order[:2]]})
        elif mode == "generate":
            for text in predict_generate(model, processor, images, question):
                pred = match_answer(text, classes)
                results.append({"answer": text.strip(), "pred": pred or NO_CLASS, "probs": None,
                                "top2": [pred or NO_CLASS]})
        else:
            raise UserError(f"prediction mode {mode!r}: use 'score' or 'generate'")
        bar.update(len(chunk))
    bar.close()
    return results


# ---------------------------------------------------------------- metrics and reports

def metrics(true, pred, classes):
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows: true class).

    Predictions that name no class get a column of their own and count as wrong.
    """
    columns = classes + ([NO_CLASS] if NO_CLASS in pred else [])
    index = {c: i for i, c in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in classes]
    for t, p in zip(true, pred):
        matrix[index[t]][index[p]] += 1
    per_class = {}
    for i, name in enumerate(classes):
        tp = matrix[i][i]
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support, "correct": tp}
    correct = sum(matrix[i][i] for i in range(len(classes)))
    present = [c for c in classes if per_class[c]["support"]]
    return {"accuracy": correct / len(true) if true else 0.0, "correct": correct, "total": len(true),
            "macro_f1": sum(per_class[c]["f1"] for c in present) / len(present) if present else 0.0,
            "per_class": per_class, "labels": columns, "confusion_matrix": matrix}


def print_accuracy(result):
    """The original scripts' console lines, then a table of precision, recall and F1."""
    print("\n--- Category Accuracy Results ---")
    for name, m in result["per_class"].items():
        if m["support"]:
            print(f"type:{name},correct_rate:{m['recall']:.4f} ({m['correct']}/{m['support']})")
    print(f"\n{'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for name, m in result["per_class"].items():
        print(f"{name[:23]:<24}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>9}")
    print(f"{'macro F1':<24}{'':>20}{result['macro_f1']:>10.4f}{result['total']:>9}")
    print("\n--- Overall Accuracy ---")
    print(f"Total Correct: {result['correct']}/{result['total']}, Accuracy: {result['accuracy']:.4f}")


def prediction_rows(paths, results, true=None):
    rows = []
    for i, (path, r) in enumerate(zip(paths, results)):
        prob = f"{r['probs'][r['pred']]:.6f}" if r["probs"] else ""
        rows.append([str(path), true[i] if true else "", r["pred"], prob, " | ".join(r["top2"]), r["answer"]])
    return rows


PREDICTION_HEADER = ["path", "true_class", "predicted_class", "probability", "top2", "answer"]


def write_report(report_dir, paths, results, true, classes, extra):
    """report.json, predictions.csv and confusion_matrix.png in report_dir; returns the metrics."""
    report_dir = Path(report_dir)
    result = metrics(true, [r["pred"] for r in results], classes)
    write_json(report_dir / "report.json", {**extra, **result})
    write_csv(report_dir / "predictions.csv", PREDICTION_HEADER, prediction_rows(paths, results, true))
    buffer = io.BytesIO()
    draw_confusion_matrix(result["confusion_matrix"], classes, result["labels"], result["accuracy"]).save(buffer, "PNG")
    atomic_write(report_dir / "confusion_matrix.png", buffer.getvalue())
    return result


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_confusion_matrix(matrix, rows, columns, accuracy):
    """A heat-map of counts, rows the true class and columns the prediction, each row shaded by its share."""
    from PIL import ImageDraw
    cell, font, small = 64, _font(15), _font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(measure.textlength(n, font=small)) for n in rows + columns) + 16
    left, top = label_w + 24, label_w + 48
    width, height = left + cell * len(columns) + 16, top + cell * len(rows) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), f"Confusion matrix (accuracy {accuracy:.4f})", fill="black", font=font)
    for i, name in enumerate(rows):
        total = sum(matrix[i]) or 1
        y = top + i * cell
        draw.text((left - 8, y + cell // 2), name, fill="black", font=small, anchor="rm")
        for j, count in enumerate(matrix[i]):
            share = count / total
            shade = (int(255 - 200 * share), int(255 - 140 * share), 255)
            x = left + j * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline=(200, 200, 200))
            draw.text((x + cell // 2, y + cell // 2), str(count), font=font, anchor="mm",
                      fill="white" if share > 0.6 else "black")
    for j, name in enumerate(columns):
        label = Image.new("RGB", (label_w, 20), "white")
        ImageDraw.Draw(label).text((label_w - 4, 10), name, fill="black", font=small, anchor="rm")
        image.paste(label.rotate(90, expand=True), (left + j * cell + cell // 2 - 10, top - label_w - 4))
    draw.text((left - 8, top - 8), "true \\ predicted", fill=(90, 90, 90), font=small, anchor="rb")
    draw.text((left, height - 28), "rows: true class, columns: predicted class", fill=(90, 90, 90), font=small)
    return image


# ---------------------------------------------------------------- evaluation scripts

def saved_classes(model_path):
    """The class list and question fine_tune.py saved with a model, or None."""
    path = Path(model_path) / "classes.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def default_report_dir(model_path, name):
    """Reports go next to a local model, or under ./reports/ for a Hub id."""
    if Path(model_path).is_dir():
        return Path(model_path) / "reports" / name
    return Path("reports") / re.sub(r"[^\w.-]+", "_", model_path) / name


def evaluate_models(model_paths, paths, true, classes, question, *, mode, batch_size, device, dtype,
                    image_longest_edge, image_splitting, max_pixels, report_dir, report_name):
    """Evaluate each model on the same images, print the original's lines for each and, for two or more,
    a side-by-side table. With labels, writes report.json, predictions.csv and confusion_matrix.png;
    without, predictions.csv only. Returns each model's metrics (None without labels)."""
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    outcomes = []
    for model_path in model_paths:
        print(f"\n=== {model_path} ({len(paths)} images, {mode} mode, {device}) ===")
        processor = load_processor(model_path)
        set_resolution(processor, image_longest_edge, image_splitting)
        model = load_model(model_path, dtype, device).eval()
        results = evaluate(model, processor, paths, question, classes, mode, batch_size, max_pixels)
        out = Path(report_dir) / Path(model_path).name if report_dir and len(model_paths) > 1 else \
            Path(report_dir) if report_dir else default_report_dir(model_path, report_name)
        if true is None:
            write_csv(out / "predictions.csv", PREDICTION_HEADER, prediction_rows(paths, results))
            for path, r in zip(paths, results):
                prob = f" ({r['probs'][r['pred']]:.3f})" if r["probs"] else ""
                print(f"{path}: {r['pred']}{prob}")
            outcomes.append(None)
        else:
            extra = {"model": str(model_path), "prediction": mode, "classes": classes, "question": question}
            result = write_report(out, paths, results, true, classes, extra)
            print_accuracy(result)
            outcomes.append(result)
        print(f"report written to {out}")
        del model
    if true is not None and len(model_paths) > 1:
        print_comparison(model_paths, outcomes, classes)
    return outcomes


def print_comparison(model_paths, outcomes, classes):
    names = [Path(p).name[:18] for p in model_paths]
    print("\n--- Side by side (per-class recall, accuracy, macro F1) ---")
    print(f"{'class':<24}" + "".join(f"{n:>20}" for n in names))
    for c in classes:
        print(f"{c[:23]:<24}" + "".join(f"{o['per_class'][c]['recall']:>20.4f}" for o in outcomes))
    print(f"{'accuracy':<24}" + "".join(f"{o['accuracy']:>20.4f}" for o in outcomes))
    print(f"{'macro F1':<24}" + "".join(f"{o['macro_f1']:>20.4f}" for o in outcomes))
