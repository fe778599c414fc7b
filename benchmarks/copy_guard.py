"""Benchmark: the copy guard's false alarms and catches, the old rule (a colour thumbnail alone) against the new
(the thumbnail finds candidates, their fine detail at the pair's common size confirms them), in the same run.

fine_tune.py refuses a held-out image that looks like a training image (vlmcls.images.refuse_overlap), and
generate_train_json.py keeps look-alikes in one split by the same rule. A false alarm is two distinct images
(different pixels) judged the same picture: it stops a run on a data set no one tampered with. A catch is a copy of
an image, re-encoded or resized, judged the same picture as its original. Three sets of images:

- elpv: the 2,624 solar cells of the elpv-dataset package (300x300, greyscale), as download_dataset.py --source=elpv
  reads them;
- digits: scikit-learn's 1,797 handwritten digits at 128 px, as benchmarks/tasks.py writes them;
- photos: 128 px tiles, side by side, of scikit-learn's two sample photos (a temple, a flower): colour photographs;
- structured: stripes (vertical, horizontal, diagonal), grids and checkerboards, each at several periods in
  COLOUR_PAIRS random colour pairs and, beside each pair, its twin: another pair with the same mean colour and the
  same grey levels, which only colour tells apart. Each twin is of one of two classes, by the angle between its
  colour contrast (Cb, Cr) and its pair's: other hues (TWIN_HUE_ANGLE degrees or more apart) or the same hues at
  another saturation (less), which looks like a JPEG copy's weakened colour; false alarms are counted per class.

False alarms count every pair of distinct images; copies are made of a seeded sample of COPIES images a set.

    HF_HUB_OFFLINE=1 python benchmarks/copy_guard.py                 # ~5 min on one core
"""
import sys
import time
from io import BytesIO
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("", "tests")]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import ROOT, command, commit, machine, now, write_report  # noqa: E402
from tasks import digit_images  # noqa: E402
from vlmcls import images  # noqa: E402
from vlmcls.cli import configure, run_main  # noqa: E402

SETS = ["elpv", "digits", "photos", "structured"]  # which sets of images (see above)
COPIES = 200  # images of each set copied, a seeded sample
SEED = 0  # seed of the sample, the colour pairs and their twins
DIGIT_SIZE = 128  # pixels: a digit's side (tasks.py's size)
STRUCTURED_SIZE = 128  # pixels: a structured image's side
PERIODS = [4, 8, 16, 32, 64]  # pixels: the structured layouts' periods (8 px and below: under the thumbnail's)
COLOUR_PAIRS = 24  # random colour pairs a layout and period, each with its twin
TWIN_HUE_ANGLE = 60.0  # degrees between a twin's colour contrast and its pair's, from which its hues are other ones
QUALITIES = [50, 60, 70, 75, 80, 85, 90, 95]  # JPEG qualities of the copies a false pair left is held against
OUTPUT = ""  # where the table is also written; "": benchmarks/results-copy-guard.md

LAYOUTS = ["vertical stripes", "horizontal stripes", "diagonal stripes", "grid", "checkerboard"]
# Each copy: how it is made from the original.
VARIANTS = {
    "JPEG q30": lambda im: jpeg(im, 30),
    "JPEG q50": lambda im: jpeg(im, 50),
    "JPEG q75": lambda im: jpeg(im, 75),
    "0.5x": lambda im: scaled(im, 0.5),
    "0.75x": lambda im: scaled(im, 0.75),
    "1.25x": lambda im: scaled(im, 1.25),
    "1.5x": lambda im: scaled(im, 1.5),
    "0.5x, JPEG q30": lambda im: jpeg(scaled(im, 0.5), 30),
    "1.5x, JPEG q30": lambda im: jpeg(scaled(im, 1.5), 30),
}
GREY = np.array([0.299, 0.587, 0.114])  # Pillow's weights of R, G, B in a grey level (ITU-R 601)
CHROMA = np.array([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])  # R, G, B to Cb, Cr (ITU-R 601)


def jpeg(image, quality):
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(BytesIO(buffer.getvalue())).convert("RGB")


def scaled(image, factor):
    """Resized by `factor` with Pillow's default filter (bicubic)."""
    return image.resize((round(image.width * factor), round(image.height * factor)))


# Each rule: whether it confirms the thumbnail's pairs by their fine detail (vlmcls.images.same_fine_detail).
RULES = {"old (thumbnail)": False, "new (thumbnail, then fine detail)": True}


