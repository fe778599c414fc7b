"""The answer objective (the original): the model learns to write the class name, and classifies by the likelihood
of each class's answer (score mode) or by the answer it writes (generate mode); on multi-label data it learns to
answer "yes" or "no" to a question per class, and a class's probability is P(yes) / (P(yes) + P(no)) of its
question. It adds nothing to the model's weights."""
import random
from functools import partial

from ..augment import augment
from ..cli import UserError
from ..compat import generation_position_ids
from ..inputs import TOKEN_KEYS, collate, through_end
from ..models import base_of, end_token_ids
from ..prompt import NO, NO_CLASS, YES, chat_rows, match_answer, presence_question, presence_rows, render, \
    render_segments
from .base import multi_label_results, positive_weights, scored_results

NAME = "answer"
FILES = ()  # it adds nothing to the model
SCORE_MODE = "score"
SCORED_BY = "the likelihood of its answer (score mode)"
TEST_LOSS = "classification answers"
MULTI_LABEL_LOSS = "yes/no answers, weighted by the label weights"
MULTI_LABEL = "yes_no_thresholds"  # a multi-label model's attribute: its {class: threshold} (None: 0.5 each)


def check_settings(*, freeze_backbone, use_lora, class_balance, augment, cached, label_smoothing=0.0,
                   multi_label=False):
    """Refuse the head objective's settings; on multi-label data class_balance=weighted weighs each class's yes
    answers (per-class positive weights) and oversample is refused."""
    if multi_label and class_balance == "oversample":
        raise UserError("class_balance=oversample repeats each class's images, which multi-label images (several "
                        "classes each) cannot be: use class_balance=weighted (per-class weights of the yes answers)")
    if freeze_backbone or (class_balance == "weighted" and not multi_label):
        raise UserError("freeze_backbone and class_balance=weighted apply to objective=head only (the answer "
                        "objective trains the model itself; class_balance=oversample balances it; on multi-label "
                        "data class_balance=weighted weighs the yes answers)")


def carries(model):
    """The answer objective adds nothing to a model."""
    return False


def attach(model, n_classes, multi_label=False):
    """A multi-label model is marked so (its score mode asks each class's yes/no question), 0.5 each its
    thresholds while it trains."""
    if multi_label:
        setattr(base_of(model), MULTI_LABEL, None)
    return model


def is_multi_label(model):
    """Whether the model answers a yes/no question per class (attach, load)."""
    return hasattr(base_of(model), MULTI_LABEL)


def prepare(model, freeze_backbone):
    """Nothing of its own to train or to keep out of LoRA."""
    return None


def features(model, processor, encoder, paths, question, batch_size, autocast):
    """The answer objective reads the whole model at every step: nothing to compute once."""
    return None


def chat_dataset(rows, encoder, processor, end_ids, how_augment="none", seed=0, weights=None):
    """Training rows as a datasets.Dataset of model inputs (InputEncoder.example), each distinct chat rendered once
    and each image taken from the encoder's cache when a batch is drawn, transformed by augment() unless
    `how_augment` is "none" (seeded: the same draws on every run); with `weights` (one per row) each example's
    "weight", by which the loss weighs its answer's tokens."""
    from datasets import Dataset
    rendered = {}
    for _, pairs in rows:
        if tuple(pairs) not in rendered:
            rendered[tuple(pairs)] = render_segments(processor, pairs, end_ids)
    items = [(image, rendered[tuple(pairs)]) for image, pairs in rows]
    end_ids = list(end_ids)
    rng = random.Random(seed)

    def to_inputs(batch):
        examples = [encoder.example(*items[i], end_ids) for i in batch["row"]]
        if weights is not None:
            examples = [{**e, "weight": weights[i]} for e, i in zip(examples, batch["row"])]
        if how_augment != "none":
            examples = [{**e, "tensors": augment(e["tensors"], how_augment, rng)} for e in examples]
        return {key: [e[key] for e in examples] for key in examples[0]}
    return Dataset.from_dict({"row": list(range(len(items)))}).with_transform(to_inputs)


