"""`make-demo-data --style photos`: patches of real photographs, so that a recipe tuned on
small data meets real image statistics (edges, textures, noise, colour as cameras record
them), not only drawn shapes.

One class per photograph that scikit-image's wheel ships (nothing is downloaded). Each image
is a patch at a random scale and position, resized to the image size the spec draws.
Training patches come from the left 70% of the photograph and validation patches from the
right 30%, so a validation image is never a crop of a training image. Mirroring keeps the
class.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from vggcli.errors import VggError

# ten photographs (the demo sets' class limit), as distinct as the wheel's collection allows
PHOTOS = ("astronaut", "brick", "chelsea", "coffee", "grass", "gravel", "hubble_deep_field",
          "immunohistochemistry", "retina", "rocket")
TRAIN_SHARE = 0.7  # of each photograph's width, from the left
SMALLEST_PATCH = 0.35  # of the largest patch that fits the region


@functools.cache
def photograph(name: str) -> np.ndarray:
    """A photograph from scikit-image's data, as HxWx3 uint8 RGB (grey ones repeated)."""
    try:
        from skimage import data
    except ImportError:
        raise VggError("--style photos needs scikit-image: pip install 'vgg[photos]'",
                       field="style") from None
    image = getattr(data, name)()
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]


def window(split: str, shape: tuple[int, int], height: int, width: int,
           rng: np.random.Generator) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom) of a patch with the image's aspect ratio, inside
    the split's region of a photograph of `shape` (rows, columns)."""
    rows, columns = shape
    cut = columns * TRAIN_SHARE
    left, right = (0.0, cut) if split == "train" else (cut, float(columns))
    aspect = width / height
    largest = min(float(rows), (right - left) / aspect)  # the tallest patch that fits
    patch_height = largest * rng.uniform(SMALLEST_PATCH, 1.0)
    patch_width = patch_height * aspect
    x = left + rng.uniform(0, right - left - patch_width)
    y = rng.uniform(0, rows - patch_height)
    return x, y, x + patch_width, y + patch_height


def render_photo(class_index: int, split: str, height: int, width: int,
                 rng: np.random.Generator) -> Image.Image:
    """A height x width patch of the class's photograph, from the split's region."""
    photo = photograph(PHOTOS[class_index])
    box = window(split, photo.shape[:2], height, width, rng)
    return Image.fromarray(photo).resize((width, height), Image.BICUBIC, box=box)
