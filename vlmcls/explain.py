"""Explanation heatmaps: the evidence for the predicted class over the original image, by one of captum's methods
(Grad-CAM on the patch embeddings or on the tokens entering the connector, or occlusion of the pixels),
each tile's map put back where the tile came from, its strongest point; the overlays, the raw maps (one .npz) and
the contact sheet of a run (PyTorch only: the gradients and the scoring module are PyTorch's)."""
import contextlib
import hashlib
import io
import re
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from .cli import OneOf, UserError
from .compat import generation_position_ids
from .files import atomic_write
from .images import load_image
from .inputs import PromptBatches
from .models import base_of
from .objectives import objective_of
from .report import best_guess, thumbnail_sheet

MAP_EDGE = 256  # a stored map's longest edge, in map cells (the original image's aspect)
OCCLUSION_SIDE = 4  # occlusion hides a square of 1/4 x 1/4 of a tile at a time: 16 forward passes a tile
FOLDER = "explanations"  # in the report folder: an overlay PNG per image, MAPS, SHEET
MAPS = "maps.npz"  # every image's map, by its overlay's name; "paths" and "points" beside them
SHEET = "contact_sheet.png"
SHEET_EACH = 12  # confident errors, and uncertain images, the contact sheet shows
COLUMNS = ["explanation_x", "explanation_y"]  # predictions.csv's point of strongest evidence, original pixels
TILE_TOKEN = re.compile(r"<row_(\d+)_col_(\d+)>")  # Idefics3's token before each tile's image tokens


def connector(model):
    """The module that turns the vision encoder's patch tokens into the language model's image tokens: Idefics3's
    (SmolVLM's) connector, whose tiles this module maps back onto the image. UserError for other families."""
    inner = base_of(model).model
    if not hasattr(inner, "connector") or base_of(model).config.model_type not in ("idefics3", "smolvlm"):
        raise UserError(f"explanations map SmolVLM's (Idefics3's) tiles onto the image; "
                        f"{type(base_of(model)).__name__} is not supported")
    return inner.connector


@contextlib.contextmanager
def token_layer(model, where):
    """A layer whose output is the image's tokens, as (tiles, channels, tokens), the layout captum's layer methods
    take (channels second), in the model's forward for the duration: where="patches", the patch embeddings the
    vision encoder starts from (before attention mixes the patches); where="connector", the encoder's last states
    entering the connector. The weights are frozen meanwhile, so that no gradient is kept but the layer's (captum
    asks for that one alone)."""
    import torch

    class Channels(torch.nn.Module):
        def forward(self, tokens):
            return tokens.transpose(1, 2)
    layer = Channels()
    if where == "connector":
        handle = connector(model).register_forward_pre_hook(
            lambda _, args: (layer(args[0]).transpose(1, 2), *args[1:]))
    else:
        handle = base_of(model).model.vision_model.embeddings.register_forward_hook(
            lambda _, args, out: layer(out).transpose(1, 2))
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield layer
    finally:
        handle.remove()
        for p in trainable:
            p.requires_grad_(True)


def gradcam(forward, pixel_values, target, model, where):
    """captum's LayerGradCam on the image's tokens (token_layer): each channel weighted by its mean gradient over
    the tile, summed, positive part. (tiles, tokens)."""
    from captum.attr import LayerGradCam
    with token_layer(model, where) as layer:
        return LayerGradCam(forward, layer).attribute(pixel_values, target=target, relu_attributions=True)[:, 0]


def occlusion(forward, pixel_values, target, model):
    """captum's Occlusion: the drop of the class's score when a square of a tile (OCCLUSION_SIDE squares a side) is
    set to the normalised mean (0), one forward pass per square. (tiles, squares)."""
    from captum.attr import Occlusion
    side = pixel_values.shape[-1] // OCCLUSION_SIDE
    window = (1, 3, side, side)
    drops = Occlusion(forward).attribute(pixel_values, target=target, sliding_window_shapes=window,
                                         strides=window, baselines=0)
    squares = drops[0, :, 0, ::side, ::side]  # one value per square
    return squares.reshape(squares.shape[0], -1).clamp(min=0)


