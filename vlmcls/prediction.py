"""Prediction: a class for each image, by scoring every class's answer or by letting the model write one."""
import math

from .cli import OneOf, UserError
from .compat import generation_position_ids
from .head import head_prediction
from .inputs import InputEncoder, collate, through_end
from .models import end_token_ids
from .prompt import match_answer, render, render_segments

NO_CLASS = "(no class)"  # what an answer that names no class is reported as


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


def class_answer_ids(processor, model, completions):
    """Token ids of each class's completion as the training collator tokenises it, up to its end token
    (render puts one in every completion)."""
    ends = set(end_token_ids(processor, model))
    return [through_end(seq, ends) for seq in processor(text=completions, add_special_tokens=False)["input_ids"]]


def predict_scores(model, processor, batch, question, classes):
    """Log-likelihood of every class's answer (its tokens and its end token) for each image of a PromptBatches batch.

    The image and question are encoded once; the class answers then continue from a copy of the
    cached prompt, all classes in one batch. Returns a (number of images, len(classes)) tensor.
    """
    import torch
    _, completions = render(processor, question, classes, end_token_ids(processor, model))
    answers = class_answer_ids(processor, model, completions)
    n_images, n_classes, longest = len(batch["input_ids"]), len(classes), max(len(a) for a in answers)
    pad = processor.tokenizer.pad_token_id or 0
    answer_ids = torch.tensor([a + [pad] * (longest - len(a)) for a in answers], device=model.device)
    answer_mask = torch.tensor([[1] * len(a) + [0] * (longest - len(a)) for a in answers], device=model.device)

    with torch.inference_mode():
        batch = {k: v.to(model.device) for k, v in batch.items()}
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


def predict_generate(model, processor, batch, max_new_tokens=32):
    """The original's way: let the model write an answer to each prompt of a PromptBatches batch, then decode it."""
    import torch
    with torch.inference_mode():
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def ranked(classes, probs):
    """A score-mode result: the most probable class is the prediction."""
    order = sorted(range(len(classes)), key=lambda i: -probs[i])
    return {"answer": classes[order[0]], "pred": classes[order[0]], "probs": dict(zip(classes, probs)),
            "top2": [classes[i] for i in order[:2]]}


def score_mode(model, processor, batch, question, classes):
    """Every class ranked by the likelihood of its answer; the result is always a class."""
    scores = predict_scores(model, processor, batch, question, classes)
    return [ranked(classes, row) for row in scores.softmax(-1).tolist()]


def shift(results, classes, bias):
    """Results ranked again with `bias` (one number per class) added to each class's log-probability, as the class
    bias of vlmcls.calibration does; results without probabilities (generate mode) stay as they are."""
    shifted = []
    for result in results:
        if result["probs"] is None:
            shifted.append(result)
            continue
        # 1e-45: about the smallest float32 probability, for a class whose probability underflowed to 0
        logits = [math.log(max(result["probs"][name], 1e-45)) + b for name, b in zip(classes, bias)]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]
        total = sum(weights)
        shifted.append(ranked(classes, [w / total for w in weights]))
    return shifted


def generate_mode(model, processor, batch, question, classes):
    """The original's way: the answer the model writes, matched to a class exactly after normalising."""
    results = []
    for text in predict_generate(model, processor, batch):
        pred = match_answer(text, classes) or NO_CLASS
        results.append({"answer": text.strip(), "pred": pred, "probs": None, "top2": [pred]})
    return results


def head_mode(model, processor, batch, question, classes):
    """A model with a classification head (vlmcls.head): the softmax of its logits, one forward pass per batch."""
    import torch
    with torch.inference_mode():
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(**batch, position_ids=generation_position_ids(model, batch)).logits
    return [ranked(classes, row) for row in logits.float().softmax(-1).tolist()]


# The prediction modes by name: a new mode is one function of this shape and one entry here.
MODES = {"score": score_mode, "generate": generate_mode, "head": head_mode}
PREDICTIONS = OneOf(*MODES)


def predict_batches(model, processor, batches, question, classes, mode, max_pixels, *, enlarge=False, workers=0,
                    encoder=None, bias=None):
    """Predict each batch of images (file paths, or decoded images), the next batches prepared by `workers` processes
    while the model runs, or taken from `encoder`'s cache; each image is checked as it is prepared. With `bias` (a
    class bias's values), score mode's results are shifted by it. Yields, per batch, (positions in the batch of the
    images predicted, one result dict each: answer, predicted class, class probabilities; [(position, message)] of
    the files that cannot be used)."""
    from torch.utils.data import DataLoader
    if mode not in MODES:
        raise UserError(f"prediction mode {mode!r}: use {' or '.join(MODES)}")
    predict = MODES[head_prediction(model, mode)]
    loader = DataLoader(batches, batch_size=None, num_workers=workers if len(batches) > 1 else 0,
                        collate_fn=PromptBatches(processor, question, max_pixels, enlarge, encoder).checked)
    for batch, kept, problems in loader:
        results = predict(model, processor, batch, question, classes) if batch is not None else []
        yield kept, shift(results, classes, bias) if bias else results, problems


def in_batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def evaluate(model, processor, images, question, classes, mode, batch_size, max_pixels, *, enlarge=False,
             workers=0, encoder=None, bias=None, desc="evaluating"):
    """predict_batches over every image, in batches of `batch_size`; a file that cannot be used stops it with its
    name and reason. Returns one result dict per image."""
    from tqdm import tqdm
    results = []
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for _, batch_results, problems in predict_batches(
                model, processor, in_batches(list(images), batch_size), question, classes, mode, max_pixels,
                enlarge=enlarge, workers=workers, encoder=encoder, bias=bias):
            if problems:
                raise UserError(problems[0][1])
            results += batch_results
            bar.update(len(batch_results))
    return results
