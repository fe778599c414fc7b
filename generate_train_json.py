"""Step 2: turn an image-folder data set, or a labels CSV, into training, validation and test JSON files.

Every image is decoded once; files that cannot be used are listed in skipped.csv with the reason.
The split is by image (identical pictures, and look-alikes by the rule fine_tune.py checks, stay together),
stratified per class and seeded, so no test image, nor a copy of it resized or re-encoded, is ever seen in
training, and fine_tune.py never refuses the splits written here. Validation images (VAL_RATIO > 0; none by
default), which fine_tune.py measures while it trains, are taken from the training side by the same rules; the test
split does not depend on them. With LABELS_CSV the images and their labels come from a CSV (several labels per
image, soft weights: docs/training.md): one unweighted label per image writes what the class folders would, with
their questions and answers; any other CSV is a multi-label data set (each image's labels and weights, the
multi-label question), split stratified per label, which fine_tune.py trains with either objective.
"""
import os
from pathlib import Path

from vlmcls.cli import UserError, configure, run_main
from vlmcls.files import write_json
from vlmcls.images import class_folders, group_duplicates, list_files, print_skipped, scan_images, split_groups
from vlmcls.labels import label_text, read_labels_csv, single_labels, split_multilabel
from vlmcls.prompt import classification_question, multi_label_question

DATASET_DIR = "./Faulty_solar_panel"  # image folder: one sub-folder per class (not read with labels_csv)
LABELS_CSV = ""  # a CSV of columns image,labels ("Dusty:0.7;Clean:0.3") instead of class folders ("" = folders)
CLASSES = []  # with labels_csv: the classes in order, other labels refused ([] = the labels the CSV uses, sorted)
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
    if CLASSES and not LABELS_CSV:
        raise UserError(f"classes is for --labels_csv (with class folders, the folders are the classes): {CLASSES}")
    if len(set(CLASSES)) < len(CLASSES):
        raise UserError(f"classes names a class twice: {CLASSES}")


def qa_pairs(label, question):
    detail = CLASS_DETAILS.get(label, DEFAULT_DETAIL.format(label=label))
    return [{"question": question, "answer": label}] + [{"question": q, "answer": detail} for q in QUESTION_TEMPLATES]


def labelled_images():
    """(classes, {path: {label: weight}}, {path: where it is listed, for messages}) of the class folders or the
    labels CSV."""
    if LABELS_CSV:
        classes, weights_of, line_of = read_labels_csv(LABELS_CSV, CLASSES)
        return classes, weights_of, {p: f" ({LABELS_CSV} line {line})" for p, line in line_of.items()}
    folders = class_folders(DATASET_DIR)
    weights_of = {p: {f.name: 1.0} for f in folders for p in list_files(f)}
    return [f.name for f in folders], weights_of, dict.fromkeys(weights_of, "")


def write_split(json_path, paths, weights_of, label_of, classes, counts):
    """One JSON file: with one label per image (label_of), the question and each image's Q&A pairs; multi-label,
    the multi-label question and each image's labels and weights."""
    folder = Path(json_path).resolve().parent
    where = {p: os.path.relpath(p.resolve(), folder) for p in paths}
    if label_of is not None:
        question = classification_question(classes)
        write_json(json_path, {"classes": classes, "question": question, "max_image_pixels": MAX_IMAGE_PIXELS,
                               "counts": counts, "samples": [{"image": where[p], "label": label_of[p],
                                                              "qa": qa_pairs(label_of[p], question)} for p in paths]})
        return
    soft = any(w < 1 for weights in weights_of.values() for w in weights.values())
    write_json(json_path, {"classes": classes, "question": multi_label_question(classes),
                           "max_image_pixels": MAX_IMAGE_PIXELS, "multi_label": True,
                           "soft_labels": soft, "counts": counts,
                           "samples": [{"image": where[p], "labels": weights_of[p]} for p in paths]})


def split_validation(groups, train, split):
    """The validation images, held out of the training side by the rules of the test split (`split`): VAL_RATIO of
    each class's images in all, so VAL_RATIO / TRAIN_RATIO of its training images. Returns (train, val)."""
    if VAL_RATIO == 0:
        return train, []
    training = set(train)
    return split([g for g in groups if g[0] in training], VAL_RATIO / TRAIN_RATIO)


def main():
    check_settings()
    classes, weights_of, listed = labelled_images()
    good, skipped = scan_images(sorted(weights_of), MAX_IMAGE_PIXELS)
    skipped_csv = Path(TRAIN_JSON).resolve().parent / "skipped.csv"
    print_skipped([(p, reason + listed[p]) for p, reason in skipped], skipped_csv)
    print(f"{len(good)} usable images of {len(weights_of)} files")
    weights_of = {p: weights_of[p] for p, _ in good}
    label_of = single_labels(weights_of)  # None: a multi-label data set
    if missing := [c for c in classes if not any(c in w for w in weights_of.values())]:
        what = f"{LABELS_CSV}: no usable image with label(s)" if LABELS_CSV else \
            f"{DATASET_DIR}: no usable image in class folder(s)"
        raise UserError(f"{what} {', '.join(missing)} (see {skipped_csv})")

    text_of = label_of or {p: label_text(w) for p, w in weights_of.items()}
    groups, conflicts = group_duplicates(good, text_of, MAX_IMAGE_PIXELS)
    for group in conflicts:
        print("label conflict, identical or look-alike images in different classes (kept together in one split): " +
              ", ".join(f"{p} [{text_of[p]}]" for p in group))
    together = [g for g in groups if len(g) > 1]
    if together:
        print(f"{sum(map(len, together))} images in {len(together)} groups of identical or look-alike images, "
              "each kept in one split")

    def split(some, held_out_ratio):
        if label_of is None:
            return split_multilabel(some, weights_of, classes, held_out_ratio, SEED)
        return split_groups(some, label_of, classes, held_out_ratio, SEED)

    train, test = split(groups, 1 - TRAIN_RATIO)
    train, val = split_validation(groups, train, split)
    parts = {"train": train, "val": val, "test": test}
    counts = {part: {c: sum(c in weights_of[p] for p in paths) for c in classes} for part, paths in parts.items()}
    for part, json_path in (("train", TRAIN_JSON), ("val", VAL_JSON), ("test", TEST_JSON)):
        if json_path:
            write_split(json_path, parts[part], weights_of, label_of, classes, counts)

    print(f"\n{'class':<24}{'train':>7}{'val':>7}{'test':>7}")
    for c in classes:
        print(f"{c:<24}" + "".join(f"{counts[part][c]:>7}" for part in parts))
        if counts["train"][c] < MIN_TRAIN_IMAGES:
            print(f"  warning: class {c!r} has only {counts['train'][c]} training image(s); "
                  f"too few to learn reliably")
    print(f"{'total':<24}" + "".join(f"{len(paths):>7}" for paths in parts.values()))
    written = f", {VAL_JSON} ({len(val)} images)" if VAL_JSON else ""
    what = f"{len(train) * (1 + len(QUESTION_TEMPLATES))} Q&A pairs" if label_of else "multi-label, images counted " \
        "under each label they carry"
    print(f"wrote {TRAIN_JSON} ({len(train)} images, {what}){written} and {TEST_JSON} ({len(test)} images)")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
