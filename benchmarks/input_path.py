"""One measurement of fine_tune.py's training input path alone, run by speed.py in a fresh process.

    python benchmarks/input_path.py TREE TRAIN_JSON MODEL EPOCHS RESULT

TREE is a checkout of this project: the one under test, or an older commit for the "before" column. The model's
forward pass is left out: what is timed is turning the training JSON into batches, as fine_tune.py's data loader
does for EPOCHS epochs, with that checkout's defaults. CPU seconds count the process and its worker processes,
each on one torch thread.
"""
import json
import resource
import sys
import time

BATCH_SIZE = 4  # fine_tune.py's PER_DEVICE_TRAIN_BATCH_SIZE


def cpu_seconds():
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def loader_before(data, processor, end_ids):
    """Each Q&A pair a row, decoded and processed every time it is drawn, in the main process (NUM_WORKERS 0)."""
    from torch.utils.data import DataLoader
    from vlmcls.training import AnswerOnlyCollator, make_dataset
    dataset = make_dataset(data, data["max_image_pixels"])
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True,
                      collate_fn=AnswerOnlyCollator(processor, end_ids)), len(dataset)


def loader_now(data, processor, end_ids):
    """Each image encoded once for all its Q&A pairs, by NUM_WORKERS processes, then reused every epoch."""
    from torch.utils.data import DataLoader
    from vlmcls.inputs import InputEncoder, auto_workers
    from vlmcls.training import answer_only_collator, chat_dataset, rows
    workers = auto_workers(-1)
    encoder = InputEncoder(processor, data["max_image_pixels"])
    train_rows = rows(data)
    encoder.prepare([image for image, _ in train_rows], workers)
    dataset = chat_dataset(train_rows, encoder, processor, end_ids)
    # As fine_tune.py: batches of images encoded in memory need no loader workers.
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, collate_fn=answer_only_collator(processor)), \
        sum(len(pairs) for _, pairs in train_rows)


def main():
    tree, train_json, model, epochs, result_file = sys.argv[1:6]
    sys.path.insert(0, tree)
    import torch
    torch.set_num_threads(1)  # per core; also, on a shared machine multi-threaded copies stall
    from vlmcls.images import read_dataset_json
    from vlmcls.models import end_token_ids, load_model, load_processor, set_resolution
    data = read_dataset_json(train_json)
    processor = load_processor(model)
    set_resolution(processor, 512, False)  # fine_tune.py's defaults
    end_ids = end_token_ids(processor, load_model(model, None))
    import datasets  # noqa: F401  (imported before timing: loading a library is no part of the input path)
    try:
        import vlmcls.inputs  # noqa: F401
        make = loader_now
    except ImportError:
        make = loader_before
    wall, cpu = time.perf_counter(), cpu_seconds()
    loader, pairs_per_epoch = make(data, processor, end_ids)
    for _ in range(int(epochs)):
        for _ in loader:
            pass
    result = {"pairs": pairs_per_epoch * int(epochs), "wall_s": time.perf_counter() - wall,
              "cpu_s": cpu_seconds() - cpu}
    with open(result_file, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
