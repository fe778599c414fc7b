"""Prediction: a class for each image, by scoring every class's answer or by letting the model write one."""
from .cli import OneOf, UserError
from .compat import generation_position_ids
from .images import load_image
from .models import end_token_ids
from .prompt import match_answer, render

NO_CLASS = "(no class)"  # what an answer that names no class is reported as


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
        positions = generation_position_ids(model, batch)
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


def score_mode(model, processor, images, question, classes):
    """Every class ranked by the likelihood of its answer; the result is always a class."""
    results = []
    for row in predict_scores(model, processor, images, question, classes).softmax(-1).tolist():
        order = sorted(range(len(classes)), key=lambda i: -row[i])
        results.append({"answer": classes[order[0]], "pred": classes[order[0]],
                        "probs": dict(zip(classes, row)), "top2": [classes[i] for i in order[:2]]})
    return results


def generate_mode(model, processor, images, question, classes):
    """The original's way: the answer the model writes, matched to a class exactly after normalising."""
    results = []
    for text in predict_generate(model, processor, images, question):
        pred = match_answer(text, classes) or NO_CLASS
        results.append({"answer": text.strip(), "pred": pred, "probs": None, "top2": [pred]})
    return results


# The prediction modes by name: a new mode is one function of this shape and one entry here.
MODES = {"score": score_mode, "generate": generate_mode}
PREDICTIONS = OneOf(*MODES)


def evaluate(model, processor, paths, question, classes, mode, batch_size, max_pixels, desc="evaluating"):
    """Predict every image in batches. Returns one dict per image: answer, predicted class, class probabilities."""
    from tqdm import tqdm
    if mode not in MODES:
        raise UserError(f"prediction mode {mode!r}: use {' or '.join(MODES)}")
    predict = MODES[mode]
    results = []
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            results += predict(model, processor, [load_image(p, max_pixels) for p in chunk], question, classes)
            bar.update(len(chunk))
    return results
