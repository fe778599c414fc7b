"""The head objective: a linear classifier on the final hidden state at the last prompt token, its loss, its
training data (encoded images, or each image's state computed once when the backbone is frozen) and its file."""
import contextlib
import random
from functools import partial
from pathlib import Path

from ..augment import augment
from ..cli import UserError
from ..compat import generation_position_ids, remove_forward, set_forward
from ..files import atomic_write
from ..inputs import PromptBatches, collate
from ..models import base_of
from ..prompt import render_segments
from .base import class_order, positive_weights, results_of

NAME = "head"
SCORE_MODE = "head"
SCORED_BY = "its classification head"
TEST_LOSS = "head cross-entropy"
MULTI_LABEL_LOSS = "head binary cross-entropy, a sigmoid a class"
HEAD_NAME = "classifier_head"  # the head's attribute on the model (and its key prefix in checkpoints)
HEAD_FILE = "classifier.safetensors"  # the head's weights in a saved model folder
FILES = (HEAD_FILE,)


def check_settings(*, freeze_backbone, use_lora, class_balance, augment, cached, label_smoothing=0.0,
                   multi_label=False):
    """Refuse settings that mean nothing together, before the model loads."""
    if multi_label and class_balance == "oversample":
        raise UserError("class_balance=oversample repeats each class's images, which multi-label images (several "
                        "classes each) cannot be: use class_balance=weighted (per-class positive weights)")
    if multi_label and label_smoothing:
        raise UserError(f"label_smoothing={label_smoothing} is for single-label data: multi-label targets are the "
                        "label weights (give soft weights in the labels CSV instead)")
    if freeze_backbone and use_lora:
        raise UserError("freeze_backbone trains the head alone: LoRA adapters would stay untrained; use one of them")
    if freeze_backbone and cached and augment != "none":
        raise UserError(f"freeze_backbone computes each image's state once, so augment={augment} could not vary it: "
                        "use augment=none, or cache_frozen_states=false")


def head_of(model):
    """The model's head (through a peft wrapper), or None: a model with a head classifies with it."""
    return getattr(model, HEAD_NAME, None)


def carries(model):
    """Whether the model has a head: a model with a head classifies with it."""
    return head_of(model) is not None


def prediction_mode(mode):
    """A model with a head classifies with it in score mode (its answers were never trained); it writes no answers
    to generate."""
    if mode == "generate":
        raise UserError("this model was fine-tuned with objective=head: it classifies with its head and writes no "
                        "answers; use --prediction=score")
    return "head"


def last_positions(attention_mask):
    """The index of each row's last attended token: the last prompt token, whichever side the padding is on."""
    return attention_mask.shape[1] - 1 - attention_mask.flip(-1).argmax(-1)


def pooled_state(model, batch):
    """The final hidden state (after the language model's last norm) at each row's last prompt token, as float32.

    The inner model (Idefics3Model, LlavaModel, ...) is run without the language-model head: the vocabulary's
    logits are not needed."""
    import torch
    inputs = {k: v for k, v in batch.items() if v is not None and k not in (
        "labels", "logits_to_keep", "return_dict", "output_attentions", "output_hidden_states", "use_cache")}
    hidden = base_of(model).model(**inputs, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_positions(batch["attention_mask"]).to(hidden.device)].float()


def _head_forward(self, pooled=None, **batch):
    """The model's forward while it has a head: logits over the classes, from the images and prompts of a batch, or
    from their pooled states computed before. Training calls it through the model (and DDP's wrapper of it), so
    that the head is part of the graph every process sees."""
    from transformers.modeling_outputs import SequenceClassifierOutput
    head = getattr(self, HEAD_NAME)
    state = pooled if pooled is not None else pooled_state(self, batch)
    weight = next(head.parameters())
    return SequenceClassifierOutput(logits=head(state.to(weight.device, weight.dtype)))


def attach_head(model, n_classes, state=None, multi_label=False):
    """Give the model a head over n_classes (weights `state`, or freshly initialised from the current seed) and
    make its forward return the head's logits. A multi-label head's logits are each their class's sigmoid
    (head_ranked). Returns the model."""
    import torch
    head = torch.nn.Linear(model.config.get_text_config().hidden_size, n_classes, device=model.device)
    if state is not None:
        head.load_state_dict(state)
    head.multi_label = multi_label
    setattr(model, HEAD_NAME, head)
    set_forward(model, _head_forward)
    return model


def attach(model, n_classes, multi_label=False):
    """A freshly initialised head over n_classes (from the current seed)."""
    return attach_head(model, n_classes, multi_label=multi_label)