def answer_only_collator(processor):
    """Right-padded training batches; labels on the answers and their end tokens only (InputEncoder.example), and
    the rows' weights as "weights" where the examples carry them (multi-label data)."""
    import torch
    pad = processor.tokenizer.pad_token_id
    padded = partial(collate, pad_id=pad if pad is not None else 0, padding_side="right")

    def to_batch(examples):
        batch = padded(examples)
        if "weight" in examples[0]:
            batch["weights"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float32)
        return batch
    return to_batch


def answer_loss(model, inputs, num_items_in_batch=None):
    """(the model's own causal-LM loss, its outputs), computing the vocabulary's logits only where a label follows.

    The labels are the answers' tokens (InputEncoder.example); position i predicts token i + 1, so the model
    projects only the positions whose next token is labelled, as a boolean mask (its forward's `logits_to_keep`),
    inside its own forward: DDP, FSDP and peft wrap that call as any other. The rest of a chat (the image's tokens,
    the question) never goes through the output layer. The loss is the sum of the answers' token cross-entropies
    (each weighed by its row's weight where the batch has "weights": multi-label data's yes/no rows) over
    `num_items_in_batch` (the Trainer's count of the labelled tokens of every micro-batch of the optimizer
    step, on every process), or over this batch's count where it is None (evaluation): the reduction of
    transformers' ForCausalLMLoss. The outputs hold, per labelled token, the logits, the entropy of the
    next-token distribution and whether the label is its most likely token (TRL's training metrics)."""
    import torch
    from transformers.modeling_outputs import ModelOutput
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    weights = inputs.pop("weights", None)
    targets = labels[:, 1:]
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = targets != -100
    logits = model(**inputs, use_cache=False, logits_to_keep=predicts).logits.float()
    targets = targets[predicts[:, :-1]].to(logits.device)
    if logits.shape != (len(targets), logits.shape[-1]):
        raise UserError(f"{type(base_of(model)).__name__} returned logits of shape {tuple(logits.shape)} for a "
                        "boolean logits_to_keep: the answer objective needs a model whose forward slices its "
                        "positions as transformers' slice_logits_to_keep does")
    if weights is None:
        total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    else:  # each token weighs its row's weight
        rows = predicts[:, :-1].nonzero()[:, 0].to(weights.device)
        total = (torch.nn.functional.cross_entropy(logits, targets, reduction="none")
                 * weights[rows].to(logits.device)).sum()
    loss = total / (len(targets) if num_items_in_batch is None else num_items_in_batch)
    with torch.no_grad():
        logp = logits.log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1)
    return loss, ModelOutput(loss=loss, logits=logits, entropy=entropy, is_top1=logits.argmax(-1) == targets)


def weighted_presence_rows(data, class_balance="none"):
    """presence_rows of multi-label `data` as (rows, weights): with class_balance=weighted each yes row's weight
    times its class's positive weight (positive_weights), as binary cross-entropy's pos_weight weighs a positive."""
    rows = presence_rows(data)
    balance = positive_weights(data["samples"], data["classes"], class_balance)
    scale = {presence_question(name): b for name, b in zip(data["classes"], balance)} if balance else {}
    weights = [w * scale.get(pairs[0][0], 1.0) if pairs[0][1] == YES else w for _, pairs, w in rows]
    return [(image, pairs) for image, pairs, _ in rows], weights


def training_set(data, *, encoder, processor, end_ids, train_questions, multi_turn, class_balance=None,
                 label_smoothing=None, how_augment="none", seed=0, features=None):
    """The training chats of `data` (chat_rows; multi-label data: weighted_presence_rows), the answer-only
    collator and the answers' loss (answer_loss)."""
    rows, weights = weighted_presence_rows(data, class_balance) if data.get("multi_label") else \
        (chat_rows(data, train_questions, multi_turn), None)
    return dict(train_dataset=chat_dataset(rows, encoder, processor, end_ids, how_augment, seed, weights),
                data_collator=answer_only_collator(processor), loss=answer_loss)


def test_set(data, *, classes, question, encoder, processor, end_ids, features=None):
    """Each held-out image's classification question and answer, one chat each (multi-label data: its yes/no
    questions, weighted as training weighs them without class balance)."""
    rows, weights = weighted_presence_rows(data) if data.get("multi_label") else \
        (chat_rows(data, "classification", multi_turn=False), None)
    return chat_dataset(rows, encoder, processor, end_ids, weights=weights)


