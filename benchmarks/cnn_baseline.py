"""The accuracy benchmark's non-VLM row: a small CNN in plain torch, trained from scratch for a fixed time on a
training JSON of generate_train_json.py, then scored on a held-out JSON ("is a VLM worth it here?").

It reads the images as the project's scripts do (vlmcls.images), pads each to a square and resizes it to
IMAGE_SIZE, and writes predictions.csv and report.json in the columns and keys of vlm_benchmark_test_dataset.py's,
so that accuracy.py pairs its predictions with the VLM rows' on the same images.

    HF_HUB_OFFLINE=1 python benchmarks/cnn_baseline.py --train_json=train.json --test_json=test.json \\
        --report_dir=cnn-report --max_train_seconds=15
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmcls.cli import UserError, configure, run_main  # noqa: E402

TRAIN_JSON = "train.json"  # training images (generate_train_json.py's format)
TEST_JSON = "test.json"  # images to score
REPORT_DIR = "cnn-report"  # predictions.csv and report.json
MAX_TRAIN_SECONDS = 15.0  # training time; the step that ends past it is the last
IMAGE_SIZE = 128  # pixels of the square each image is padded and resized to
WIDTHS = [16, 32, 64, 128]  # channels of the conv blocks (conv 3x3, batch norm, ReLU, 2x2 max pool)
BATCH = 16  # images per step
LEARNING_RATE = 1e-3  # AdamW's peak learning rate
WARMUP_STEPS = 25  # linear warm-up, then constant (the VLM rows' schedule under a time limit)
WEIGHT_DECAY = 0.01  # AdamW weight decay
SEED = 0  # initial weights and the order of the images


def pixels(data):
    """The images of a data set as one float tensor (N, 3, IMAGE_SIZE, IMAGE_SIZE) in [0, 1]."""
    import numpy as np
    import torch
    from PIL import ImageOps

    from vlmcls.images import load_image
    arrays = [np.asarray(ImageOps.pad(load_image(s["image"], data["max_image_pixels"]), (IMAGE_SIZE, IMAGE_SIZE),
                                      color=(255, 255, 255))) for s in data["samples"]]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def network(classes):
    from torch import nn
    layers, width = [], 3
    for out in WIDTHS:
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def train(model, images, labels):
    """Steps of BATCH shuffled images until MAX_TRAIN_SECONDS have passed; returns (steps, seconds)."""
    import torch
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    model.train()
    order, start, step = torch.randperm(len(images)), time.monotonic(), 0
    while time.monotonic() - start < MAX_TRAIN_SECONDS:
        if len(order) < BATCH:
            order = torch.cat([order, torch.randperm(len(images))])
        batch, order = order[:BATCH], order[BATCH:]
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
    return step, time.monotonic() - start


def main():
    import torch

    from vlmcls.files import write_csv, write_json
    from vlmcls.images import read_dataset_json
    from vlmcls.report import metrics
    train_data, test_data = read_dataset_json(TRAIN_JSON), read_dataset_json(TEST_JSON)
    classes = train_data["classes"]
    if test_data["classes"] != classes:
        raise UserError(f"{TEST_JSON}: classes {test_data['classes']} differ from {TRAIN_JSON}'s {classes}")
    torch.manual_seed(SEED)
    images, test_images = pixels(train_data), pixels(test_data)
    labels = torch.tensor([classes.index(s["label"]) for s in train_data["samples"]])
    model = network(len(classes))
    steps, seconds = train(model, images, labels)
    print(f"{steps} steps in {seconds:.1f} s")
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(batch).argmax(-1) for batch in test_images.split(64)])
    true = [s["label"] for s in test_data["samples"]]
    pred = [classes[i] for i in predicted.tolist()]
    result = metrics(true, pred, classes)
    write_csv(Path(REPORT_DIR) / "predictions.csv", ["path", "true_class", "predicted_class"],
              [(s["image"], t, p) for s, t, p in zip(test_data["samples"], true, pred)])
    write_json(Path(REPORT_DIR) / "report.json", {"classes": classes, "accuracy": result["accuracy"],
                                                  "macro_f1": result["macro_f1"], "steps": steps,
                                                  "train_seconds": seconds})
    print(f"accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
