"""A tiny, deterministic, ILSVRC-shaped dataset for the demo and the tests.

Two styles. `shapes` (the demo's and the tests'): each class a flat shape or texture
(circle, ring, stripes...) in a random colour on a smooth background, learnt in a minute.
`scenes`: each class a textured object on a cluttered background, with varied lighting,
noise and JPEG quality (see `scenes.py`); harder than the smoke recipe can learn yet. Both
draw objects at random scales and positions in images of random size and ImageNet-like
aspect ratio (sides 96-400 px, 3:4 to 4:3), so scale jitter and multi-scale testing have
something to win, and colour says nothing about the class. Every image is a pure function
of (seed, split, class, index).

`imagenet_sized` draws either style at ImageNet's typical 500x375 (or 375x500), adds
multi-octave grain (natural-image-like detail at every scale) and stores at quality 90, so
a file is about 100 kB like an ImageNet JPEG: the size that sets the cost of decoding, which
`vgg bench loader` measures (the demo's small, smooth images decode several times faster).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vggcli.config import DEMO_STYLES, VAL_LAYOUTS
from vggcli.data.photos import PHOTOS, render_photo
from vggcli.data.scenes import CLASS_NAMES, SceneSettings, render_scene
from vggcli.errors import VggError
from vggcli.files import atomic_write_bytes

Box = tuple[float, float, float, float]
IMAGENET_SIDES = (375, 500)  # the most common ILSVRC image size
IMAGENET_QUALITY = 90
GRAIN = 14.0  # grey levels per octave of detail: files of about 100 kB at quality 90


def _circle(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    d.ellipse(b, fill=c)


def _ring(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    d.ellipse(b, outline=c, width=w)


def _square(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    d.rectangle(b, fill=c)


def _triangle(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    x0, y0, x1, y1 = b
    d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=c)


def _diamond(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    x0, y0, x1, y1 = b
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    d.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=c)


def _plus(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    x0, y0, x1, y1 = b
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    d.rectangle((xm - w, y0, xm + w, y1), fill=c)
    d.rectangle((x0, ym - w, x1, ym + w), fill=c)


def _cross(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    x0, y0, x1, y1 = b
    d.line((x0, y0, x1, y1), fill=c, width=2 * w)
    d.line((x0, y1, x1, y0), fill=c, width=2 * w)


def _hbars(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    x0, y0, x1, y1 = b
    for y in np.arange(y0, y1, 3 * w):
        d.rectangle((x0, y, x1, y + w), fill=c)


def _vbars(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    x0, y0, x1, y1 = b
    for x in np.arange(x0, x1, 3 * w):
        d.rectangle((x, y0, x + w, y1), fill=c)


def _checker(d: ImageDraw.ImageDraw, b: Box, c: tuple, w: int) -> None:
    x0, y0, x1, y1 = b
    step = 2 * w
    for i, y in enumerate(np.arange(y0, y1 - 1, step)):
        for j, x in enumerate(np.arange(x0, x1 - 1, step)):
            if (i + j) % 2 == 0:
                d.rectangle((x, y, min(x + step, x1), min(y + step, y1)), fill=c)


SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, Box, tuple, int], None]] = {
    "circle": _circle,
    "ring": _ring,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "plus": _plus,
    "cross": _cross,
    "horizontal-bars": _hbars,
    "vertical-bars": _vbars,
    "checkerboard": _checker,
}


def wnid(class_index: int) -> str:
    """ILSVRC-looking synset ids, sorted in class order."""
    return f"n{90000000 + 1111 * class_index:08d}"


@dataclass(frozen=True)
class SyntheticSpec:
    classes: int = 10
    train_per_class: int = 100
    val_per_class: int = 20
    seed: int = 0
    min_side: int = 96
    max_side: int = 400
    val_layout: str = "loc"
    style: str = "shapes"
    scenes: SceneSettings = SceneSettings()
    imagenet_sized: bool = False  # 500x375 q90 with fine detail; min_side, max_side unused

    def __post_init__(self) -> None:
        if self.style not in DEMO_STYLES:
            raise VggError(f"unknown style: choose {', '.join(DEMO_STYLES)}", field="style")
        if not 1 <= self.classes <= len(SHAPES):
            raise VggError(f"there are 1 to {len(SHAPES)} classes", field="classes")
        if self.val_layout not in VAL_LAYOUTS:
            raise VggError(
                f"unknown validation layout: choose {', '.join(VAL_LAYOUTS)}", field="val_layout"
            )
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise VggError("images per class must be at least 1")
        if not 32 <= self.min_side <= 0.75 * self.max_side:
            raise VggError(
                f"the smallest side {self.min_side} must be at least 32 px and at most 3/4 of "
                f"the longest side {self.max_side}",
                field="min_side",
            )


def _colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))  # type: ignore[return-value]


def class_names(spec: SyntheticSpec) -> list[str]:
    names = {"scenes": CLASS_NAMES, "photos": PHOTOS}.get(spec.style, tuple(SHAPES))
    return list(names[: spec.classes])


def render(spec: SyntheticSpec, split: str, class_index: int, index: int) -> Image.Image:
    """One image of the spec's style."""
    return _render(spec, split, class_index, index)[0]