def layout(name, period, size):
    """Where a layout takes its second colour: a boolean mask, `size` px square, repeating every `period` px."""
    y, x = np.mgrid[:size, :size]
    half = period // 2
    return {"vertical stripes": x // half % 2 == 1,
            "horizontal stripes": y // half % 2 == 1,
            "diagonal stripes": (x + y) // half % 2 == 1,
            "grid": (x % period < max(1, period // 8)) | (y % period < max(1, period // 8)),
            "checkerboard": (x // half + y // half) % 2 == 1}[name]


def colour_pair_and_twin(rng):
    """Two colours at least 48 levels apart, and a twin pair with the same mean colour and the same two grey levels
    but colours at least 30 levels away: the greyscale rule cannot tell a layout in one pair from it in the other."""
    while True:
        a, b = rng.integers(0, 256, 3).astype(float), rng.integers(0, 256, 3).astype(float)
        shift = rng.normal(0, 60, 3)
        shift -= GREY * (GREY @ shift) / (GREY @ GREY)  # no change of grey level
        c, d = a + shift, b - shift  # the mean stays, each grey level stays
        if np.abs(a - b).max() >= 48 and np.abs(shift).max() >= 30 and min(c.min(), d.min()) >= 0 and \
                max(c.max(), d.max()) <= 255:
            return [tuple(np.round(x).astype(np.uint8)) for x in (a, b, c, d)]


def twin_class(a, b, c, d):
    """Which class the twin (c, d) of the colour pair (a, b) is of: "other hues" where their colour contrasts (Cb,
    Cr of the second colour less the first's) point TWIN_HUE_ANGLE degrees or more apart, else "same hues"."""
    one, other = CHROMA @ (np.array(b, float) - a), CHROMA @ (np.array(d, float) - c)
    cosine = one @ other / np.linalg.norm(one) / np.linalg.norm(other)
    return "other hues" if np.degrees(np.arccos(np.clip(cosine, -1, 1))) >= TWIN_HUE_ANGLE else "same hues"


def structured_colours(colour_pairs, seed):
    """The structured set's colour pairs and their twins: [(a, b, c, d)]."""
    rng = np.random.default_rng(seed)
    return [colour_pair_and_twin(rng) for _ in range(colour_pairs)]


def structured_set(periods, colour_pairs, size, seed):
    """[(name, image)]: every layout at every period in `colour_pairs` random colour pairs and their twins."""
    found = []
    for pair, (a, b, c, d) in enumerate(structured_colours(colour_pairs, seed)):
        for name in LAYOUTS:
            for period in periods:
                mask = layout(name, period, size)[..., None]
                for label, (one, two) in (("", (a, b)), (" twin", (c, d))):
                    pixels = np.where(mask, np.array(two, np.uint8), np.array(one, np.uint8))
                    found.append((f"{name} {period}px pair {pair}{label}", Image.fromarray(pixels)))
    return found


def image_set(name):
    """[(name, RGB image)] of one set."""
    if name == "elpv":
        import elpv_dataset
        folder = Path(elpv_dataset.__file__).parent / "data" / "images"
        return [(p.name, images.load_image(p, 10**8)) for p in sorted(folder.glob("*.png"))]
    if name == "digits":
        return [(f"{i:04d} {digit}", image.convert("RGB")) for i, (image, digit) in enumerate(digit_images(DIGIT_SIZE))]
    if name == "photos":
        from sklearn.datasets import load_sample_images
        side = STRUCTURED_SIZE
        return [(f"{photo} tile {y},{x}", Image.fromarray(pixels[y:y + side, x:x + side]))
                for photo, pixels in zip(("china", "flower"), load_sample_images().images)
                for y in range(0, pixels.shape[0] - side + 1, side) for x in range(0, pixels.shape[1] - side + 1, side)]
    return structured_set(PERIODS, COLOUR_PAIRS, STRUCTURED_SIZE, SEED)


def same(one, other, verify):
    """Whether a rule judges two images whose thumbnails agree the same picture."""
    return not verify or images.same_fine_detail(images.detail_view(one), images.detail_view(other))


def false_alarms(named, verify):
    """The pairs of distinct images (different pixels) that a rule judges the same picture, the pairs of identical
    ones, and the smallest thumbnail distance between distinct images (within 5x the tolerance; inf beyond)."""
    hashes = [images.pixel_hash(image) for _, image in named]
    looks = [images.look(image) for _, image in named]
    near = images.lookalike_pairs(looks, tolerance=5)
    distinct = [(i, j) for i, j in near if hashes[i] != hashes[j]]
    distances = [images.look_distance(looks[i], looks[j]) for i, j in distinct]
    alarms = [(named[i][0], named[j][0]) for (i, j), d in zip(distinct, distances)
              if d <= 1 and same(named[i][1], named[j][1], verify)]
    identical = len(near) - len(distinct)
    return alarms, identical, min(distances, default=np.inf)


def catches(named, verify, rng):
    """Per variant, the share of the sampled images whose copy is judged the same picture as the image, and the
    largest copy's thumbnail distance."""
    sample = rng.choice(len(named), min(COPIES, len(named)), replace=False)
    found = {}
    for variant, make in VARIANTS.items():
        copies = [(named[i][1], make(named[i][1])) for i in sample]
        distances = [images.look_distance(images.look(a), images.look(b)) for a, b in copies]
        caught = [d <= 1 and same(a, b, verify) for d, (a, b) in zip(distances, copies)]
        found[variant] = (np.mean(caught), max(distances))
    return found, len(sample)


def twin_of(one, other):
    """Whether two structured images' names are a layout in a colour pair and in its twin."""
    return one != other and one.split(" twin")[0] == other.split(" twin")[0]


def pair_class(one, other, colours):
    """A structured false pair's class: "layouts" (two layouts, or one in two colour pairs) or its twin's class."""
    if not twin_of(one, other):
        return "layouts"
    return twin_class(*colours[int(one.split(" pair ")[1].split()[0])])


def rms(one, other):
    """Two same-size images' RMS difference over R, G and B, in levels."""
    return float(np.sqrt(((np.asarray(one, np.float64) - np.asarray(other, np.float64)) ** 2).mean()))


def nearest_copies(named, alarms):
    """For each false pair (a, b) left: the JPEG copy (Pillow, QUALITIES) of one of the two that is nearest the
    other, as (that other's distance from the copy, the copy's distance from its original, quality), by class. A
    pair whose other image is nearer the copy than the copy is to its original lies closer to a copy the guard must
    catch than that copy lies to its own original."""
    image_of, colours = dict(named), structured_colours(COLOUR_PAIRS, SEED)
    found = {}
    for a, b in alarms:
        copies = [(rms(image_of[y], copy), rms(image_of[x], copy), quality)
                  for x, y in ((a, b), (b, a)) for quality in QUALITIES for copy in [jpeg(image_of[x], quality)]]
        found.setdefault(pair_class(a, b, colours), []).append(min(copies, key=lambda c: c[0] - c[1]))
    return found


def spread_of(values):
    return f"{min(values):.1f}, {np.median(values):.1f}, {max(values):.1f}" if values else "-"


def report(results, started, elapsed):
    rules = list(RULES)
    alarm_rows, catch_rows, examples = [], [], []
    for name, result in results.items():
        cells = []
        for rule in rules:
            alarms, identical, closest = result["alarms"][rule]
            involved = len({n for pair in alarms for n in pair})
            cells.append(f"{len(alarms)} ({involved} images) | {closest:.3f}")
            examples += [f"- {name}, {rule}: {a} and {b}" for a, b in alarms[:3]]
        alarm_rows.append(f"| {name} | {result['images']} | {identical} | " + " | ".join(cells) + " |")
        for variant in VARIANTS:
            cells = [f"{result['catches'][rule][variant][0]:.1%} ({result['catches'][rule][variant][1]:.3f})"
                     for rule in rules]
            catch_rows.append(f"| {name} | {variant} | " + " | ".join(cells) + " |")
    if "structured" in results:
        by_period = []
        for period in PERIODS:
            counts = [sum(f" {period}px " in a and f" {period}px " in b for a, b in results["structured"]["alarms"][r][0])
                      for r in rules]
            by_period.append(f"| {period} px ({STRUCTURED_SIZE // period} across) | " + " | ".join(map(str, counts)) + " |")
        colours = structured_colours(COLOUR_PAIRS, SEED)
        classes = [twin_class(*c) for c in colours]
        layouts_periods = len(LAYOUTS) * len(PERIODS)
        for kind in ("layouts", "other hues", "same hues"):
            counts = [sum(pair_class(a, b, colours) == kind for a, b in results["structured"]["alarms"][r][0])
                      for r in rules]
            what = ("two layouts, or a layout in two colour pairs, not twins" if kind == "layouts" else
                    f"a layout and its twin of {kind} ({classes.count(kind)} colour pairs, "
                    f"{classes.count(kind) * layouts_periods} twin pairs in the set)")
            by_period.append(f"| all periods: {what} | " + " | ".join(map(str, counts)) + " |")
        nearest = "\n".join(
            f"| {kind} | {len(found)} | {sum(other < copy for other, copy, _ in found)} | "
            f"{spread_of([other for other, _, _ in found])} | {spread_of([copy for _, copy, _ in found])} | "
            f"{', '.join(map(str, sorted({q for _, _, q in found})))} |"
            for kind, found in sorted(results["structured"]["nearest"].items()))
        periods = ("\nStructured set's false alarms by period (pairs of images of that period), and by class: pairs "
                   "that are not twins, and a layout and its colour twin, of other hues (their colour contrasts "
                   f"{TWIN_HUE_ANGLE:.0f} degrees or more apart) or of the same hues at another saturation:\n\n"
                   f"| period | {' | '.join(rules)} |\n|---|---|---|\n" + "\n".join(by_period) + "\n\n"
                   f"The false pairs left ({rules[1]}) against JPEG copies: for each pair, the JPEG copy (Pillow, "
                   f"quality {QUALITIES[0]}-{QUALITIES[-1]}) of one image that is nearest the other, relative to "
                   "that copy's distance from its original (RMS over R, G, B, in levels; min, median, max). A pair "
                   "whose second image is nearer the copy than the copy is to its original lies closer to a copy "
                   "that the guard must catch than that copy lies to its own original:\n\n"
                   "| class | pairs left | nearer the copy than the copy is to its original | distance from the copy "
                   "| the copy's distance from its original | qualities |\n|---|---|---|---|---|---|\n"
                   + nearest + "\n")
    else:
        periods = ""
    return f"""# The copy guard: false alarms and copies caught, old rule against new

{command("copy_guard.py")}

- Commit {commit()}. {machine(started, elapsed)}.
- Old rule (the thumbnail alone, vlmcls.images.look_distance at most 1): {images.THUMBNAIL_SIDE}x{images.THUMBNAIL_SIDE} thumbnails whose grey levels differ (RMS)
  by at most {images.THUMBNAIL_TOLERANCE} of their spread (at least {images.THUMBNAIL_MIN_SPREAD} levels) and whose colour (Cb, Cr) by at most {images.CHROMA_TOLERANCE} levels, and
  mean colours within {images.MEAN_COLOUR_TOLERANCE} levels a channel. New rule: those pairs, confirmed by their fine detail at the pair's common
  size (vlmcls.images.same_fine_detail: longer side at most {images.DETAIL_MAX_SIDE} px, blur sigma the longer side / {images.DETAIL_BLUR}; two pictures where, in
  luma or in chroma, the weaker detail is at least {images.DETAIL_FLOOR} levels RMS and {images.DETAIL_SHARE} of the stronger, and the cosine under
  {images.DETAIL_MAX_COSINE}; or where the median length of the Cb-Cr difference, both blurred by {images.MID_BLUR} px, is over {images.MID_TOLERANCE} levels).
- Structured: {len(LAYOUTS)} layouts ({", ".join(LAYOUTS)}) x {len(PERIODS)} periods x {COLOUR_PAIRS} colour pairs, each pair with its
  twin (same mean colour, same grey levels, other colours), {STRUCTURED_SIZE} px. Copies: a seeded sample (seed {SEED}) of up to
  {COPIES} images a set; resizes with Pillow's bicubic filter.

False alarms: pairs of distinct images (different pixels) judged the same picture, and the distance of the closest
two distinct images by their thumbnails (1 is the limit; inf: none within 5). Pairs of identical images are counted
apart: they are the same picture.

| set | images | identical pairs | {rules[0]}: false alarms | closest | {rules[1]}: false alarms | closest |
|---|---|---|---|---|---|---|
{chr(10).join(alarm_rows)}
{periods}
{chr(10).join(examples) or "No false alarms."}

Copies caught: the share of the sampled images whose copy is judged the same picture as the original (the largest
thumbnail distance of a copy from its original; 1 is the limit):

| set | copy | {rules[0]} | {rules[1]} |
|---|---|---|---|
{chr(10).join(catch_rows)}
"""


def main():
    started, start = now(), time.perf_counter()
    results = {}
    for name in SETS:
        named = image_set(name)
        print(f"{name}: {len(named)} images", flush=True)
        results[name] = {"images": len(named), "alarms": {}, "catches": {}}
        for rule, verify in RULES.items():
            results[name]["alarms"][rule] = false_alarms(named, verify)
            results[name]["catches"][rule], _ = catches(named, verify, np.random.default_rng(SEED))
        if name == "structured":
            results[name]["nearest"] = nearest_copies(named, results[name]["alarms"][list(RULES)[1]][0])
    write_report(report(results, started, time.perf_counter() - start),
                 OUTPUT or ROOT / "benchmarks" / "results-copy-guard.md")


if __name__ == "__main__":
    configure(globals())
    run_main(main)
