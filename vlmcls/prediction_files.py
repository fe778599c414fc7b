"""Prediction files at scale: predictions.csv and skipped.csv written as batches finish, a killed run resumed
from progress.json, the images shared among torchrun's processes."""
import csv
import hashlib
import io
import json
import math
from pathlib import Path

from .calibration import best_guesses
from .cli import OneOf, UserError
from .files import write_json
from .prediction import in_batches
from .report import best_guess, prediction_rows

RESUMES = OneOf("auto", "overwrite")  # the values of the evaluation scripts' RESUME
SKIPPED_HEADER = ["path", "reason"]


def model_files(model_path):
    """What identifies a model folder's weights and settings cheaply: each top-level file's name, size and
    modification time (a retrained or edited model differs); a Hub id stands for itself."""
    folder = Path(model_path)
    if not folder.is_dir():
        return str(model_path)
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def images_digest(paths, labels):
    """One hash of the image list (and labels), in order: a resumed run must predict the same list."""
    digest = hashlib.sha256()
    for i, path in enumerate(paths):
        digest.update(f"{path}\t{labels[i] if labels else ''}\n".encode())
    return digest.hexdigest()[:16]


def _csv_bytes(rows):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _short(value):
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


class PredictionFiles:
    """predictions.csv and skipped.csv of a report folder, appended and flushed batch by batch, and progress.json:
    the settings the rows were made with, how many images of the list (a prefix) they cover, and each file's length
    when it was last complete. A run killed at any moment can be continued: each file is cut back to its recorded
    length, which drops a half-written line, and prediction goes on from the next image."""

    def __init__(self, folder, header, settings):
        self.folder = Path(folder)
        self.paths = {"predictions": self.folder / "predictions.csv", "skipped": self.folder / "skipped.csv"}
        self.headers = {"predictions": header, "skipped": SKIPPED_HEADER}
        self.progress = self.folder / "progress.json"
        self.settings = json.loads(json.dumps(settings, default=str))  # as it reads back from progress.json
        self.files, self.done = {}, 0

    def open(self, resume):
        """Continue what the folder holds (resume "auto"), or start afresh ("overwrite", or nothing to continue);
        returns how many images are done. Rows made with other settings are never continued."""
        recorded = json.loads(self.progress.read_text(encoding="utf-8")) \
            if resume == "auto" and self.progress.is_file() else None
        if recorded and not recorded["done"]:
            recorded = None  # a run that stopped before its first batch (a model that would not load) left nothing
        if recorded and recorded["settings"] != self.settings:
            old = recorded["settings"]
            changed = [f"{key}: {_short(old.get(key))} -> {_short(self.settings.get(key))}"
                       for key in sorted(set(old) | set(self.settings)) if old.get(key) != self.settings.get(key)]
            raise UserError(f"{self.folder} holds the predictions of an earlier run with other settings "
                            f"({'; '.join(changed)}), which are not mixed with new ones: use another --report_dir, "
                            "or --resume=overwrite to predict afresh")
        self.folder.mkdir(parents=True, exist_ok=True)
        if recorded:
            for key, path in self.paths.items():
                if not path.is_file() or path.stat().st_size < recorded["lengths"][key]:
                    raise UserError(f"{path}: shorter than {self.progress} records (changed since?): "
                                    "--resume=overwrite predicts afresh")
                self.files[key] = open(path, "r+b")
                self.files[key].truncate(recorded["lengths"][key])
                self.files[key].seek(0, io.SEEK_END)
            self.done = recorded["done"]
        else:
            self.progress.unlink(missing_ok=True)  # a kill from here on leaves nothing that looks continuable
            for key, path in self.paths.items():
                self.files[key] = open(path, "wb")
                self.files[key].write(_csv_bytes([self.headers[key]]))
            self.done = 0
        self._commit()
        return self.done

    def add(self, rows, skipped, images):
        """Append the rows of the next `images` images of the list, and the files among them that were skipped."""
        for key, new in (("predictions", rows), ("skipped", skipped)):
            if new:
                self.files[key].write(_csv_bytes(new))
        self.done += images
        self._commit()

    def _commit(self):
        for file in self.files.values():
            file.flush()
        write_json(self.progress, {"settings": self.settings, "done": self.done,
                                   "lengths": {key: file.tell() for key, file in self.files.items()}})

    def close(self):
        for file in self.files.values():
            file.close()

    def rows(self, key="predictions"):
        with open(self.paths[key], newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))


def open_files(files, resume, total, rank=0, world=1):
    """PredictionFiles.open in the main process, its answer (how many images are done, or why it refuses) shared
    with the others (`world` processes). Returns how many images are done."""
    start = [None]
    if rank == 0:
        try:
            start[0] = files.open(resume)
        except UserError as e:
            start[0] = str(e)
    if world > 1:  # accelerate (and torch) only where there are other processes: an exported model runs without
        from accelerate.utils import broadcast_object_list
        start = broadcast_object_list(start)
    start = start[0]
    if isinstance(start, str):
        raise UserError(start)
    if rank == 0 and start:
        print(f"all {total} images were predicted already, in {files.paths['predictions']}" if start == total else
              f"continuing an interrupted run: {start} of {total} images were predicted already")
    return start


def predict_into(files, predict, images, true, *, start, batch_size, rank=0, world=1, echo=False,
                 desc="evaluating"):
    """Predict the images from `start` on (those `files` does not hold yet), in batches of `batch_size`, and append
    the rows to `files` as they come. Batch k of them goes to process k mod `world`; at each step the main process
    gathers one batch from every process, which follow each other in the list, and writes them in order, so the files
    equal one process's. `predict` is predict_batches with the model and settings given. Skipped files are printed
    as they are met, and with `echo` each prediction too; under torchrun each process says how many images it took."""
    from tqdm import tqdm
    if world > 1:
        from accelerate.utils import gather_object
    batches = in_batches(range(start, len(images)), batch_size)
    mine = batches[rank::world]
    results = predict([[images[i] for i in batch] for batch in mine])
    with tqdm(total=len(images), initial=start, desc=desc, unit="img", disable=rank != 0) as bar:
        for step in range(math.ceil(len(batches) / world)):
            entry = ([], [], [], 0)
            if step < len(mine):
                kept, batch_results, problems = next(results)
                batch = mine[step]
                paths = [images[batch[i]] for i in kept]
                skipped = [(str(images[batch[i]]), message.removeprefix(f"{images[batch[i]]}: "))
                           for i, message in problems]
                lines = [f"{path}: {r['pred']}" + (f" ({r['probs'][best_guess(r)]:.3f})" if r["probs"] else "")
                         + (f" (best guesses: {best_guesses(r)})" if r.get("uncertain") else "")
                         for path, r in zip(paths, batch_results)] if echo else []
                entry = (prediction_rows(paths, batch_results, [true[batch[i]] for i in kept] if true else None),
                         skipped, lines, len(batch))
            gathered = gather_object([entry]) if world > 1 else [entry]
            if rank != 0:
                continue
            for rows, skipped, lines, count in gathered:
                for path, reason in skipped:
                    tqdm.write(f"skipped {path}: {reason}")
                for line in lines:
                    tqdm.write(line)
                files.add(rows, skipped, count)
                bar.update(count)
    if world > 1:
        print(f"process {rank} of {world}: {sum(map(len, mine))} images", flush=True)
    if rank == 0:
        files.close()