def _render(
    spec: SyntheticSpec, split: str, class_index: int, index: int
) -> tuple[Image.Image, int]:
    """One image and the JPEG quality to store it at."""
    split_key = 0 if split == "train" else 1
    rng = np.random.default_rng([spec.seed, split_key, class_index, index])
    if spec.imagenet_sized:
        short, long = IMAGENET_SIDES
    else:
        short = int(rng.integers(spec.min_side, int(spec.max_side * 0.75) + 1))
        long = min(spec.max_side, int(short * rng.uniform(1.0, 4 / 3)))
    width, height = (long, short) if rng.random() < 0.5 else (short, long)
    if spec.style == "scenes":
        image, quality = render_scene(spec.scenes, class_index, height, width, rng)
    elif spec.style == "photos":
        image, quality = render_photo(class_index, split, height, width, rng), 90
    else:
        image, quality = _render_shape(class_index, height, width, rng), 85
    if spec.imagenet_sized:
        return _with_grain(image, rng), IMAGENET_QUALITY
    return image, quality


def _with_grain(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Add detail at 1, 2, 4 and 8 px (mostly in luminance), as photos have at every scale:
    it is what makes a JPEG big and slow to decode."""
    width, height = image.size
    total = np.asarray(image, np.float32).copy()
    for cell in (1, 2, 4, 8):
        rows, cols = height // cell + 2, width // cell + 2
        field = rng.normal(0, GRAIN, (rows, cols, 3)).astype(np.float32)
        field[..., 1:] = 0.8 * field[..., :1] + 0.2 * field[..., 1:]
        if cell > 1:
            size = (cols * cell, rows * cell)
            planes = [Image.fromarray(field[..., c]).resize(size, Image.BICUBIC) for c in range(3)]
            field = np.stack([np.asarray(plane) for plane in planes], axis=-1)
        total += field[:height, :width]
    return Image.fromarray(np.clip(total, 0, 255).astype(np.uint8))


def _render_shape(
    class_index: int, height: int, width: int, rng: np.random.Generator
) -> Image.Image:
    """Smooth background, a distractor blob, and the class's shape."""
    corners = np.array([_colour(rng, 0, 256) for _ in range(4)], dtype=np.float32)
    ys, xs = np.linspace(0, 1, height)[:, None, None], np.linspace(0, 1, width)[None, :, None]
    top = corners[0] * (1 - xs) + corners[1] * xs
    bottom = corners[2] * (1 - xs) + corners[3] * xs
    image = Image.fromarray((top * (1 - ys) + bottom * ys).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    blob = rng.uniform(0.1, 0.3) * short
    bx, by = rng.uniform(0, width - blob), rng.uniform(0, height - blob)
    draw.ellipse((bx, by, bx + blob * rng.uniform(0.5, 1.5), by + blob), fill=_colour(rng, 0, 256))
    size = rng.uniform(0.15, 0.75) * short
    x0, y0 = rng.uniform(0, width - size), rng.uniform(0, height - size)
    stroke = max(2, int(size * rng.uniform(0.06, 0.12)))
    shape = list(SHAPES.values())[class_index]
    shape(draw, (x0, y0, x0 + size, y0 + size), _colour(rng, 0, 256), stroke)
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2))))


