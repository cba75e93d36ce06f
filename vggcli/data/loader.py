"""FFCV loaders with the paper's training augmentation, compiled and reproducible.

Training (Sect. 3.1): rescale isotropically so the smallest side is S (S drawn per image,
uniformly from [S_min, S_max] for scale jitter), take a random crop, flip half of them.
"Smallest side to S, then a crop of c" is a square window of side c * min(h, w) / S at a
random position, resized to c: one INTER_AREA resize per image inside FFCV's decoder.

FFCV draws its random numbers from numba's per-thread generator, seeded by the OS, so its
crops cannot be reproduced. Ours come from a counter-based hash of (seed, the batch's sample
ids, sample id). The batch composition is itself fixed by (seed, epoch) because we own the
sample order (`EpochOrder`), so a resumed run sees exactly the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import Squeeze, ToTensor, ToTorchImage
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a bijective, well-mixed hash of 64 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(inline="always")
def uniform(key: np.uint64, k: int) -> float:
    """The k-th uniform number in [0, 1) of a key."""
    return float(mix64(key + np.uint64(k + 1) * GOLDEN) >> np.uint64(11)) / 9007199254740992.0


@njit
def crop_window(
    height: int, width: int, crop: int, s_min: float, s_max: float, centre: bool, key: np.uint64
) -> tuple[int, int, int, int]:
    """(top, left, side, scale): the square window that becomes the crop."""
    short = min(height, width)
    scale = s_min + uniform(key, 0) * (s_max - s_min)
    side = max(1, min(short, int(round(crop * short / scale))))
    if centre:
        return (height - side) // 2, (width - side) // 2, side, int(round(scale))
    top = min(height - side, int(uniform(key, 1) * (height - side + 1)))
    left = min(width - side, int(uniform(key, 2) * (width - side + 1)))
    return top, left, side, int(round(scale))


@njit
def flip_in_place(image: np.ndarray) -> None:
    width = image.shape[1]
    for r in range(image.shape[0]):
        for c in range(width // 2):
            for ch in range(3):
                tmp = image[r, c, ch]
                image[r, c, ch] = image[r, width - 1 - c, ch]
                image[r, width - 1 - c, ch] = tmp


class ScaleCropDecoder(ResizedCropRGBImageDecoder):
    """Decode, rescale to smallest side S (fixed or jittered), crop, maybe flip: in one pass.

    `centre=True` gives the validation crop (centre, no flip) at S = s_min = s_max.
    """

    def __init__(self, crop: int, s_min: float, s_max: float, seed: int, centre: bool) -> None:
        super().__init__((crop, crop))
        self.crop, self.s_min, self.s_max = crop, float(s_min), float(s_max)
        self.seed, self.centre = seed, centre

    @property
    def get_crop_generator(self):  # type: ignore[override]  # unused: generate_code is ours
        raise NotImplementedError

    def generate_code(self):  # type: ignore[no-untyped-def]
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        crop, s_min, s_max, centre = self.crop, self.s_min, self.s_max, self.centre
        seed = np.uint64(self.seed)

        def decode(batch_indices, my_storage, metadata, storage_state):  # type: ignore[no-untyped-def]
            destination, temp_storage = my_storage
            batch_key = mix64(seed)
            for k in range(len(batch_indices)):
                batch_key = mix64(batch_key ^ np.uint64(batch_indices[k]))
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.int64(field["height"]), np.int64(field["width"])
                if field["mode"] == jpg:
                    temp_buffer = temp_storage[dst_ix]
                    imdecode_c(
                        image_data,
                        temp_buffer,
                        height,
                        width,
                        height,
                        width,
                        0,
                        0,
                        1,
                        1,
                        False,
                        False,
                    )
                    temp_buffer = temp_buffer.reshape(-1)[: 3 * height * width]
                    temp_buffer = temp_buffer.reshape(height, width, 3)
                else:
                    temp_buffer = image_data.reshape(height, width, 3)
                key = mix64(batch_key ^ mix64(np.uint64(source_ix) + seed))
                top, left, side, _ = crop_window(height, width, crop, s_min, s_max, centre, key)
                resize_crop_c(temp_buffer, top, top + side, left, left + side, destination[dst_ix])
                if not centre and uniform(key, 3) < 0.5:
                    flip_in_place(destination[dst_ix])
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode


class EpochOrder:
    """The sample order, owned by us: a permutation per (seed, epoch), cut to whole batches,
    and a start offset for resuming in the middle of an epoch. Stands in for FFCV's
    TraversalOrder (only `sample_order` is called)."""

    def __init__(self, num_samples: int, seed: int, batch_size: int, shuffle: bool) -> None:
        self.num_samples, self.seed = num_samples, seed
        self.batch_size, self.shuffle = batch_size, shuffle
        self.current = self.epoch_indices(0)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.uint64)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        keep = self.num_samples // self.batch_size * self.batch_size
        return order[:keep].astype(np.uint64)

    def start(self, epoch: int, offset: int = 0) -> int:
        """Make the next pass over the loader cover `epoch` from sample `offset`; returns the
        number of samples that pass will yield."""
        self.current = self.epoch_indices(epoch)[offset:]
        return len(self.current)

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.current


@dataclass(frozen=True)
class LoaderSpec:
    beton: Path
    batch_size: int
    crop: int
    s_min: float
    s_max: float
    seed: int
    train: bool
    workers: int


def make_loader(spec: LoaderSpec) -> tuple[Loader, EpochOrder]:
    """An FFCV loader yielding (uint8 NCHW channels_last images, int64 labels)."""
    decoder = ScaleCropDecoder(spec.crop, spec.s_min, spec.s_max, spec.seed, centre=not spec.train)
    loader = Loader(
        str(spec.beton),
        batch_size=spec.batch_size,
        num_workers=spec.workers,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,  # EpochOrder already cut the epoch to whole effective batches
        os_cache=True,
        batches_ahead=2,
        pipelines={
            "image": [decoder, ToTensor(), ToTorchImage(channels_last=True)],
            "label": [IntDecoder(), ToTensor(), Squeeze(-1)],
        },
    )
    num_samples = int(loader.reader.num_samples)
    order = EpochOrder(num_samples, spec.seed, spec.batch_size, shuffle=spec.train)
    loader.traversal_order = order  # type: ignore[assignment]
    return loader, order


class ColourShift:
    """AlexNet-style PCA colour augmentation, in torch on the device, on 0-255 RGB (the model
    subtracts its mean itself).

    Each image gets sum_i alpha_i * sqrt(lambda_i) * p_i added to every pixel, alpha_i ~
    N(0, sigma^2); (lambda_i, p_i) are the eigenpairs of the training RGB covariance that
    preprocess stored. sqrt(lambda) (the standard deviation along p_i) follows the common
    ImageNet implementations; with sigma = 0.1 the shift is a few grey levels.
    """

    def __init__(self, stats: dict, sigma: float, device: torch.device) -> None:
        vectors = torch.tensor(stats["eigenvectors"], device=device)  # rows are eigenvectors
        stds = torch.tensor(stats["eigenvalues"], device=device).clamp(min=0).sqrt()
        self.basis = vectors.T * stds  # column i = sqrt(lambda_i) p_i
        self.sigma = sigma

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = images.float()
        if generator is not None and self.sigma > 0:
            alpha = torch.randn(len(x), 3, generator=generator) * self.sigma
            x = x + (alpha.to(x.device) @ self.basis.T).view(-1, 3, 1, 1)
        return x.contiguous(memory_format=torch.channels_last)
