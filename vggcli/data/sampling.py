"""What both training loaders draw the same way: the sample order and the per-image keys.

FFCV's compiled decoder (loader.py) and the torch decoder (torch_loader.py) take their
order from `EpochOrder` and their random draws (scale, crop position, flip) from the same
counter-based hash (`mix64`, keyed by seed, epoch and sample id: see loader.py's docstring),
so a run gives the same crops whichever decodes it. Both loaders import this module; neither
imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from vggcli.config import SCHEME, check_decode

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
def epoch_key(seed: np.uint64, epoch: np.uint64) -> np.uint64:
    return mix64(seed + mix64(epoch + GOLDEN))


@njit
def image_key(key: np.uint64, seed: np.uint64, sample: np.uint64) -> np.uint64:
    """Schemes 2 and 3: `key` is the epoch's; scheme 1: the micro-batch's."""
    return mix64(key ^ mix64(sample + seed))


class EpochOrder:
    """The sample order, owned by us. Training: a permutation per (seed, epoch) cut to whole
    global batches, of which this rank takes its contiguous slice of each; validation: the
    images in order, split into one contiguous share per rank. A start offset (in samples of
    the global order, always whole global batches) resumes in the middle of an epoch. Stands
    in for FFCV's TraversalOrder (only `sample_order` is called)."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        global_batch: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        epoch_cell: np.ndarray | None = None,
        failed: np.ndarray | None = None,
    ) -> None:
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.epoch_cell = epoch_cell if epoch_cell is not None else np.zeros(1, np.uint64)
        self.failed = failed if failed is not None else np.zeros(num_samples, np.uint8)
        self.current = self.rank_indices(0)

    def failed_decodes(self) -> int:
        """Images of this order's dataset the decoder refused so far (flags it sets)."""
        return int(self.failed.sum())

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The whole epoch, every rank's samples, in global order."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.uint64)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        keep = self.num_samples // self.global_batch * self.global_batch
        return order[:keep].astype(np.uint64)

    def rank_indices(self, epoch: int, offset: int = 0) -> np.ndarray:
        """This rank's samples from `offset` on, in the order it sees them."""
        order = self.epoch_indices(epoch)[offset:]
        if not self.shuffle:
            return np.array_split(order, self.world_size)[self.rank]
        share = self.global_batch // self.world_size
        batches = order.reshape(-1, self.global_batch)
        return batches[:, self.rank * share : (self.rank + 1) * share].reshape(-1)

    def start(self, epoch: int, offset: int = 0) -> int:
        """Make the next pass over the loader cover `epoch` from global sample `offset`;
        returns the number of samples this rank's pass will yield."""
        self.epoch_cell[0], self.current = epoch, self.rank_indices(epoch, offset)
        return len(self.current)

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.current


@dataclass(frozen=True)
class LoaderSpec:
    beton: Path
    batch_size: int  # images per pass of this rank (a micro-batch)
    crop: int
    s_min: float
    s_max: float
    seed: int
    train: bool
    workers: int
    global_batch: int = 0  # images per optimizer step over all ranks (0: batch_size)
    rank: int = 0
    world_size: int = 1
    scheme: int = SCHEME
    device: str = "cpu"  # cuda: batches go to the GPU from pinned memory, asynchronously
    flip: bool = True  # training: mirror half the crops (the paper's)
    decode: str = "ffcv"  # one of DECODES

    def __post_init__(self) -> None:
        check_decode(self.decode, self.device)