def save(model, out, save_model, main=True):
    """The model as it is."""
    save_model(str(out))


def load(model_path, model, saved):
    """The model, marked multi-label with its saved thresholds where its record says so."""
    if saved.multi_label:
        setattr(base_of(model), MULTI_LABEL, saved.thresholds)
    return model


def prediction_mode(mode):
    """Score and generate modes as asked; the head's mode needs a head."""
    if mode not in MODES:
        raise UserError("prediction=head needs a model fine-tuned with objective=head (classifier.safetensors)")
    return mode


def results_from_features(model, features, paths, classes):
    raise UserError("the answer objective computes no features")


def class_answer_ids(processor, model, completions):
    """Token ids of each class's completion as the training collator tokenises it, up to its end token
    (render puts one in every completion)."""
    ends = set(end_token_ids(processor, model))
    return [through_end(seq, ends) for seq in processor(text=completions, add_special_tokens=False)["input_ids"]]


def continuation_scores(model, continuations, scored, cut=0):
    """A module from a batch of prompts to the log-likelihood of each of `continuations` (token id lists) after
    each prompt, summed over its tokens marked in `scored` (0/1 lists as long): (images, continuations) scores.
    The prompts run once, without their last `cut` tokens, then every continuation from a copy of their cache, all
    continuations of all images in one batch."""
    import torch

    class ContinuationScores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            longest = max(len(a) for a in continuations)
            self.register_buffer("answer_ids", torch.tensor([a + [0] * (longest - len(a)) for a in continuations],
                                                            device=model.device))
            self.register_buffer("answer_mask", torch.tensor([[1] * len(a) + [0] * (longest - len(a))
                                                              for a in continuations], device=model.device))
            self.register_buffer("scored", torch.tensor([s + [0] * (longest - len(s)) for s in scored],
                                                        device=model.device))

        def forward(self, input_ids, pixel_values, attention_mask=None, position_ids=None, **images):
            if attention_mask is None:  # one prompt without padding (the exported graph's input)
                attention_mask = torch.ones_like(input_ids)
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            if cut:  # the prompt's per-token inputs (TOKEN_KEYS), as its tokens, lose their last `cut`
                input_ids, attention_mask, position_ids = input_ids[:, :-cut], attention_mask[:, :-cut], \
                    position_ids[..., :-cut]
                images = {k: v[:, :-cut] if k in TOKEN_KEYS else v for k, v in images.items()}
            n_images = input_ids.shape[0]
            n_classes, longest = self.answer_ids.shape
            out = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=True, **images)
            first = out.logits[:, -1].float().log_softmax(-1)  # predicts each continuation's first token
            cache = out.cache
            cache.batch_repeat_interleave(n_classes)
            # The continuations are right-padded: a causal model's later positions change nothing before them, and
            # the padding's own scores are masked out of the sum.
            answer_ids, answer_mask = self.answer_ids.repeat(n_images, 1), self.answer_mask.repeat(n_images, 1)
            attention = torch.cat([attention_mask.repeat_interleave(n_classes, 0), answer_mask], dim=1)
            answer_positions = position_ids[..., -1:].repeat_interleave(n_classes, -2) + torch.arange(
                1, longest + 1, device=input_ids.device)
            rest = self.model(input_ids=answer_ids, attention_mask=attention, position_ids=answer_positions,
                              cache=cache).logits.float().log_softmax(-1)
            per_token = torch.cat([first.repeat_interleave(n_classes, 0).unsqueeze(1), rest[:, :-1]], dim=1)
            token_logp = per_token.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1)
            return (token_logp * self.scored.repeat(n_images, 1)).sum(-1).view(n_images, n_classes)
    return ContinuationScores().eval()


def after_image(processor, question):
    """(the prompt's token ids before and through the image placeholder, those after it) of `question`'s prompt,
    tokenised as InputEncoder.example tokenises it."""
    ids = processor.tokenizer(render_segments(processor, [(question, None)])[0][0],
                              add_special_tokens=False)["input_ids"]
    at = ids.index(processor.tokenizer.convert_tokens_to_ids(processor.image_token)) + 1
    return ids[:at], ids[at:]


