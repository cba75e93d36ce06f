"""Cluttered scenes: the demo's classes as textured objects on busy backgrounds.

Each class is a (shape, texture) pair: five silhouettes (disc, triangle, square, star,
cross) filled with stripes or with dots, so that half the pairs of classes differ only by
shape and the other half only by texture, and neither colour nor position says anything.
An object is deformed (aspect, rotation, jittered vertices), shaded, scaled to a fifth to
two thirds of the shorter side and placed anywhere, partly hidden at times; the background
is multi-octave colour noise with irregular distractor patches, some of them striped or
dotted too, so texture alone does not find the object. Lighting, colour cast, sensor noise,
blur and JPEG quality vary per image. Every image is a pure function of its arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vggcli.errors import VggError

SHAPE_NAMES = ("disc", "triangle", "square", "star", "cross")
TEXTURE_NAMES = ("striped", "dotted")
CLASS_NAMES = tuple(f"{t}-{s}" for s in SHAPE_NAMES for t in TEXTURE_NAMES)


@dataclass(frozen=True)
class SceneSettings:
    """What varies between the demo set and the held-out generated set."""

    clutter: int = 6  # distractor patches per image, on average
    min_object: float = 0.3  # object size, as a share of the shorter side
    max_object: float = 0.7
    occlusion: float = 0.3  # chance that a distractor overlaps the object

    def __post_init__(self) -> None:
        if not 0 < self.min_object <= self.max_object <= 1:
            raise VggError(
                f"object sizes {self.min_object}-{self.max_object}: need 0 < min <= max <= 1",
                field="min_object",
            )


def _outline(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-size polygon (k, 2) around the origin, its vertices jittered a little."""
    if shape == "disc":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        points = np.stack([np.cos(angles), np.sin(angles)], 1)
    elif shape in ("triangle", "square"):
        k = 3 if shape == "triangle" else 4
        angles = np.linspace(0, 2 * np.pi, k, endpoint=False) - np.pi / 2
        points = np.stack([np.cos(angles), np.sin(angles)], 1)
    elif shape == "star":
        angles = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    else:  # cross: a plus sign with arms a third wide
        a, b = 1.0, 0.33
        points = np.array(
            [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
             (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        )  # fmt: skip
    return points + rng.normal(0, 0.04, points.shape)


def _place(points: np.ndarray, centre: tuple[float, float], size: float, rng) -> list:
    """Scale to `size` (half-extent), stretch, rotate, move to `centre`: PIL polygon."""
    stretch = np.array([rng.uniform(0.75, 1.3), 1.0])
    angle = rng.uniform(-0.5, 0.5)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    placed = (points * stretch * size) @ rotation.T + np.array(centre)
    return [tuple(p) for p in placed]


def _texture(kind: str, height: int, width: int, period: float, rng) -> np.ndarray:
    """A 0-1 pattern of (height, width): stripes, dots, checks, noise or plain, at a random
    orientation."""
    if kind == "plain":
        return np.zeros((height, width), np.float32)
    if kind == "noise":
        return _noise(rng, height, width, 2, channels=1)[..., 0]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    if kind == "striped":
        return ((u / period) % 1.0 < 0.5).astype(np.float32)
    if kind == "dotted":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return (du * du + dv * dv < (0.3 * period) ** 2).astype(np.float32)
    return (((u // period) + (v // period)) % 2).astype(np.float32)  # checked


def _noise(rng, height: int, width: int, octaves: int, channels: int = 3) -> np.ndarray:
    """Smooth multi-octave value noise in [0, 1], (height, width, channels)."""
    total = np.zeros((height, width, channels), np.float32)
    for octave in range(octaves):
        cells = 2 ** (octave + 1)
        grid = (rng.random((cells + 1, cells + 1, channels)) * 255).astype(np.uint8)
        image = Image.fromarray(grid.squeeze(-1) if channels == 1 else grid)
        up = np.asarray(image.resize((width, height), Image.BICUBIC), np.float32)
        total += up.reshape(height, width, channels) * 0.55**octave
    low, high = total.min(axis=(0, 1)), total.max(axis=(0, 1))
    return (total - low) / np.maximum(high - low, 1e-6)


def _colours(rng, count: int, saturation: float = 0.6) -> np.ndarray:
    """Random colours, pulled towards their grey by 1 - saturation (photos are rarely
    fully saturated)."""
    colours = rng.uniform(0, 255, (count, 3)).astype(np.float32)
    grey = colours.mean(axis=1, keepdims=True)
    return grey + saturation * (colours - grey)


def _paint(image: np.ndarray, polygon: list, kind: str, period: float, rng) -> None:
    """Fill `polygon` (anti-aliased) with two random colours mixed by a `kind` pattern and
    shaded across it; only its bounding box is touched."""
    height, width = image.shape[:2]
    xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
    left, top = max(0, int(min(xs)) - 2), max(0, int(min(ys)) - 2)
    right, bottom = min(width, int(max(xs)) + 3), min(height, int(max(ys)) + 3)
    if right <= left or bottom <= top:
        return
    box_h, box_w = bottom - top, right - left
    canvas = Image.new("L", (box_w, box_h), 0)
    ImageDraw.Draw(canvas).polygon([(x - left, y - top) for x, y in polygon], fill=255)
    soft = canvas.filter(ImageFilter.GaussianBlur(0.6))  # anti-aliased edges
    mask = np.asarray(soft, np.float32)[..., None] / 255.0
    pattern = _texture(kind, box_h, box_w, period, rng)[..., None]
    ink, paper = _colours(rng, 2)
    ramp = np.linspace(-1, 1, box_w, dtype=np.float32)[None, :, None] * rng.uniform(
        -0.25, 0.25
    ) + np.linspace(-1, 1, box_h, dtype=np.float32)[:, None, None] * rng.uniform(-0.25, 0.25)
    fill = (paper + (ink - paper) * pattern) * (1 + ramp)
    region = image[top:bottom, left:right]
    region += (fill - region) * mask


def _blob(height: int, width: int, size: float, rng) -> list:
    """An irregular polygon of 5-9 vertices at a random place (a distractor)."""
    k = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.4, 1.0, k)
    points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    centre = (rng.uniform(0, width), rng.uniform(0, height))
    return _place(points, centre, size, rng)


def render_scene(
    settings: SceneSettings, class_index: int, height: int, width: int, rng: np.random.Generator
) -> tuple[Image.Image, int]:
    """One scene and the JPEG quality to store it at."""
    short = min(height, width)
    low, high = _colours(rng, 2)
    image = low + (high - low) * _noise(rng, height, width, 4)
    for _ in range(int(rng.poisson(settings.clutter))):
        size = rng.uniform(0.04, 0.2) * short
        kind = str(rng.choice(["plain", "striped", "dotted", "checked", "noise"]))
        period = rng.uniform(0.15, 0.35) * size + 2
        _paint(image, _blob(height, width, size, rng), kind, period, rng)
    shape, texture = divmod(class_index, len(TEXTURE_NAMES))
    size = rng.uniform(settings.min_object, settings.max_object) * short / 2
    centre = (rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height)
    polygon = _place(_outline(SHAPE_NAMES[shape], rng), centre, size, rng)
    period = max(4.0, rng.uniform(0.35, 0.6) * size)  # 3-6 stripes across: visible at S=80
    _paint(image, polygon, TEXTURE_NAMES[texture], period, rng)
    if rng.random() < settings.occlusion:
        offset = rng.uniform(-1, 1, 2) * size
        hidden = (centre[0] + offset[0], centre[1] + offset[1])
        _paint(
            image,
            _place(_outline("disc", rng), hidden, rng.uniform(0.3, 0.6) * size, rng),
            "plain",
            1.0,
            rng,
        )
    light = 1 + _noise(rng, height, width, 1, channels=1) * rng.uniform(-0.5, 0.3)
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    image = image * light * cast + rng.normal(0, rng.uniform(1, 6), image.shape)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.9))))
    return picture, int(rng.integers(70, 96))
