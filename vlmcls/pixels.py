"""Pixel tensors of one image as Idefics3's (SmolVLM's) PIL image processor makes them, in a fraction of its time.

The processor turns the image into a numpy array and back to PIL around each of its two resizes, and rescales
in float64 and normalises through transposed copies. Here the same PIL resizes run on the PIL image itself, crops
are the same array slices, and rescaling and normalising are three float32 operations per channel, used only
where they give the processor's own value for each of the 256 values a uint8 channel can hold: elementwise
arithmetic gives the same result for the same value wherever it is, so every float is the processor's.
"""
import math

import numpy as np

from .compat import idefics3_resized_size

FAMILY = "Idefics3ImageProcessorPil"  # the one image processor class handled here; others go through the processor


def handles(image_processor, image):
    """Whether pixel_values can compute this processor's tensors for `image`: Idefics3's PIL processor at the
    settings SmolVLM ships with (resize by longest edge, rescale, normalise, pad), an RGB image."""
    ip = image_processor
    return (type(ip).__name__ == FAMILY and image.mode == "RGB" and "transparency" not in image.info
            and ip.do_resize and ip.do_rescale and ip.do_normalize and ip.do_pad and isinstance(ip.resample, int)
            and set(dict(ip.size)) == {"longest_edge"} and set(dict(ip.max_image_size)) == {"longest_edge"})


def arithmetic(image_processor):
    """(divisor, mean, std), each (3, 1, 1) float32, such that (value / divisor - mean) / std in float32 is the
    processor's rescaled and normalised value of every uint8 value in each channel; None where it is not."""
    ip = image_processor
    values = np.ascontiguousarray(np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)))
    wanted = ip.normalize(ip.rescale(values, ip.rescale_factor), ip.image_mean, ip.image_std)
    divisor, mean, std = (np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float32).reshape(-1, 1, 1),
                                                               (3, 1, 1)))
                          for v in (1 / ip.rescale_factor, ip.image_mean, ip.image_std))
    got = (values.astype(np.float32) / divisor - mean) / std
    return (divisor, mean, std) if wanted.dtype == np.float32 and np.array_equal(got, wanted) else None


def pixel_values(image_processor, image, arithmetic, size=None):
    """(pixel_values, pixel_attention_mask, rows, cols) of an RGB PIL image, as the processor returns them for it
    alone (size: its `size` override; arithmetic: arithmetic() of the processor), with rows = cols = 0 for an
    image that is one tile."""
    import torch
    out, rows, cols = pixel_array(image_processor, image, arithmetic, size)
    # Every frame is a full tile, so the processor pads none of them: its mask is all ones.
    mask = torch.ones((), dtype=torch.int64).expand(*out.shape[:2], *out.shape[-2:])
    return torch.from_numpy(out), mask, rows, cols


def pixel_array(image_processor, image, arithmetic, size=None):
    """(pixel values as a float32 numpy array of shape (1, frames, 3, tile, tile), rows, cols): pixel_values
    without torch (the ONNX runtime's)."""
    ip = image_processor
    tile = dict(ip.max_image_size)["longest_edge"]
    edge = dict(size or ip.size)["longest_edge"]  # a processor loaded from a file holds its sizes as SizeDicts
    height, width = idefics3_resized_size(image.height, image.width, edge)
    image = image.resize((width, height), resample=ip.resample)
    rows = cols = 0
    if not ip.do_image_splitting:
        frames = [np.asarray(image.resize((tile, tile), resample=ip.resample))]
    else:
        height, width = tile_multiple(image.height, image.width, tile)
        image = image.resize((width, height), resample=ip.resample)
        frames = [np.asarray(image)]
        if height > tile or width > tile:  # the tiles, then the whole image as one more
            rows, cols = height // tile, width // tile
            frames = [frames[0][r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                      for r in range(rows) for c in range(cols)]
            frames.append(np.asarray(image.resize((tile, tile), resample=ip.resample)))
    out = np.empty((1, len(frames), 3, tile, tile), dtype=np.float32)
    for i, frame in enumerate(frames):
        out[0, i] = frame.transpose(2, 0, 1)
    divisor, mean, std = arithmetic
    out /= divisor
    out -= mean
    out /= std
    return out, rows, cols


def tile_multiple(height, width, tile):
    """The processor's resize_for_vision_encoder size: each side a multiple of the tile, the longer one first."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width
