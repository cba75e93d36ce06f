"""Evaluation (Sect. 3.2): dense, multi-crop and multi-scale, with horizontal flips.

Every image is rescaled isotropically so its smallest side is Q. Dense: the net runs fully
convolutionally on the whole image, the class score map is averaged spatially, and the softmax
posteriors of the image and its mirror are averaged. Multi-crop: a regular 5x5 grid of crops
and their mirrors, 50 views per scale, softmax averaged. Scales and methods are combined by
averaging posteriors. `centre` is the training-time validation (one centre crop, no flip).

Each batch's input (decode, rescale, views) is prepared in background threads while the
model runs on the batch before it (`prepared_ahead`): libjpeg-turbo, OpenCV and numpy's copies
release the GIL, so on a GPU the input no longer waits for the model nor the model for it.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

import cv2
import numpy as np
import torch

from vggcli.device import autocast, available_cores
from vggcli.eval_settings import EvalSettings, Mode
from vggcli.fuse import average
from vggcli.models import VGG

GRID = 5
CROP_BATCH = 4  # images per multi-crop batch: 200 views with mirrors
B = TypeVar("B")
P = TypeVar("P")


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
    out = np.empty(((1 + flip) * GRID * GRID, crop, crop, 3), dtype=np.uint8)
    _fill_crops(image, crop, flip, out)
    return out


def _fill_crops(image: np.ndarray, crop: int, flip: bool, out: np.ndarray) -> None:
    """crop_views written into `out`: each view copied once, straight into the batch."""
    height, width = image.shape[:2]
    windows = [(t, s) for t in grid_offsets(height, crop) for s in grid_offsets(width, crop)]
    for k, (top, left) in enumerate(windows):
        out[k] = image[top : top + crop, left : left + crop]
        if flip:
            out[len(windows) + k] = out[k, :, ::-1]


def centre_view(image: np.ndarray, crop: int, q: int, out: np.ndarray | None = None) -> np.ndarray:
    """Training-time validation: the centre window of side crop*short/Q resized to the crop,
    by the training loader's own window arithmetic and FFCV resize call, so that the pixels
    are exactly the ones training validated on. (1, crop, crop, 3), written into `out`
    (crop, crop, 3) when given."""
    from ffcv.libffcv import resize_crop

    from vggcli.data.sampling import crop_window

    height, width = image.shape[:2]
    top, left, side, _ = crop_window(height, width, crop, q, q, True, np.uint64(0))
    out = np.empty((crop, crop, 3), dtype=np.uint8) if out is None else out
    resize_crop(np.ascontiguousarray(image), top, top + side, left, left + side, out)
    return out[None]


def with_mirrors(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) images, then their mirrors: the dense input of one batch."""
    return np.concatenate([images, images[:, :, ::-1]])


class Evaluator:
    """Feeds views to a trained net and returns softmax posteriors. `workers` threads
    prepare the next batches' input meanwhile (0: in this thread; default `decode_workers`)."""

    def __init__(
        self,
        model: VGG,
        settings: EvalSettings,
        device: torch.device,
        workers: int | None = None,
    ) -> None:
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.settings, self.device = settings, device
        self.workers = decode_workers(device) if workers is None else workers

    @torch.no_grad()
    def posteriors(self, x: torch.Tensor, dense: bool) -> torch.Tensor:
        """Softmax over classes of a `to_tensor` batch; dense runs score maps over whole
        images."""
        with autocast(self.device, self.settings.precision):
            logits = self.model.score_map(x).mean(dim=(2, 3)) if dense else self.model(x)
        return torch.softmax(logits.float(), dim=1).cpu()

    def dense(self, images: np.ndarray) -> np.ndarray:
        """Same-size rescaled images (N, H, W, 3): mean of image and mirror posteriors
        (the image's alone when the settings say no flip)."""
        views = with_mirrors(images) if self.settings.flip else images
        return self.dense_mean(to_tensor(views, self.device))

    def dense_mean(self, x: torch.Tensor) -> np.ndarray:
        """Whole images, followed by their mirrors when the settings flip: each image's
        posteriors averaged with its mirror's."""
        probs = self.posteriors(x, True)
        if not self.settings.flip:
            return probs.numpy()
        half = len(probs) // 2
        return ((probs[:half] + probs[half:]) / 2).numpy()

    def views(self, views: np.ndarray, per_image: int) -> np.ndarray:
        """Crop-sized views, `per_image` consecutive views per image: their mean posterior."""
        return self.views_mean(to_tensor(views, self.device), per_image)

    def views_mean(self, x: torch.Tensor, per_image: int) -> np.ndarray:
        """`views` on a `to_tensor` batch (at most 256 views per forward pass)."""
        chunks = [self.posteriors(x[i : i + 256], False) for i in range(0, len(x), 256)]
        return torch.cat(chunks).view(-1, per_image, chunks[0].shape[1]).mean(1).numpy()

    def compute(self, method: Mode, x: torch.Tensor) -> np.ndarray:
        """Posteriors of one batch prepared by `batch_input` for `method`, one row per image."""
        if method == Mode.DENSE:
            return self.dense_mean(x)
        per_image = (1 + self.settings.flip) * GRID * GRID if method == Mode.CROP else 1
        return self.views_mean(x, per_image)