def guided_gradcam(forward, pixel_values, target, model):
    """Guided Grad-CAM (Selvaraju et al. 2017) at the pixels: gradcam's patch map, upsampled to the tile's pixels
    (captum's LayerAttribution.interpolate), times the magnitude of the class score's gradient at each pixel
    (captum's Saliency, summed over colours). captum's GuidedGradCam class assumes a convolution's 2-D map; the
    vision encoder's is a sequence of patch tokens. (tiles, pixels)."""
    from captum.attr import LayerAttribution, Saliency
    patches = gradcam(forward, pixel_values, target, model, where="patches")
    tiles, side = patches.shape[0], int(round(patches.shape[1] ** 0.5))
    cam = LayerAttribution.interpolate(patches.reshape(tiles, 1, side, side), pixel_values.shape[-2:], "bilinear")
    gradient = Saliency(forward).attribute(pixel_values, target=target, abs=True)[0].sum(1)
    return (cam[:, 0] * gradient).reshape(tiles, -1)


# The methods by name: each (forward, pixel_values, the target class's output, model) -> (tiles, cells) maps, a
# tile's cells a square grid.
METHODS = {"gradcam": partial(gradcam, where="patches"), "gradcam_connector": partial(gradcam, where="connector"),
           "occlusion": occlusion, "guided_gradcam": guided_gradcam}
EXPLAIN_METHODS = OneOf(*METHODS)  # the values of the evaluation scripts' EXPLAIN_METHOD


def unexplainable(saved, quantize):
    """Why the model (its record) with `quantize` weights cannot be explained, in one line, or None: an exported
    model (no PyTorch), int8 weights (no gradients: captum's backward pass fails through them), a multi-label model
    (not built yet). The scripts' refusal and the page's switch say it alike."""
    if saved.multi_label:
        return f"{saved.path} is a multi-label model: explanations of multi-label models are not built yet (issue 44)"
    if saved.export is not None:
        return (f"{saved.path} is an exported model: explanations need PyTorch, in the model folder it was exported "
                "from")
    if quantize != "none":
        return f"{quantize} weights have no gradients: explanations need --quantize=none"
    return None


def check_explainable(models, mode, quantize):
    """Refuse explanations where they cannot be made, before anything runs: generate mode (no class scores), a
    model that cannot be explained (`models`: their records; unexplainable)."""
    if mode == "generate":
        raise UserError("explain=true explains the class scores, which generate mode has none of: use "
                        "--prediction=score")
    reason = next(filter(None, (unexplainable(saved, quantize) for saved in models)), None)
    if reason:
        raise UserError(f"{reason} (or --explain=false)")


def tile_layout(tokens):
    """(rows, cols) of an Idefics3 prompt's tiles from its tokens (strings); (0, 0) for one frame."""
    found = [tuple(map(int, m.groups())) for m in map(TILE_TOKEN.fullmatch, tokens) if m]
    return (max(r for r, _ in found), max(c for _, c in found)) if found else (0, 0)


def _resized(values, size, resample):
    return np.asarray(Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
                      .resize(size, resample))


def image_map(frames, rows, cols, size, resample=Image.BILINEAR):
    """One map over the image, `size` (width, height) cells, from each frame's map ((frames, g, g)): with tiles
    (rows x cols, row by row, then the whole image as the last frame, as Idefics3 splits), the tiles' mosaic
    stretched over the image plus the whole image's map; else the one frame's, stretched over the image (each frame
    was the image resized, so stretching puts every cell back where it came from). Bilinear for the eye; BOX keeps
    each frame cell one flat block where frames are coarser than the map (and averages where they are finer), for
    strongest_point."""
    total = _resized(frames[-1], size, resample)
    if rows * cols:
        mosaic = np.block([[frames[r * cols + c] for c in range(cols)] for r in range(rows)])
        total = total + _resized(mosaic, size, resample)
    return total