def _save(spec: SyntheticSpec, split: str, class_index: int, index: int, path: Path) -> None:
    image, quality = _render(spec, split, class_index, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=quality)


def generate(out: Path, spec: SyntheticSpec, on_image: Callable[[], None] = lambda: None) -> None:
    """Write train/<wnid>/*.JPEG and val/ in the chosen layout, with label files."""
    if out.exists() and any(out.iterdir()):
        raise VggError(f"{out} exists and is not empty; choose a new folder")
    names = class_names(spec)
    for c in range(spec.classes):
        for i in range(spec.train_per_class):
            _save(spec, "train", c, i, out / "train" / wnid(c) / f"{wnid(c)}_{i}.JPEG")
            on_image()
    mapping = "".join(f"{wnid(c)} {names[c]}\n" for c in range(spec.classes))
    atomic_write_bytes(out / "LOC_synset_mapping.txt", mapping.encode())
    _write_val(out, spec, on_image)


def _write_val(out: Path, spec: SyntheticSpec, on_image: Callable[[], None]) -> None:
    pairs = [(c, i) for c in range(spec.classes) for i in range(spec.val_per_class)]
    if spec.val_layout == "folders":
        for c, i in pairs:
            _save(spec, "val", c, i, out / "val" / wnid(c) / f"{wnid(c)}_val_{i}.JPEG")
            on_image()
        return
    order = np.random.default_rng([spec.seed, 7]).permutation(len(pairs))  # mix the classes
    labels: list[int] = []
    for image_id, k in enumerate(order, start=1):
        c, i = pairs[k]
        _save(spec, "val", c, i, out / "val" / f"ILSVRC2012_val_{image_id:08d}.JPEG")
        labels.append(c)
        on_image()
    if spec.val_layout == "loc":
        _write_loc_solution(out / "LOC_val_solution.csv", labels)
    else:
        _write_devkit(out / "ILSVRC2012_devkit_t12" / "data", labels, class_names(spec))


def _write_loc_solution(path: Path, labels: list[int]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "PredictionString"])
        for image_id, c in enumerate(labels, start=1):
            writer.writerow([f"ILSVRC2012_val_{image_id:08d}", f"{wnid(c)} 0 0 10 10"])


def devkit_order(classes: int) -> list[int]:
    """The synthetic devkit numbers classes in reverse wnid order, so a reader that wrongly
    assumes ILSVRC2012_ID order == sorted wnid order gets every label wrong."""
    return list(reversed(range(classes)))


def _write_devkit(data_dir: Path, labels: list[int], names: list[str]) -> None:
    from scipy.io import savemat

    classes = len(names)
    data_dir.mkdir(parents=True, exist_ok=True)
    order = devkit_order(classes)
    id_of = {c: position + 1 for position, c in enumerate(order)}
    truth = "".join(f"{id_of[c]}\n" for c in labels)
    (data_dir / "ILSVRC2012_validation_ground_truth.txt").write_text(truth)
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    records = np.zeros(classes + 1, dtype=fields)
    for position, c in enumerate(order):
        records[position] = (position + 1, wnid(c), names[c], 0)
    records[classes] = (classes + 1, "n00001740", "entity", classes)  # a non-leaf, as in ILSVRC
    savemat(data_dir / "meta.mat", {"synsets": records})