def presence_scores(model, processor, question, classes):
    """A multi-label model's scores, as a module from a batch of `question`'s prompts to (images, classes) scores:
    each class's log P(yes) - log P(no) of its presence_question (each answer's whole likelihood, through its end
    token), whose sigmoid is P(yes) / (P(yes) + P(no)). The prompts' image is read once: their text after it is
    cut, and every class's question and answer continue from a copy of the cache."""
    import torch
    end_ids = end_token_ids(processor, model)
    before, after = after_image(processor, question)
    continuations, scored = [], []
    for name in classes:
        own_before, own_after = after_image(processor, presence_question(name))
        if own_before != before:
            raise UserError(f"the chat template renders the prompt before the image differently for {question!r} "
                            f"and {presence_question(name)!r}, so the yes/no questions cannot share the image")
        _, completions = render(processor, presence_question(name), [YES, NO], end_ids)
        for answer in class_answer_ids(processor, model, completions):
            continuations.append(own_after + answer)
            scored.append([0] * len(own_after) + [1] * len(answer))
    pairs = continuation_scores(model, continuations, scored, cut=len(after))

    class PresenceScores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.pairs = model, pairs

        def forward(self, *args, **kwargs):
            yes_no = self.pairs(*args, **kwargs)
            return yes_no[:, 0::2] - yes_no[:, 1::2]
    return PresenceScores().eval()


def scoring_module(model, processor, question, classes):
    """Score mode's log-likelihoods of every class's whole answer (each token through its end token; the first alone
    would not do: class names share first tokens), as a module from a batch of prompts to (images, classes) scores
    (continuation_scores): what predict_scores runs and the export exports. The classes' answer ids are fixed in the
    module, and returned. A multi-label model's module is presence_scores' (no answer ids)."""
    if is_multi_label(model):
        return presence_scores(model, processor, question, classes), None
    _, completions = render(processor, question, classes, end_token_ids(processor, model))
    answers = class_answer_ids(processor, model, completions)
    return continuation_scores(model, answers, [[1] * len(a) for a in answers]), answers


def predict_scores(model, processor, batch, question, classes):
    """Log-likelihood of every class's answer (its tokens and its end token) for each image of a PromptBatches batch,
    as scoring_module computes it (a multi-label model's: log P(yes) - log P(no) of each class's question): a
    (number of images, len(classes)) tensor on the CPU."""
    import torch
    module, _ = scoring_module(model, processor, question, classes)
    with torch.inference_mode():
        batch = {k: v.to(model.device) for k, v in batch.items()}
        return module(**batch, position_ids=generation_position_ids(model, batch)).cpu()


def predict_generate(model, processor, batch, max_new_tokens=32):
    """The original's way: let the model write an answer to each prompt of a PromptBatches batch, then decode it."""
    import torch
    with torch.inference_mode():
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def score_mode(model, processor, batch, question, classes):
    """Every class ranked by the likelihood of its answer; the result is always a class. A multi-label model's
    result is each class's P(yes) / (P(yes) + P(no)) and the labels at or above their thresholds."""
    scores = predict_scores(model, processor, batch, question, classes).tolist()
    if is_multi_label(model):
        return multi_label_results(scores, classes, thresholds=getattr(base_of(model), MULTI_LABEL))
    return scored_results(scores, classes)


def generate_mode(model, processor, batch, question, classes):
    """The original's way: the answer the model writes, matched to a class exactly after normalising."""
    if is_multi_label(model):
        raise UserError("this model was fine-tuned on multi-label data: it answers a yes/no question per class, "
                        "which score mode asks; use --prediction=score")
    results = []
    for text in predict_generate(model, processor, batch):
        pred = match_answer(text, classes) or NO_CLASS
        results.append({"answer": text.strip(), "pred": pred, "probs": None, "top2": [pred]})
    return results


def output_order(model, classes):
    """scoring_module scores the classes it is asked, in their order."""
    return None


def scoring_layer(model):
    """The layer whose outputs are the scores (export keeps it float in int8): the language model's output layer."""
    return model.get_output_embeddings()


MODES = {"score": score_mode, "generate": generate_mode}
