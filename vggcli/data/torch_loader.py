"""The FFCV loader's batches, decoded by torchvision: `--decode gpu` and `--decode torch`.

On a CUDA machine the CPU's JPEG decode limits training. This loader reads each batch's
JPEG bytes straight from the .beton (`BetonImages.encoded`), decodes them with
`torchvision.io.decode_jpeg` (nvJPEG, one batched call, with `gpu`; libjpeg-turbo on the CPU
with `torch`, which is how the same code is tested without a GPU), and crops, resizes and
flips in torch on the decode device. Everything that decides *which* pixels a sample gets is
shared with the FFCV decoder: the sample order (`EpochOrder`), the per-sample keys and
windows (`image_key`, `crop_window`, flip iff `uniform(key, 3) < 0.5`) and the failure flags
(a JPEG that no longer decodes is flagged in `order.failed` and comes out black). What
differs, slightly: torchvision's IDCT is libjpeg's accurate one where FFCV asks for the fast
one; the whole image is decoded, where scheme 3's FFCV decoder decodes a training image at a
reduced DCT scale; and the window is resized with bilinear antialiasing, the closest of
torch's modes to OpenCV's INTER_AREA (measured in docs/train.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import closing
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from vggcli.data.beton import BetonImages
from vggcli.data.sampling import (
    EpochOrder,
    LoaderSpec,
    crop_window,
    epoch_key,
    image_key,
    mix64,
    uniform,
)

T = TypeVar("T")
U = TypeVar("U")
Batch = tuple[torch.Tensor, torch.Tensor, "torch.cuda.Event | None"]


@njit
def _windows(
    heights: np.ndarray,
    widths: np.ndarray,
    samples: np.ndarray,
    key: np.uint64,
    seed: np.uint64,
    crop: int,
    s_min: float,
    s_max: float,
    centre: bool,
    flips: bool,
) -> np.ndarray:
    out = np.empty((len(samples), 4), dtype=np.int64)
    for i in range(len(samples)):
        sample_key = image_key(key, seed, np.uint64(samples[i]))
        height, width = heights[samples[i]], widths[samples[i]]
        top, left, side, _ = crop_window(height, width, crop, s_min, s_max, centre, sample_key)
        flip = flips and uniform(sample_key, 3) < 0.5
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = top, left, side, flip
    return out


def batch_key(seed: int, epoch: int, samples: np.ndarray, scheme: int) -> np.uint64:
    """The key each sample's is hashed from, as the FFCV decoder makes it: the epoch's
    (schemes 2 and 3), or the micro-batch's sample ids' (scheme 1)."""
    # numba hands a uint64 back as a Python int: typed int64 on the way in unless wrapped
    if scheme >= 2:
        return np.uint64(epoch_key(np.uint64(seed), np.uint64(epoch)))
    key = np.uint64(mix64(np.uint64(seed)))
    for sample in samples:
        key = np.uint64(mix64(key ^ np.uint64(sample)))
    return key


def crop_resize(image: torch.Tensor, window: np.ndarray, crop: int) -> torch.Tensor:
    """The square window (top, left, side, flip) of a CHW uint8 image, resized to crop x crop
    and mirrored when flip says so; on the image's device."""
    top, left, side, flip = (int(v) for v in window)
    x = image[None, :, top : top + side, left : left + side].float()
    x = F.interpolate(x, size=(crop, crop), mode="bilinear", antialias=True, align_corners=False)
    out = x[0].round_().clamp_(0, 255).to(torch.uint8)
    return out.flip(-1) if flip else out


