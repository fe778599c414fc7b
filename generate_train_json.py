"""Step 2: turn an image-folder data set into training, validation and test JSON files of questions and answers.

Every image is decoded once; files that cannot be used are listed in skipped.csv with the reason.
The split is by image (identical pictures, and look-alikes by the rule fine_tune.py checks, stay together),
stratified per class and seeded, so no test image, nor a copy of it resized or re-encoded, is ever seen in
training, and fine_tune.py never refuses the splits written here. Validation images (VAL_RATIO > 0; none by default), which
fine_tune.py measures while it trains, are taken from the training side by the same rules; the test split does
not depend on them.
"""
import os
from pathlib import Path

from vlmcls.cli import UserError, configure, run_main
from vlmcls.files import write_json
from vlmcls.images import class_folders, group_duplicates, list_files, print_skipped, scan_images, split_groups
from vlmcls.prompt import classification_question

DATASET_DIR = "./Faulty_solar_panel"  # image folder: one sub-folder per class
TRAIN_RATIO = 0.8  # share of each class's images used for training and validation; the rest is the test set
VAL_RATIO = 0.0  # share of each class's images taken from the training side for validation (0: none; e.g. 0.1)
SEED = 42  # seed of the split: same seed, same split
TRAIN_JSON = "solar_panel_train_dataset.json"  # output: training questions and answers
VAL_JSON = "solar_panel_val_dataset.json"  # output: validation images ("" = not written)
TEST_JSON = "solar_panel_test_dataset.json"  # output: held-out test images
MAX_IMAGE_PIXELS = 40_000_000  # larger images are skipped (decompression bombs)
MIN_TRAIN_IMAGES = 10  # warn about classes with fewer training images than this
QUESTION_TEMPLATES = [  # descriptive questions, each answered with the class's detail sentence
    "What is the condition of the solar panel in this image?",
    "Describe the state of this solar panel.",
    "Does this solar panel need attention? Explain what you see.",
]
CLASS_DETAILS = {  # detail sentence per class; other classes get DEFAULT_DETAIL
    "Bird-drop": "The solar panel is soiled with bird droppings, which block light and can cause hot spots.",
    "Clean": "The solar panel is clean, with no visible dirt, damage or obstruction.",
    "Dusty": "The solar panel is covered with a layer of dust that reduces the light reaching the cells.",
    "Electrical-damage": "The solar panel shows electrical damage such as burn marks or failed cells.",
    "Physical-Damage": "The solar panel is physically damaged, with cracks or broken glass.",
    "Snow-Covered": "The solar panel is covered with snow, which blocks the light.",
}
DEFAULT_DETAIL = "The image shows: {label}."  # detail sentence for classes not in CLASS_DETAILS


def check_settings():
    if not 0 < TRAIN_RATIO < 1:
        raise UserError(f"train_ratio must be between 0 and 1, got {TRAIN_RATIO}")
    if not 0 <= VAL_RATIO < TRAIN_RATIO:
        raise UserError(f"val_ratio must be at least 0 and below train_ratio ({TRAIN_RATIO}), got {VAL_RATIO}")
    outputs = [Path(p).resolve() for p in (TRAIN_JSON, VAL_JSON, TEST_JSON) if p]
    if len(set(outputs)) < len(outputs):
        raise UserError(f"train_json, val_json and test_json must be different files: {TRAIN_JSON}, {VAL_JSON}, "
                        f"{TEST_JSON}")


def qa_pairs(label, question):
    detail = CLASS_DETAILS.get(label, DEFAULT_DETAIL.format(label=label))
    return [{"question": question, "answer": label}] + [{"question": q, "answer": detail} for q in QUESTION_TEMPLATES]


def write_split(json_path, paths, label_of, classes, question, counts):
    folder = Path(json_path).resolve().parent
    samples = [{"image": os.path.relpath(p.resolve(), folder), "label": label_of[p],
                "qa": qa_pairs(label_of[p], question)} for p in paths]
    write_json(json_path, {"classes": classes, "question": question, "max_image_pixels": MAX_IMAGE_PIXELS,
                           "counts": counts, "samples": samples})


def split_validation(groups, train, label_of, classes):
    """The validation images, held out of the training side by the rules of the test split: VAL_RATIO of each
    class's images in all, so VAL_RATIO / TRAIN_RATIO of its training images. Returns (train, val)."""
    if VAL_RATIO == 0:
        return train, []
    training = set(train)
    return split_groups([g for g in groups if g[0] in training], label_of, classes, VAL_RATIO / TRAIN_RATIO, SEED)


def main():
    check_settings()
    folders = class_folders(DATASET_DIR)
    classes = [f.name for f in folders]
    label_of = {p: f.name for f in folders for p in list_files(f)}
    good, skipped = scan_images(sorted(label_of), MAX_IMAGE_PIXELS)
    skipped_csv = Path(TRAIN_JSON).resolve().parent / "skipped.csv"
    print_skipped(skipped, skipped_csv)
    print(f"{len(good)} usable images of {len(label_of)} files")
    usable = {label_of[p] for p, _ in good}
    if missing := [c for c in classes if c not in usable]:
        raise UserError(f"{DATASET_DIR}: no usable image in class folder(s) {', '.join(missing)} "
                        f"(see {skipped_csv})")

    groups, conflicts = group_duplicates(good, label_of, MAX_IMAGE_PIXELS)
    for group in conflicts:
        print("label conflict, identical or look-alike images in different classes (kept together in one split): " +
              ", ".join(f"{p} [{label_of[p]}]" for p in group))
    together = [g for g in groups if len(g) > 1]
    if together:
        print(f"{sum(map(len, together))} images in {len(together)} groups of identical or look-alike images, "
              "each kept in one split")
    train, test = split_groups(groups, label_of, classes, 1 - TRAIN_RATIO, SEED)
    train, val = split_validation(groups, train, label_of, classes)
    parts = {"train": train, "val": val, "test": test}
    counts = {part: {c: sum(label_of[p] == c for p in paths) for c in classes} for part, paths in parts.items()}
    question = classification_question(classes)
    for part, json_path in (("train", TRAIN_JSON), ("val", VAL_JSON), ("test", TEST_JSON)):
        if json_path:
            write_split(json_path, parts[part], label_of, classes, question, counts)

    print(f"\n{'class':<24}{'train':>7}{'val':>7}{'test':>7}")
    for c in classes:
        print(f"{c:<24}" + "".join(f"{counts[part][c]:>7}" for part in parts))
        if counts["train"][c] < MIN_TRAIN_IMAGES:
            print(f"  warning: class {c!r} has only {counts['train'][c]} training image(s); "
                  f"too few to learn reliably")
    print(f"{'total':<24}" + "".join(f"{len(paths):>7}" for paths in parts.values()))
    written = f", {VAL_JSON} ({len(val)} images)" if VAL_JSON else ""
    print(f"wrote {TRAIN_JSON} ({len(train)} images, {len(train) * (1 + len(QUESTION_TEMPLATES))} Q&A pairs)"
          f"{written} and {TEST_JSON} ({len(test)} images)")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