def prepare(model, freeze_backbone):
    """The trainable parts for the head objective: with freeze_backbone the head alone. Otherwise an output layer
    of its own (not tied to the input embeddings) is frozen, as the head objective never uses it: a trainable
    weight without a gradient stops DDP. The head trains whole in LoRA (peft's modules_to_save)."""
    if freeze_backbone:
        model.requires_grad_(False)
        head_of(model).requires_grad_(True)
        return [HEAD_NAME]
    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight is not embeddings.weight:
        output.requires_grad_(False)
    return [HEAD_NAME]


@contextlib.contextmanager
def without_head(model):
    """The model without its head and head forward for the duration (to save it as the base model it is), the
    head yielded (None where it has none). A LoRA model is merged first: peft's merge turns its copy of the head
    (modules_to_save) back into the Linear."""
    base = base_of(model)
    head = getattr(base, HEAD_NAME, None)
    if head is None:
        yield None
        return
    delattr(base, HEAD_NAME)
    forward = remove_forward(base)
    try:
        yield head
    finally:
        setattr(base, HEAD_NAME, head)
        set_forward(base, forward, bound=True)


def save_head(head, out):
    """The head's weights as HEAD_FILE in the output folder."""
    from safetensors.torch import save as safetensors_bytes
    atomic_write(Path(out) / HEAD_FILE, safetensors_bytes({k: v.detach().float().cpu().contiguous()
                                                           for k, v in head.state_dict().items()}))


def save(model, out, save_model, main=True):
    """save_model(out) of the model without its head, and the head as its own file, written by the main process."""
    with without_head(model) as head:
        save_model(str(out))
    if head is not None and main:
        save_head(head, out)


def load(model_path, model, saved):
    """A loaded model with the head saved beside it (`saved`: its record, which records the head objective, and
    for a multi-label model its per-class thresholds)."""
    file = Path(model_path) / HEAD_FILE
    if not file.is_file():
        raise UserError(f"{model_path}: classes.json records objective=head, but {HEAD_FILE} is missing")
    from safetensors.torch import load_file
    state = load_file(str(file))
    model = attach_head(model, state["weight"].shape[0], state, saved.multi_label)
    head_of(model).classes = list(saved.classes)  # the class of each logit, in its order
    head_of(model).thresholds = saved.thresholds
    return model


def head_example(encoder, image, segments, label):
    """One training example of the head: the prompt's inputs (InputEncoder.example) and its target (head_target)."""
    return {**encoder.example(image, segments), "class": label}


def head_collator(pad_id):
    """Batches of head examples: right-padded prompts (or their pooled states), and their targets as labels (class
    indices, or multi-label rows of label weights)."""
    import torch

    def to_batch(examples):
        labels = torch.tensor([e["class"] for e in examples])
        if "pooled" in examples[0]:
            return {"pooled": torch.stack([e["pooled"] for e in examples]), "labels": labels}
        batch = collate(examples, pad_id, "right")
        batch["labels"] = labels
        return batch
    return to_batch


def head_target(sample, classes):
    """A sample's target: its class's index, or for a multi-label sample each class's label weight (0: absent)."""
    if "labels" in sample:
        return [float(sample["labels"].get(name, 0.0)) for name in classes]
    return classes.index(sample["label"])


def head_dataset(samples, classes, encoder, processor, question, how_augment="none", seed=0, states=None):
    """Head training examples of `samples` as a datasets.Dataset: each image's prompt inputs (augmented as
    the answer objective's chat_dataset does), or with `states` ({image path: pooled state}) its state computed before,
    and its target (head_target)."""
    from datasets import Dataset
    segments = render_segments(processor, [(question, None)])
    items = [(s["image"], head_target(s, classes)) for s in samples]
    rng = random.Random(seed)

    def to_inputs(batch):
        if states is not None:
            return {"pooled": [states[items[i][0]] for i in batch["row"]],
                    "class": [items[i][1] for i in batch["row"]]}
        examples = [head_example(encoder, items[i][0], segments, items[i][1]) for i in batch["row"]]
        if how_augment != "none":
            examples = [{**e, "tensors": augment(e["tensors"], how_augment, rng)} for e in examples]
        return {key: [e[key] for e in examples] for key in examples[0]}
    return Dataset.from_dict({"row": list(range(len(items)))}).with_transform(to_inputs)


def features(model, processor, encoder, paths, question, batch_size, autocast, desc="computing states"):
    """{image path: pooled state (CPU, float32)} of every image, computed once with the frozen backbone: the head
    then trains on these. The prompts are left-padded as prediction pads them, with the same positions."""
    import torch
    from tqdm import tqdm
    paths = list(dict.fromkeys(str(p) for p in paths))
    batches = PromptBatches(processor, question, None, False, encoder)
    states = {}
    model.eval()
    with torch.inference_mode(), autocast(), tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch = batches(chunk)
            if isinstance(batch, str):
                raise UserError(batch)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            pooled = pooled_state(model, {**batch, "position_ids": generation_position_ids(base_of(model), batch)})
            states.update(zip(chunk, pooled.cpu()))
            bar.update(len(chunk))
    return states