def strongest_point(blocks, width, height):
    """The centre of the strongest block of a map whose frame cells are flat blocks (image_map's BOX), in the
    original image's pixel coordinates (x, y): the mean place of the connected cells at the maximum around the
    first of them. (The first maximum of the bilinear map lay on the image's edge wherever an edge cell was the
    strongest, its values flat from the cell's centre outwards: a coarse map, occlusion's 4 x 4, pointed at the
    border.)"""
    from scipy.ndimage import label
    top = blocks.max()
    regions, _ = label(blocks >= top - 1e-6 * max(abs(top), 1e-12))
    y, x = np.nonzero(regions == regions.flat[int(np.argmax(blocks))])
    return float((x.mean() + 0.5) * width / blocks.shape[1]), float((y.mean() + 0.5) * height / blocks.shape[0])


class Explainer:
    """Heatmaps of the evidence for a class, for a PyTorch model of either objective: the class's score as its
    objective's scoring module defines it (the head's logit; the answer's log-likelihood), explained by `method`
    (a name in METHODS)."""

    def __init__(self, model, processor, question, classes, method="gradcam", max_pixels=None, enlarge=False):
        objective = objective_of(model)
        connector(model)  # refuse another family before any work
        self.model, self.processor, self.classes, self.max_pixels = model, processor, list(classes), max_pixels
        self.scores, _ = objective.scoring_module(model, processor, question, classes)
        self.order = objective.output_order(model, classes)
        self.method = METHODS[method]
        self.batches = PromptBatches(processor, question, max_pixels, enlarge)

    def __call__(self, image, predicted):
        """{"map": (h, w) float32 over the image, its longest side MAP_EDGE cells at most, "point": (x, y) of the
        strongest evidence in the image's pixels, "size": the image's (width, height)} for the class `predicted` of
        an image (a path or a decoded RGB image)."""
        picture = load_image(image, self.max_pixels) if isinstance(image, (str, Path)) else image
        batch = self.batches([picture])
        if isinstance(batch, str):
            raise UserError(batch)
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        batch["position_ids"] = generation_position_ids(self.model, batch)
        index = self.classes.index(predicted)
        target = self.order[index] if self.order else index

        def forward(pixel_values):
            return self.scores(**{**batch, "pixel_values": pixel_values})
        maps = self.method(forward, batch["pixel_values"], target, self.model).detach().float().cpu().numpy()
        side = int(round(maps.shape[1] ** 0.5))
        rows, cols = tile_layout(self.processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()))
        width, height = picture.size
        scale = min(1.0, MAP_EDGE / max(width, height))
        frames, size = maps.reshape(-1, side, side), (max(1, round(width * scale)), max(1, round(height * scale)))
        blocks = image_map(frames, rows, cols, size, Image.BOX)
        return {"map": image_map(frames, rows, cols, size), "point": strongest_point(blocks, width, height),
                "size": (width, height)}


