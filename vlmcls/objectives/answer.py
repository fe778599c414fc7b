"""The answer objective (the original): the model learns to write the class name, and classifies by the likelihood
of each class's answer (score mode) or by the answer it writes (generate mode). It adds nothing to the model."""
import random
from functools import partial

from ..augment import augment
from ..cli import UserError
from ..compat import generation_position_ids
from ..inputs import collate, through_end
from ..models import base_of, end_token_ids
from ..prompt import NO_CLASS, chat_rows, match_answer, render, render_segments
from .base import scored_results

NAME = "answer"
FILES = ()  # it adds nothing to the model
SCORE_MODE = "score"
SCORED_BY = "the likelihood of its answer (score mode)"
TEST_LOSS = "classification answers"


def check_settings(*, freeze_backbone, use_lora, class_balance, augment, cached, label_smoothing=0.0,
                   multi_label=False):
    """Refuse the head objective's settings, and multi-label data (never trained as single-label)."""
    if multi_label:
        raise UserError("objective=answer does not train multi-label data yet (issue 44: its yes/no questions per "
                        "class are a later step): use objective=head")
    if freeze_backbone or class_balance == "weighted":
        raise UserError("freeze_backbone and class_balance=weighted apply to objective=head only (the answer "
                        "objective trains the model itself; class_balance=oversample balances it)")


def carries(model):
    """The answer objective adds nothing to a model."""
    return False


def attach(model, n_classes, multi_label=False):
    return model


def prepare(model, freeze_backbone):
    """Nothing of its own to train or to keep out of LoRA."""
    return None


def features(model, processor, encoder, paths, question, batch_size, autocast):
    """The answer objective reads the whole model at every step: nothing to compute once."""
    return None


def chat_dataset(rows, encoder, processor, end_ids, how_augment="none", seed=0):
    """Training rows as a datasets.Dataset of model inputs (InputEncoder.example), each distinct chat rendered once
    and each image taken from the encoder's cache when a batch is drawn, transformed by augment() unless
    `how_augment` is "none" (seeded: the same draws on every run)."""
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
        if how_augment != "none":
            examples = [{**e, "tensors": augment(e["tensors"], how_augment, rng)} for e in examples]
        return {key: [e[key] for e in examples] for key in examples[0]}
    return Dataset.from_dict({"row": list(range(len(items)))}).with_transform(to_inputs)


def answer_only_collator(processor):
    """Right-padded training batches; labels on the answers and their end tokens only (InputEncoder.example)."""
    pad = processor.tokenizer.pad_token_id
    return partial(collate, pad_id=pad if pad is not None else 0, padding_side="right")


def answer_loss(model, inputs, num_items_in_batch=None):
    """(the model's own causal-LM loss, its outputs), computing the vocabulary's logits only where a label follows.

    The labels are the answers' tokens (InputEncoder.example); position i predicts token i + 1, so the model
    projects only the positions whose next token is labelled, as a boolean mask (its forward's `logits_to_keep`),
    inside its own forward: DDP, FSDP and peft wrap that call as any other. The rest of a chat (the image's tokens,
    the question) never goes through the output layer. The loss is the sum of the answers' token cross-entropies
    over `num_items_in_batch` (the Trainer's count of the labelled tokens of every micro-batch of the optimizer
    step, on every process), or over this batch's count where it is None (evaluation): the reduction of
    transformers' ForCausalLMLoss. The outputs hold, per labelled token, the logits, the entropy of the
    next-token distribution and whether the label is its most likely token (TRL's training metrics)."""
    import torch
    from transformers.modeling_outputs import ModelOutput
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = targets != -100
    logits = model(**inputs, use_cache=False, logits_to_keep=predicts).logits.float()
    targets = targets[predicts[:, :-1]].to(logits.device)
    if logits.shape != (len(targets), logits.shape[-1]):
        raise UserError(f"{type(base_of(model)).__name__} returned logits of shape {tuple(logits.shape)} for a "
                        "boolean logits_to_keep: the answer objective needs a model whose forward slices its "
                        "positions as transformers' slice_logits_to_keep does")
    total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    loss = total / (len(targets) if num_items_in_batch is None else num_items_in_batch)
    with torch.no_grad():
        logp = logits.log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1)
    return loss, ModelOutput(loss=loss, logits=logits, entropy=entropy, is_top1=logits.argmax(-1) == targets)