def decode_workers(device: torch.device) -> int:
    """Threads preparing input beside the model. On a CPU one: the model's threads hold every
    core and input is a few percent of the work (docs/performance.md measures 1 against 2);
    on a GPU every core but the one driving it, at most 8, as the GPU outruns one decoder."""
    return 1 if device.type == "cpu" else max(1, min(8, available_cores() - 1))


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


def method_batches(
    shapes: Sequence[tuple[int, int]], method: Mode, q: int, batch: int
) -> list[list[int]]:
    """The batches of one method at one scale, the same whatever the world size: dense by
    rescaled size, multi-crop 4 images (200 views), centre `batch` images, in index order."""
    if method == Mode.DENSE:
        return list(size_groups(shapes, q, batch))
    per = CROP_BATCH if method == Mode.CROP else batch
    return [list(range(i, min(i + per, len(shapes)))) for i in range(0, len(shapes), per)]


def batch_input(
    images: Images, method: Mode, q: int, settings: EvalSettings
) -> Callable[[list[int]], np.ndarray]:
    """indices -> one batch's uint8 views (N, H, W, 3), each pixel copied once into an array
    allocated for the whole batch: what `Evaluator.compute` takes (through `to_tensor`).
    Thread-safe, so that `prepared_ahead` can run it beside the model."""

    def dense(indices: list[int]) -> np.ndarray:
        height, width = rescaled_size(*images.shapes[indices[0]], q)  # the whole batch's
        count = len(indices)
        out = np.empty(((1 + settings.flip) * count, height, width, 3), dtype=np.uint8)
        for row, index in enumerate(indices):
            out[row] = rescale(images[index], q)
            if settings.flip:
                out[count + row] = out[row, :, ::-1]
        return out

    def crop(indices: list[int]) -> np.ndarray:
        per = (1 + settings.flip) * GRID * GRID
        out = np.empty((len(indices) * per, settings.crop, settings.crop, 3), dtype=np.uint8)
        for row, index in enumerate(indices):
            views = out[row * per : (row + 1) * per]
            _fill_crops(rescale(images[index], q), settings.crop, settings.flip, views)
        return out

    def centre(indices: list[int]) -> np.ndarray:
        out = np.empty((len(indices), settings.crop, settings.crop, 3), dtype=np.uint8)
        for row, index in enumerate(indices):
            centre_view(images[index], settings.crop, q, out[row])
        return out

    return {Mode.DENSE: dense, Mode.CROP: crop, Mode.CENTRE: centre}[method]


def prepared_ahead(
    batches: Sequence[B], prepare: Callable[[B], P], workers: int
) -> Iterator[tuple[B, P]]:
    """(batch, prepare(batch)) in order, the next batches prepared by `workers` background
    threads while the caller computes on this one (at most workers + 1 batches ahead, so
    memory stays a few batches); 0 workers: each prepared in the calling thread when asked.
    An error in `prepare` is raised here, at its batch."""
    if workers == 0:
        yield from ((batch, prepare(batch)) for batch in batches)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vgg-input")
    todo = iter(batches)
    pending: deque[tuple[B, Future[P]]] = deque()
    try:
        for batch in itertools.islice(todo, workers + 1):
            pending.append((batch, pool.submit(prepare, batch)))
        while pending:
            batch, future = pending.popleft()
            for following in itertools.islice(todo, 1):
                pending.append((following, pool.submit(prepare, following)))
            yield batch, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
    would (`assemble` puts them back in .beton order). The input of the next batches is
    prepared while the model runs (`prepared_ahead`)."""
    settings = evaluator.settings
    mine = method_batches(images.shapes, method, q, settings.batch)[rank::world_size]
    prepare = batch_input(images, method, q, settings)
    done, rows = [], []
    for indices, views in prepared_ahead(mine, prepare, evaluator.workers):
        rows.append(evaluator.compute(method, to_tensor(views, evaluator.device)))
        done += indices
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