def made_ahead(make: Callable[[T], U], items: Sequence[T], ahead: int = 2) -> Iterator[U]:
    """make(item) for each item in order, the next `ahead` made in a background thread
    while the caller uses the current one; what is still pending is dropped when the caller
    stops early (max_steps ends an epoch in the middle)."""
    with ThreadPoolExecutor(1, thread_name_prefix="vgg-prefetch") as thread:
        pending = deque(thread.submit(make, item) for item in items[:ahead])
        try:
            for item in items[ahead:]:
                ready = pending.popleft().result()
                pending.append(thread.submit(make, item))
                yield ready
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class TorchLoader:
    """Iterated like FFCV's Loader: `order.start(epoch, offset)`, then one pass yields this
    rank's batches of that epoch (the last one short), as (uint8 NCHW channels_last images,
    int64 labels) on the training device."""

    def __init__(self, spec: LoaderSpec, order: EpochOrder, images: BetonImages) -> None:
        self.spec, self.order, self.images = spec, order, images
        self.device = torch.device(spec.device)
        self.decode_device = self.device if spec.decode == "gpu" else torch.device("cpu")
        # nvJPEG takes a batch in one call, on a side stream; the CPU decodes one by one on
        # `workers` threads (a test sets `batched` on the CPU to exercise the GPU's fallback)
        self.batched = self.decode_device.type == "cuda"
        self.stream = torch.cuda.Stream(self.decode_device) if self.batched else None
        shapes = np.array(images.shapes, dtype=np.int64).reshape(-1, 2)
        self.heights, self.widths = shapes[:, 0].copy(), shapes[:, 1].copy()

    def __len__(self) -> int:
        return -(-len(self.order.current) // self.spec.batch_size)

    def windows(self, samples: np.ndarray, epoch: int) -> np.ndarray:
        """(top, left, side, flip) per sample: the FFCV decoder's window and flip for it."""
        spec, ids = self.spec, np.ascontiguousarray(samples, dtype=np.uint64)
        key = batch_key(spec.seed, epoch, ids, spec.scheme)
        draw = (spec.crop, float(spec.s_min), float(spec.s_max), not spec.train)
        flips = spec.flip and spec.train
        seed = np.uint64(spec.seed)
        return _windows(self.heights, self.widths, ids, key, seed, *draw, flips)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples, epoch = self.order.current, int(self.order.epoch_cell[0])
        size = self.spec.batch_size
        batches = [samples[i : i + size] for i in range(0, len(samples), size)]
        with (
            ThreadPoolExecutor(max(1, self.spec.workers)) as pool,
            closing(made_ahead(lambda ids: self._batch(ids, epoch, pool), batches)) as ready,
        ):  # a pass stopped early closes the prefetch thread before the pool
            for batch in ready:
                yield self._delivered(batch)

    def _batch(self, samples: np.ndarray, epoch: int, pool: Executor) -> Batch:
        """One batch, made in the prefetch thread (on a side stream when decoding on the
        GPU, with an event the consumer waits for)."""
        if self.stream is None:
            return (*self._assembled(samples, epoch, pool), None)
        with torch.cuda.device(self.decode_device), torch.cuda.stream(self.stream):
            images, labels = self._assembled(samples, epoch, pool)
            labels = labels.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return images, labels, done

    def _assembled(
        self, samples: np.ndarray, epoch: int, pool: Executor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        windows = self.windows(samples, epoch)
        decoded = self._decoded(samples, pool)
        each = pool.map if self.stream is None else map  # the GPU: queued in this thread
        crops = list(each(crop_resize, decoded, windows, [self.spec.crop] * len(decoded)))
        images = torch.stack(crops).contiguous(memory_format=torch.channels_last)
        labels = torch.from_numpy(self.images.labels[samples.astype(np.int64)])
        if self.device.type == "cuda":
            labels = labels.pin_memory()
        return images, labels

    def _delivered(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, done = batch
        if done is not None:  # made on the side stream: wait for it, and keep its memory
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            images.record_stream(current)
            labels.record_stream(current)
            return images, labels
        if self.device.type == "cuda":  # decoded on the CPU for a GPU run
            images = images.pin_memory().to(self.device, non_blocking=True)
            return images, labels.to(self.device, non_blocking=True)
        return images, labels

    # -- decoding ---------------------------------------------------------------------
    def _decoded(self, samples: np.ndarray, pool: Executor) -> list[torch.Tensor]:
        """Each sample's whole image, CHW uint8 on the decode device. On the GPU the JPEGs
        go to nvJPEG in one call; one bad JPEG fails the whole call, and then they are
        decoded one by one, so that only the bad ones are flagged (and black)."""
        ids = [int(s) for s in samples]
        stored = [(self.images.is_jpeg(i), self.images.encoded(i)) for i in ids]
        if self.batched:
            try:
                return self._batched(ids, stored)
            except RuntimeError:
                return [self._one(i, s) for i, s in zip(ids, stored, strict=True)]
        return list(pool.map(self._one, ids, stored))

    def _batched(self, ids: list[int], stored: list[tuple[bool, np.ndarray]]) -> list[torch.Tensor]:
        """One nvJPEG call for the batch's JPEGs; RuntimeError if any fails."""
        from torchvision.io import ImageReadMode, decode_jpeg

        jpegs = [torch.from_numpy(data) for jpeg, data in stored if jpeg]
        rgb, device = ImageReadMode.RGB, self.decode_device
        decoded = iter(decode_jpeg(jpegs, mode=rgb, device=device) if jpegs else [])
        out = []
        for i, (jpeg, data) in zip(ids, stored, strict=True):
            out.append(next(decoded) if jpeg else self._raw(i, data))
            if not self._fits(i, out[-1]):
                raise RuntimeError(f"sample {i} decoded to another size than stored")
        return out

    def _one(self, sample: int, stored: tuple[bool, np.ndarray]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        jpeg, data = stored
        if not jpeg:
            return self._raw(sample, data)
        try:
            image = decode_jpeg(
                torch.from_numpy(data), mode=ImageReadMode.RGB, device=self.decode_device
            )
        except torch.OutOfMemoryError:
            raise  # a RuntimeError too, but no fault of the image's
        except RuntimeError:
            return self._failed(sample)
        return image if self._fits(sample, image) else self._failed(sample)

    def _fits(self, sample: int, image: torch.Tensor) -> bool:
        """The decoded size is the stored one (the windows were drawn for that)."""
        return tuple(image.shape[1:]) == (self.heights[sample], self.widths[sample])

    def _raw(self, sample: int, data: np.ndarray) -> torch.Tensor:
        """A raw sample's height * width * 3 bytes as a CHW image."""
        shape = (int(self.heights[sample]), int(self.widths[sample]), 3)
        pixels = torch.from_numpy(data[: shape[0] * shape[1] * 3]).view(shape)
        return pixels.permute(2, 0, 1).to(self.decode_device)

    def _failed(self, sample: int) -> torch.Tensor:
        """Flag a JPEG that no longer decodes and stand a black image in for it, as the FFCV
        decoder does (beton.check_decodes fails the run when too many are flagged)."""
        self.order.failed[sample] = 1
        shape = (3, int(self.heights[sample]), int(self.widths[sample]))
        return torch.zeros(shape, dtype=torch.uint8, device=self.decode_device)


def make_torch_loader(spec: LoaderSpec) -> tuple[TorchLoader, EpochOrder]:
    """`make_loader` for decode torch or gpu: the same order, keys and batches as FFCV's."""
    images = BetonImages(spec.beton)
    order = EpochOrder(
        len(images),
        spec.seed,
        spec.global_batch or spec.batch_size,
        spec.train,
        spec.rank,
        spec.world_size,
    )
    return TorchLoader(spec, order, images), order