def training_set(data, *, encoder, processor, end_ids, train_questions, multi_turn, class_balance=None,
                 label_smoothing=None, how_augment="none", seed=0, features=None):
    """The training chats of `data` (chat_rows), the answer-only collator and the answers' loss (answer_loss)."""
    return dict(train_dataset=chat_dataset(chat_rows(data, train_questions, multi_turn), encoder, processor, end_ids,
                                           how_augment, seed),
                data_collator=answer_only_collator(processor), loss=answer_loss)


def test_set(data, *, classes, question, encoder, processor, end_ids, features=None):
    """Each held-out image's classification question and answer, one chat each."""
    return chat_dataset(chat_rows(data, "classification", multi_turn=False), encoder, processor, end_ids)


def save(model, out, save_model, main=True):
    """The model as it is."""
    save_model(str(out))


def load(model_path, model, saved):
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


def scoring_module(model, processor, question, classes):
    """Score mode's log-likelihoods of every class's whole answer (each token through its end token; the first alone
    would not do: class names share first tokens), as a module from a batch of prompts to (images, classes) scores:
    the prompts once, then every answer from a copy of their cache, all answers of all images in one batch. What
    predict_scores runs and the export exports. The classes' answer ids are fixed in the module, and returned."""
    import torch
    _, completions = render(processor, question, classes, end_token_ids(processor, model))
    answers = class_answer_ids(processor, model, completions)

    class AnswerScores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            longest = max(len(a) for a in answers)
            self.register_buffer("answer_ids", torch.tensor([a + [0] * (longest - len(a)) for a in answers],
                                                            device=model.device))
            self.register_buffer("answer_mask", torch.tensor([[1] * len(a) + [0] * (longest - len(a))
                                                              for a in answers], device=model.device))

        def forward(self, input_ids, pixel_values, attention_mask=None, position_ids=None, **images):
            n_images, length = input_ids.shape
            n_classes, longest = self.answer_ids.shape
            if attention_mask is None:  # one prompt without padding (the exported graph's input)
                attention_mask = torch.ones_like(input_ids)
                position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0)
            out = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=True, **images)
            first = out.logits[:, -1].float().log_softmax(-1)  # predicts each answer's first token
            cache = out.cache
            cache.batch_repeat_interleave(n_classes)
            # The answers are right-padded: a causal model's later positions change nothing before them, and the
            # padding's own scores are masked out of the sum.
            answer_ids, answer_mask = self.answer_ids.repeat(n_images, 1), self.answer_mask.repeat(n_images, 1)
            attention = torch.cat([attention_mask.repeat_interleave(n_classes, 0), answer_mask], dim=1)
            answer_positions = position_ids[..., -1:].repeat_interleave(n_classes, -2) + torch.arange(
                1, longest + 1, device=input_ids.device)
            rest = self.model(input_ids=answer_ids, attention_mask=attention, position_ids=answer_positions,
                              cache=cache).logits.float().log_softmax(-1)
            per_token = torch.cat([first.repeat_interleave(n_classes, 0).unsqueeze(1), rest[:, :-1]], dim=1)
            token_logp = per_token.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1)
            return (token_logp * answer_mask).sum(-1).view(n_images, n_classes)
    return AnswerScores().eval(), answers


def predict_scores(model, processor, batch, question, classes):
    """Log-likelihood of every class's answer (its tokens and its end token) for each image of a PromptBatches batch,
    as scoring_module computes it: a (number of images, len(classes)) tensor on the CPU."""
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
    """Every class ranked by the likelihood of its answer; the result is always a class."""
    return scored_results(predict_scores(model, processor, batch, question, classes).tolist(), classes)


def generate_mode(model, processor, batch, question, classes):
    """The original's way: the answer the model writes, matched to a class exactly after normalising."""
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
