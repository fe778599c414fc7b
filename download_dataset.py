"""Step 1: put an image-folder data set (one sub-folder per class) in DATASET_DIR.

SOURCE is "kaggle" (download KAGGLE_DATASET with kagglehub), "elpv" (the elpv-dataset package's
2,624 labelled solar-cell images, offline) or a local folder, which is copied.
"""
import shutil
import tempfile
from pathlib import Path

from vlmcls.cli import OneOf, UserError, configure, existing_path, run_main
from vlmcls.images import class_folders, list_files

SOURCE = "kaggle"  # "kaggle", "elpv", or a local folder with one sub-folder per class
KAGGLE_DATASET = "pythonafroz/solar-panel-images"  # Kaggle data set id (owner/name)
DATASET_DIR = "./Faulty_solar_panel"  # where the class folders are placed
ELPV_TWO_CLASSES = False  # elpv only: merge into functional (defect probability < 0.5) and defective
OVERWRITE = False  # replace DATASET_DIR if it already holds files

# elpv's defect probabilities and the class folder each goes to.
ELPV_CLASSES = {0.0: "functional", 1 / 3: "possibly-defective", 2 / 3: "likely-defective", 1.0: "defective"}


def find_class_root(folder):
    """The folder whose sub-folders are the classes: Kaggle archives often wrap them in one or two folders."""
    folder = Path(folder)
    while True:
        subs = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if len(subs) == 1 and subs[0].is_dir() and any(p.is_dir() for p in subs[0].iterdir()):
            folder = subs[0]
        else:
            return folder


def from_kaggle(target):
    try:
        import kagglehub
        cache = kagglehub.dataset_download(KAGGLE_DATASET)
    except Exception as e:
        raise UserError(f"could not download {KAGGLE_DATASET!r} from Kaggle ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no details'}). Check the network and your "
                        "Kaggle credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY), or download "
                        "the data set yourself and run with --source=/path/to/folder") from None
    shutil.copytree(find_class_root(cache), target)


def from_elpv(target):
    try:
        import elpv_dataset
    except ImportError:
        raise UserError("source 'elpv' needs the elpv-dataset package: pip install elpv-dataset") from None
    data = Path(elpv_dataset.__file__).parent / "data"
    with open(data / "labels.csv", newline="") as f:
        rows = [line.split() for line in f.read().splitlines() if line.strip()]
    for image, probability, _cell_type in rows:
        p = float(probability)
        name = ("defective" if p >= 0.5 else "functional") if ELPV_TWO_CLASSES else \
            ELPV_CLASSES[min(ELPV_CLASSES, key=lambda k: abs(k - p))]
        (target / name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(data / image, target / name / Path(image).name)


def from_folder(target):
    source = Path(SOURCE)
    if not source.is_dir():
        raise UserError(f"source {SOURCE!r} is not 'kaggle', 'elpv' or an existing folder")
    class_folders(source)
    shutil.copytree(source, target)


def main():
    target = Path(DATASET_DIR)
    if target.exists() and any(target.iterdir()) and not OVERWRITE:
        raise UserError(f"{target} already holds files; remove it or run with --overwrite=true")
    # Fill a temporary folder beside the target and rename it at the end, so a failed or interrupted
    # download never leaves a half-filled DATASET_DIR.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / "data"
    try:
        {"kaggle": from_kaggle, "elpv": from_elpv}.get(SOURCE, from_folder)(staging)
        folders = class_folders(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    print(f"data set in {target}: {len(folders)} classes")
    for folder in folders:
        print(f"  {folder.name:<24}{len(list_files(target / folder.name)):>6} files")


if __name__ == "__main__":
    configure(globals(), choices={"SOURCE": OneOf("kaggle", "elpv", other=("an existing folder", existing_path))})
    run_main(main)
