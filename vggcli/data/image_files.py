"""Image files a user points a command at (`vgg predict`, `vgg features`), as the net sees them.

JPEG or PNG (or any image PIL reads), in any mode (CMYK, grayscale, palette, RGBA), becomes
HxWx3 uint8 RGB, turned upright by its EXIF orientation first: a phone stores a portrait
photo sideways with a tag that says so, and what the user saw is the upright image. (The
dataset path, images.py, stores ILSVRC's pixels as they are and applies no tag.)

Every file is decoded once before any compute, so a bad one fails the command at once and by
name; only its size is kept, and the pixels are decoded again when the net needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vggcli.errors import VggError

SUFFIXES = (".jpg", ".jpeg", ".png")  # what a folder is searched for, in any case


def read_rgb(path: Path) -> np.ndarray:
    """The upright image as (H, W, 3) uint8 RGB; a one-line VggError naming the file when it
    is missing, not an image, or does not decode."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)  # a decoded copy, rotated when tagged
    except FileNotFoundError:
        raise VggError(f"{path}: no such file") from None
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBomb...
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise VggError(f"{path}: not a readable image ({why})") from None
    if upright.mode == "P" and "transparency" in upright.info:
        upright = upright.convert("RGBA")  # what PIL asks for before dropping the alpha
    return np.ascontiguousarray(np.asarray(upright.convert("RGB"), dtype=np.uint8))


def expand(inputs: Sequence[Path]) -> list[Path]:
    """Files as given; folders replaced by the JPEG and PNG files anywhere below them, in
    sorted order, hidden files and folders (.DS_Store, ._x.jpg, .cache/) left out."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if _wanted(p, path))
            if not files:
                raise VggError(f"{path}: no {'/'.join(SUFFIXES)} files in this folder or below")
            found += files
        elif path.exists():
            found.append(path)
        else:
            raise VggError(f"{path}: no such file or folder")
    if not found:
        raise VggError("no images given")
    return found


def _wanted(path: Path, folder: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
    return path.suffix.lower() in SUFFIXES and not hidden and path.is_file()


class ImageFiles:
    """Images read from files on demand (what evaluation and description read: `shapes`,
    `len`, indexing), each decoded once when opened so that every bad file is found first."""

    def __init__(self, paths: Sequence[Path], advance: Callable[[int], None] = lambda n: None):
        self.paths = list(paths)
        self.shapes: list[tuple[int, int]] = []
        for path in self.paths:
            height, width, _ = read_rgb(path).shape
            self.shapes.append((height, width))
            advance(1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        image = read_rgb(self.paths[index])
        if image.shape[:2] != self.shapes[index]:
            raise VggError(f"{self.paths[index]} changed while it was being read", exit_code=1)
        return image