def class_weights(train_labels, classes, how):
    """Cross-entropy weights per class: with class_balance=weighted each class weighs its inverse frequency
    (scaled so that the weights average 1 over the training images), else None (all equal)."""
    from collections import Counter
    if how != "weighted":
        return None
    counts = Counter(train_labels)
    return [len(train_labels) / (len(classes) * max(counts[name], 1)) for name in classes]


def head_loss(model, inputs, weights, label_smoothing, multi_label=False):
    """(the head's loss, the model's outputs): the mean cross-entropy of its logits against the class labels
    (`weights`: per class), or for multi-label data the mean binary cross-entropy of each class's logit against its
    label weight, a soft target where below 1 (`weights`: per-class positive weights)."""
    import torch
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    outputs = model(**inputs)
    weight = torch.tensor(weights, device=outputs.logits.device) if weights else None
    if multi_label:
        loss = torch.nn.BCEWithLogitsLoss(pos_weight=weight)(outputs.logits.float(),
                                                             labels.to(outputs.logits.device).float())
    else:
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels.to(outputs.logits.device),
                                                 weight=weight, label_smoothing=label_smoothing)
    return loss, outputs


def training_set(data, *, encoder, processor, end_ids=None, train_questions=None, multi_turn=None,
                 class_balance="none", label_smoothing=0.0, how_augment="none", seed=0, features=None):
    """The head's loss (class weights, label smoothing; multi-label data: binary cross-entropy with per-class
    positive weights), the training examples of data's samples (from `features`, the pooled states, where they were
    computed) and their collator."""
    samples, classes, multi_label = data["samples"], data["classes"], bool(data.get("multi_label"))
    weights = positive_weights(samples, classes, class_balance) if multi_label else \
        class_weights([s["label"] for s in samples], classes, class_balance)
    return dict(loss=partial(head_loss, weights=weights, label_smoothing=label_smoothing, multi_label=multi_label),
                train_dataset=head_dataset(samples, classes, encoder, processor, data["question"], how_augment, seed,
                                           features),
                data_collator=head_collator(processor.tokenizer.pad_token_id or 0))


def test_set(data, *, classes, question, encoder, processor, end_ids=None, features=None):
    """Each held-out image's prompt (or its pooled state) and class."""
    return head_dataset(data["samples"], classes, encoder, processor, question, states=features)


def output_order(model, classes):
    """Where each of `classes` is among the head's logits: a loaded head scores the classes saved with it, in their
    order, which may differ from the order `classes` asks them in (a test JSON, class folders, names typed on the
    page). UserError where `classes` are other classes than the head's."""
    return class_order(getattr(head_of(model), "classes", None), classes, "the model's head",
                       "fixed when it was trained", "give those classes, or fine-tune a head for these")


def head_ranked(model, logits, classes):
    """Score-mode results from the head's logits (a tensor), each named by the class it was trained for
    (output_order); a multi-label head's each its class's sigmoid, the labels above the thresholds it was saved with
    (0.5 each while it trains) predicted."""
    head = head_of(model)
    return results_of(logits.float().tolist(), classes, output_order(model, classes),
                      multi_label=getattr(head, "multi_label", False), thresholds=getattr(head, "thresholds", None))


def results_from_features(model, states, paths, classes):
    """Prediction results (as head_mode gives them) of images whose pooled states were computed."""
    import torch
    head = head_of(model)
    weight = next(head.parameters())
    with torch.inference_mode():
        logits = head(torch.stack([states[str(p)] for p in paths]).to(weight.device, weight.dtype))
    return head_ranked(model, logits, classes)


def scoring_layer(model):
    """The layer whose outputs are the scores (export keeps it float in int8): the head."""
    return head_of(model)


def scoring_module(model, processor, question, classes):
    """The head's logits of a batch of prompts, as a module to (images, classes) scores: what head_mode runs and the
    export exports; nothing fixed."""
    import torch

    class HeadScores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, pixel_values, attention_mask=None, position_ids=None, **images):
            if attention_mask is None:  # one prompt without padding (the exported graph's input)
                attention_mask = torch.ones_like(input_ids)
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            return self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                              position_ids=position_ids, **images).logits.float()
    return HeadScores().eval(), None


def head_mode(model, processor, batch, question, classes):
    """A model with a classification head: the softmax of its logits, one forward pass per batch."""
    import torch
    module, _ = scoring_module(model, processor, question, classes)
    with torch.inference_mode():
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = module(**batch, position_ids=generation_position_ids(model, batch))
    return head_ranked(model, logits, classes)


MODES = {"head": head_mode}
