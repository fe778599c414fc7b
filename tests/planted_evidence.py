"""Planted evidence: images whose class is decided only by a small marker at a random place (its box known), and a
tiny SmolVLM-architecture model with a classification head trained on them in this process, for testing and
measuring explanations (tests/test_explain.py, benchmarks/explain.py)."""
import numpy as np
from PIL import Image

import tiny_models

CLASSES = ["red", "blue", "none"]  # the marker's colour is the class; "none": no marker
MARKERS = {"red": (230, 30, 30), "blue": (30, 30, 230)}
QUESTION = "Which colour is the marker?"


def planted_images(count, seed, size=64, marker=12):
    """`count` images of grey noise, size x size, classes alternating: each with one marker square of `marker`
    pixels at a random place, in its class's colour, or none: [(image, class, box (left, top, right, bottom), or
    None)]. With a class of no marker, neither colour is told by the other's absence: the evidence for each is
    its marker."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        name = CLASSES[i % len(CLASSES)]
        pixels = rng.integers(60, 197, (size, size, 1)).repeat(3, axis=2).astype(np.uint8)
        left, top = (int(v) for v in rng.integers(0, size - marker + 1, 2))
        if name in MARKERS:
            pixels[top:top + marker, left:left + marker] = MARKERS[name]
        out.append((Image.fromarray(pixels), name, (left, top, left + marker, top + marker) if name in MARKERS
                    else None))
    return out


def trained_head_model(folder, images, *, steps, seed=0, batch_size=16, learning_rate=3e-3, patch_size=8, tile=128):
    """(processor, model): a tiny SmolVLM-architecture model (`patch_size`-pixel patches, one `tile`-pixel tile) with a
    head over CLASSES, the whole model trained from scratch for `steps` steps on `images` (planted_images')."""
    import torch
    from vlmcls.inputs import PromptBatches, collate
    from vlmcls.models import load_model, load_processor, set_resolution
    from vlmcls.objectives import named
    torch.manual_seed(seed)
    tiny_models.build_tiny_smolvlm(folder, patch_size=patch_size, tile=tile)
    processor = load_processor(str(folder))
    set_resolution(processor, tile, False)
    head = named("head")
    model = head.attach(load_model(str(folder), torch.float32), len(CLASSES))
    model.classifier_head.classes = list(CLASSES)
    batches = PromptBatches(processor, QUESTION, None, False)
    examples = [batches.encoder.example(image, batches.segments) for image, _, _ in images]  # each encoded once
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        chosen = rng.choice(len(images), batch_size, replace=False)
        batch = collate([examples[i] for i in chosen], batches.pad, "left")
        del batch["labels"]
        labels = torch.tensor([CLASSES.index(images[i][1]) for i in chosen])
        logits = model(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return processor, model.eval()
