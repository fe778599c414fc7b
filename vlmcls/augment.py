"""Augmentation: random flips and quarter turns of an image's pixel tensors, for either objective's training."""
from .cli import OneOf, UserError

AUGMENTS = OneOf("none", "hflip", "flips", "dihedral")  # the values of fine_tune.py's AUGMENT


def augment(tensors, how, rng):
    """An image's pixel tensors with a random one of `how`'s transforms: hflip mirrors left-right or not; flips also
    up-down; dihedral also turns a quarter (the eight symmetries of a square, for images with no up, such as cells
    or aerial views). A flip of the tile is the processor's tile of the flipped image, so the cached encoding serves
    every variant. Only one tile per image can be flipped this way: a tile grid would also have to be reordered."""
    pixels = tensors.get("pixel_values")
    one_tile = pixels is not None and (pixels.dim() == 4 or pixels.dim() == 5 and pixels.shape[1] == 1)
    if not one_tile or pixels.shape[-3] != 3:
        shape = None if pixels is None else tuple(pixels.shape)
        raise UserError(f"augment={how} needs every image as one tile of pixels (SmolVLM with image_splitting=false, "
                        f"or LLaVA); this processor gives pixel_values of shape {shape}: use augment=none")
    dims = []
    if how in ("hflip", "flips", "dihedral") and rng.random() < 0.5:
        dims.append(-1)
    if how in ("flips", "dihedral") and rng.random() < 0.5:
        dims.append(-2)
    turn = how == "dihedral" and rng.random() < 0.5
    if not dims and not turn:
        return tensors
    out = {}
    for key, value in tensors.items():
        if key in ("pixel_values", "pixel_attention_mask"):  # both end in the tile's height and width
            value = value.flip(dims) if dims else value
            value = value.transpose(-1, -2) if turn else value
        out[key] = value
    return out