def overlay(picture, heat, point):
    """The image with the map over it (red, as opaque as the evidence is strong, relative to its strongest cell)
    and a ring at the strongest point."""
    from PIL import ImageDraw
    base = picture.convert("RGB")
    top = float(heat.max())
    alpha = _resized(heat / top if top > 0 else heat * 0, base.size, Image.BILINEAR)
    red = Image.new("RGB", base.size, (255, 0, 0))
    shown = Image.composite(red, base, Image.fromarray((np.clip(alpha, 0, 1) * 160).astype(np.uint8), "L"))
    radius = max(3, min(base.size) // 30)
    x, y = point
    ImageDraw.Draw(shown).ellipse([x - radius, y - radius, x + radius, y + radius], outline=(255, 255, 0),
                                  width=max(1, radius // 3))
    return shown


def overlay_name(path):
    """An image's overlay file name: its stem and a hash of its whole path (files of one name in two folders)."""
    return f"{Path(path).stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def explaining(predict_batches, explainer, folder):
    """predict_batches (as prediction.predict_batches, with its model and settings given) with each predicted image
    explained as it comes: the best guess's map, its overlay as <FOLDER>/<overlay_name>.png, the map as
    <overlay_name>.npy beside it (pack_maps gathers them) and the strongest point in each result
    ("explanation": (x, y), predictions.csv's COLUMNS)."""
    folder = Path(folder) / FOLDER

    def predict(batches, **settings):
        for (kept, results, problems), images in zip(predict_batches(batches, **settings), batches):
            for i, result in zip(kept, results):
                picture = load_image(images[i], explainer.max_pixels)
                found = explainer(picture, best_guess(result))
                name = overlay_name(images[i])
                atomic_write(folder / f"{name}.png", _png(overlay(picture, found["map"], found["point"])))
                buffer = io.BytesIO()
                np.save(buffer, found["map"].astype(np.float16))
                atomic_write(folder / f"{name}.npy", buffer.getvalue())
                result["explanation"] = found["point"]
            yield kept, results, problems
    return predict


def pack_maps(folder, rows):
    """<FOLDER>/MAPS: the map of every row's image (predictions.csv's rows), by its overlay's name, with "paths"
    and "points" (x, y) in the rows' order, gathered from the .npy files explaining() wrote (then removed) and the
    MAPS of an earlier part of a continued run."""
    folder = Path(folder) / FOLDER
    earlier = dict(np.load(folder / MAPS)) if (folder / MAPS).is_file() else {}
    names = [overlay_name(r["path"]) for r in rows]
    maps = {name: np.load(folder / f"{name}.npy") if (folder / f"{name}.npy").is_file() else earlier[name]
            for name in names}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, paths=np.array([r["path"] for r in rows]), names=np.array(names),
                        points=np.array([[float(r["explanation_x"]), float(r["explanation_y"])] for r in rows]),
                        **maps)
    atomic_write(folder / MAPS, buffer.getvalue())
    for name in names:
        (folder / f"{name}.npy").unlink(missing_ok=True)


def sheet_rows(rows):
    """(the most confident errors, the uncertain images) among predictions.csv's rows, SHEET_EACH each at most:
    errors by their best guess's probability, highest first; uncertain images those marked so, else (no
    threshold) the least confident, lowest first."""
    def probability(row):
        return float(row["probability"] or 0)
    errors = sorted((r for r in rows if r["true_class"] and r["best_guess"] != r["true_class"]),
                    key=probability, reverse=True)
    marked = [r for r in rows if r["predicted_class"] == "uncertain"]
    unsure = sorted(marked or rows, key=probability)
    return errors[:SHEET_EACH], unsure[:SHEET_EACH]


def write_sheet(folder, rows, thumb=160):
    """<FOLDER>/SHEET: the overlays of the most confident errors, then of the uncertain images (sheet_rows)."""
    folder = Path(folder) / FOLDER
    errors, unsure = sheet_rows(rows)
    cells = []
    for kind, chosen in (("error", errors), ("uncertain", unsure)):
        for row in chosen:
            file = folder / f"{overlay_name(row['path'])}.png"
            image = None
            if file.is_file():
                with Image.open(file) as shown:
                    image = shown.convert("RGB")
                    image.thumbnail((thumb, thumb))
            given = f"given: {row['true_class']}" if row["true_class"] else "unlabelled"
            cells.append((image, [(f"{kind}: {Path(row['path']).name}", (90, 90, 90)), (given, (170, 20, 20)),
                                  (f"model: {row['best_guess']} {float(row['probability'] or 0):.2f}",
                                   (20, 110, 20))]))
    title = (f"Evidence for the best guess: {len(errors)} most confident errors, then {len(unsure)} uncertain "
             "images")
    atomic_write(folder / SHEET, _png(thumbnail_sheet(title, cells, thumb, 6)))
