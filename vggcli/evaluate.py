"""Evaluation (Sect. 3.2): dense, multi-crop and multi-scale, with horizontal flips.

Every image is rescaled isotropically so its smallest side is Q. Dense: the net runs fully
convolutionally on the whole image, the class score map is averaged spatially, and the softmax
posteriors of the image and its mirror are averaged. Multi-crop: a regular 5x5 grid of crops
and their mirrors, 50 views per scale, softmax averaged. Scales and methods are combined by
averaging posteriors. `centre` is the training-time validation (one centre crop, no flip).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np
import torch

from vggcli.device import autocast
from vggcli.eval_settings import EvalSettings, Mode
from vggcli.fuse import average
from vggcli.models import VGG

GRID = 5


class Images(Protocol):
    """What evaluation reads: a .beton's images (BetonImages) or a few files (`vgg predict`)."""

    shapes: list[tuple[int, int]]  # (height, width) of each image

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def rescaled_size(height: int, width: int, q: int) -> tuple[int, int]:
    """(height, width) with the smallest side exactly Q, aspect ratio kept."""
    short = min(height, width)
    return (
        (q, max(q, round(width * q / short)))
        if height == short
        else (max(q, round(height * q / short)), q)
    )


def rescale(image: np.ndarray, q: int) -> np.ndarray:
    height, width = rescaled_size(*image.shape[:2], q)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def grid_offsets(length: int, crop: int, count: int = GRID) -> list[int]:
    """`count` crop origins evenly spaced from one border to the other."""
    return [round(v) for v in np.linspace(0, length - crop, count)]


def crop_views(image: np.ndarray, crop: int, flip: bool = True) -> np.ndarray:
    """The 5x5 grid of crops of a rescaled image and their mirrors: (50, crop, crop, 3);
    without `flip`, the 25 crops alone."""
    height, width = image.shape[:2]
    crops = [
        image[t : t + crop, s : s + crop]
        for t in grid_offsets(height, crop)
        for s in grid_offsets(width, crop)
    ]
    stacked = np.stack(crops)
    return np.concatenate([stacked, stacked[:, :, ::-1]]) if flip else stacked


def centre_view(image: np.ndarray, crop: int, q: int) -> np.ndarray:
    """Training-time validation: the centre window of side crop*short/Q resized to the crop,
    by the training loader's own window arithmetic and FFCV resize call, so that the pixels
    are exactly the ones training validated on."""
    from ffcv.libffcv import resize_crop

    from vggcli.data.loader import crop_window

    height, width = image.shape[:2]
    top, left, side, _ = crop_window(height, width, crop, q, q, True, np.uint64(0))
    out = np.empty((crop, crop, 3), dtype=np.uint8)
    resize_crop(np.ascontiguousarray(image), top, top + side, left, left + side, out)
    return out[None]


class Evaluator:
    """Feeds views to a trained net and returns softmax posteriors."""

    def __init__(self, model: VGG, settings: EvalSettings, device: torch.device) -> None:
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.settings, self.device = settings, device

    @torch.no_grad()
    def posteriors(self, images: np.ndarray, dense: bool) -> torch.Tensor:
        """Softmax over classes; dense runs score maps over whole images."""
        with autocast(self.device, self.settings.precision):
            x = to_tensor(images, self.device)
            logits = self.model.score_map(x).mean(dim=(2, 3)) if dense else self.model(x)
        return torch.softmax(logits.float(), dim=1).cpu()

    def dense(self, images: np.ndarray) -> np.ndarray:
        """Same-size rescaled images (N, H, W, 3): mean of image and mirror posteriors
        (the image's alone when the settings say no flip)."""
        if not self.settings.flip:
            return self.posteriors(images, True).numpy()
        both = self.posteriors(np.concatenate([images, images[:, :, ::-1]]), True)
        return ((both[: len(images)] + both[len(images) :]) / 2).numpy()

    def views(self, views: np.ndarray, per_image: int) -> np.ndarray:
        """Crop-sized views, `per_image` consecutive views per image: their mean posterior."""
        chunks = [self.posteriors(views[i : i + 256], False) for i in range(0, len(views), 256)]
        return torch.cat(chunks).view(-1, per_image, chunks[0].shape[1]).mean(1).numpy()


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) 0-255 RGB as the model takes it (it subtracts its own mean)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)


def size_groups(shapes: Sequence[tuple[int, int]], q: int, batch: int) -> Iterator[list[int]]:
    """Indices grouped by rescaled size, so whole images batch without padding."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, (height, width) in enumerate(shapes):
        groups[rescaled_size(height, width, q)].append(index)
    for members in groups.values():
        for start in range(0, len(members), batch):
            yield members[start : start + batch]


def evaluate_method(
    evaluator: Evaluator,
    images: Images,
    method: Mode,
    q: int,
    advance: Callable[[int], None],
    rank: int = 0,
    world_size: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, posteriors) of one method at one scale. The batches are the same whatever
    the world size, and rank r takes every world_size-th of them from the r-th, so the
    ranks together cover every image exactly once, each computed exactly as one process
    would (`assemble` puts them back in .beton order)."""
    settings = evaluator.settings
    if method == Mode.DENSE:
        batches = list(size_groups(images.shapes, q, settings.batch))
    else:
        per = 4 if method == Mode.CROP else settings.batch  # 4 images = 200 crop views
        batches = [list(range(i, min(i + per, len(images)))) for i in range(0, len(images), per)]
    done, rows = [], []
    for indices in batches[rank::world_size]:
        if method == Mode.DENSE:
            result = evaluator.dense(np.stack([rescale(images[i], q) for i in indices]))
        elif method == Mode.CROP:
            views = np.concatenate(
                [crop_views(rescale(images[i], q), settings.crop, settings.flip) for i in indices]
            )
            result = evaluator.views(views, (1 + settings.flip) * GRID * GRID)
        else:
            views = np.concatenate([centre_view(images[i], settings.crop, q) for i in indices])
            result = evaluator.views(views, 1)
        done += indices
        rows.append(result)
        advance(len(indices) * world_size)
    classes = evaluator.model.spec.num_classes
    stacked = np.concatenate(rows) if rows else np.zeros((0, classes), dtype=np.float32)
    return np.array(done, dtype=np.int64), stacked.astype(np.float32)


def assemble(parts: list[tuple[np.ndarray, np.ndarray]], num_images: int) -> np.ndarray:
    """(N, classes) posteriors in .beton order from every rank's (indices, posteriors);
    an image covered twice or never is an error, not a silent average."""
    indices = np.concatenate([i for i, _ in parts])
    if len(indices) != num_images or len(np.unique(indices)) != num_images:
        raise RuntimeError(f"ranks covered {len(np.unique(indices))} of {num_images} images")
    out = np.zeros((num_images, parts[0][1].shape[1]), dtype=np.float32)
    for done, rows in parts:
        out[done] = rows
    return out


def by_method(
    settings: EvalSettings, per_scale: dict[tuple[Mode, int], np.ndarray]
) -> dict[Mode, np.ndarray]:
    """Posteriors averaged over the scales of each method, and over dense and crop for
    dense+crop (Sect. 3.6): what `vgg evaluate` scores and `vgg predict` ranks."""
    per_method = {
        method: average([per_scale[(method, q)] for q in settings.scales])
        for method in settings.methods()
    }
    if settings.mode == Mode.DENSE_CROP:
        per_method[Mode.DENSE_CROP] = average([per_method[Mode.DENSE], per_method[Mode.CROP]])
    return per_method
