"""FFCV loaders with the paper's training augmentation, compiled and reproducible.

Training (Sect. 3.1): rescale isotropically so the smallest side is S (S drawn per image,
uniformly from [S_min, S_max] for scale jitter), take a random crop, flip half of them.
"Smallest side to S, then a crop of c" is a square window of side c * min(h, w) / S at a
random position, resized to c: one INTER_AREA resize per image inside FFCV's decoder.

FFCV draws its random numbers from numba's per-thread generator, seeded by the OS, so its
crops cannot be reproduced. Ours come from a counter-based hash: augmentation scheme 2 keys
every per-image draw (scale, crop, flip, and the colour shift in `colour_alphas`) by (seed,
epoch, sample id) alone, so an image gets the same pixels whichever rank, micro-batch or
world size it lands in; the compiled decoder reads the epoch from a cell that `EpochOrder`
writes when an epoch starts (recompiling each epoch instead costs seconds). Scheme 1
(runs started before distributed training) hashed the micro-batch's sample ids instead and is
kept so those runs resume with their own scheme. Scheme 3 draws as scheme 2 but decodes a
training crop faster: at the smallest reduced DCT scale (1/8, 1/4, 1/2) that still leaves the
window at least `crop` pixels a side, the window mapped to that scale, and resized bilinearly
where less than 2x is left to shrink (`data/resize.py`); the window in image coordinates, so
the augmentation statistics, are the same. Validation crops are taken from the full-scale
image under every scheme. Under every scheme only the window's rows and columns are decoded
(`data/jpeg_window.py`), bit-identical to decoding the whole image. We own the sample order
too (`EpochOrder`): a permutation per (seed, epoch) cut into global batches, each rank taking
its slice of each.
"""

from __future__ import annotations

import vggcli.data.numba_cache  # noqa: F401  (before FFCV: see there)

# isort: split

from collections.abc import Iterable

import numba
import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import resize_crop
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from vggcli.data.jpeg_window import decode_window
from vggcli.data.resize import mirror, resize_window
from vggcli.data.sampling import (
    EpochOrder,
    LoaderSpec,
    crop_window,
    epoch_key,
    image_key,
    mix64,
    uniform,
)

# reduced DCT scales (in eighths) libjpeg-turbo decodes faster than the full image here: its
# SIMD code covers 1/2 and 1/4; 3/8 and 5/8-7/8 measured slower than 8/8 (docs/performance.md)
FAST_EIGHTHS = (1, 2, 4)


@njit
def decode_eighths(side: int, crop: int) -> int:
    """The DCT scale, in eighths, to decode at for a window of `side` pixels that becomes a
    `crop`: the smallest fast scale that keeps at least `crop` pixels across, else 8."""
    for eighths in FAST_EIGHTHS:
        if side * eighths // 8 >= crop:
            return eighths
    return 8


@njit
def scaled_size(length: int, eighths: int) -> int:
    """A side decoded at eighths/8, as libjpeg-turbo rounds it (TJSCALED: up)."""
    return (length * eighths + 7) // 8


@njit
def scaled_edge(position: int, eighths: int) -> int:
    """A window edge in the image decoded at eighths/8: the nearest pixel boundary."""
    return (position * eighths + 4) // 8


@njit
def decoded_window(
    top: int, left: int, side: int, crop: int, reduce: bool
) -> tuple[int, int, int, int, int]:
    """What the decoder decodes of an image whose crop window is (top, left, side):
    (eighths, top, left, rows, cols), the DCT scale (reduced only when `reduce`) and the
    window in the image decoded at that scale. The bench's ceilings use it too."""
    eighths = np.int64(decode_eighths(side, crop)) if reduce else np.int64(8)
    t0, t1 = scaled_edge(top, eighths), scaled_edge(top + side, eighths)
    l0, l1 = scaled_edge(left, eighths), scaled_edge(left + side, eighths)
    return eighths, t0, l0, t1 - t0, l1 - l0


@intrinsic
def _as_pointer(typingctx, address):  # type: ignore[no-untyped-def]
    """Numba: an integer address as a void pointer."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@njit(inline="always")
def read_cell(address: int) -> np.uint64:
    """The value Python keeps in a one-element uint64 array at `address`, read at run time
    (an array captured by compiled code would be frozen at compile time)."""
    return numba.carray(_as_pointer(address), (1,), dtype=np.uint64)[0]


@intrinsic
def mark_cell(typingctx, address, index):  # type: ignore[no-untyped-def]
    """Numba: set byte `index` of the uint8 array Python keeps at `address` (see
    `read_cell`). A plain store in LLVM: a write through `numba.carray` is dropped as dead
    code inside a parallel (prange) loop."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        base = builder.inttoptr(args[0], ir.IntType(8).as_pointer())
        builder.store(ir.Constant(ir.IntType(8), 1), builder.gep(base, [args[1]]))
        return context.get_dummy_value()

    return types.void(address, index), codegen


class ScaleCropDecoder(ResizedCropRGBImageDecoder):
    """Decode, rescale to smallest side S (fixed or jittered), crop, maybe flip: in one pass.

    `centre=True` gives the validation crop (centre, no flip) at S = s_min = s_max. Schemes 2
    and 3 read the epoch from `epoch_cell` (written by `EpochOrder.start`) for every batch.
    """

    def __init__(
        self,
        crop: int,
        s_min: float,
        s_max: float,
        seed: int,
        centre: bool,
        scheme: int,
        flip: bool = True,
    ) -> None:
        super().__init__((crop, crop))
        self.crop, self.s_min, self.s_max = crop, float(s_min), float(s_max)
        self.seed, self.centre, self.scheme, self.flip = seed, centre, scheme, flip
        self.epoch_cell = np.zeros(1, dtype=np.uint64)
        # one flag per image, set when libjpeg-turbo refuses it (FFCV's own decoders ignore
        # its error code and pass on whatever the buffer held); sized in generate_code
        self.failed = np.zeros(0, dtype=np.uint8)

    @property
    def get_crop_generator(self):  # type: ignore[override]  # unused: generate_code is ours
        raise NotImplementedError

    def generate_code(self):  # type: ignore[no-untyped-def]
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        resize_crop_c = Compiler.compile(resize_crop)
        decode_window_c = Compiler.compile(decode_window)  # this pipeline's own: see there
        decoded_window_c = Compiler.compile(decoded_window.py_func)  # the same
        crop, s_min, s_max, centre = self.crop, self.s_min, self.s_max, self.centre
        flips = self.flip and not centre
        seed = np.uint64(self.seed)
        per_batch = self.scheme == 1
        scaled = self.scheme >= 3 and not centre
        epoch_address = self.epoch_cell.ctypes.data
        if self.failed.size != len(self.metadata):  # once: the order holds this array
            self.failed = np.zeros(len(self.metadata), dtype=np.uint8)
        failed_address = self.failed.ctypes.data

        def decode(batch_indices, my_storage, metadata, storage_state):  # type: ignore[no-untyped-def]
            destination, temp_storage = my_storage
            batch_key = epoch_key(seed, read_cell(epoch_address))
            if per_batch:
                batch_key = mix64(seed)
                for k in range(len(batch_indices)):
                    batch_key = mix64(batch_key ^ np.uint64(batch_indices[k]))
            # threads take images one at a time, not half a batch each: one held up (by the
            # thread feeding the model, say) no longer keeps the other waiting at the batch's
            # end (measured: 0.73-0.76 of the decode ceiling before, 0.78-0.80 after)
            previous = numba.set_parallel_chunksize(1)
            # each thread decodes into one buffer of its own, which stays in its cache for the
            # resize, rather than into the batch's next row (a fresh 0.5 MB every image)
            per_thread = len(temp_storage) >= numba.get_num_threads()
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.int64(field["height"]), np.int64(field["width"])
                key = image_key(batch_key, seed, np.uint64(source_ix))
                top, left, side, _ = crop_window(height, width, crop, s_min, s_max, centre, key)
                jpeg = field["mode"] == jpg
                reduce = scaled and jpeg
                eighths, t0, l0, rows, cols = decoded_window_c(top, left, side, crop, reduce)
                if jpeg:  # only the window is decoded: the same pixels, 0.84x the time
                    slot = np.int64(numba.get_thread_id()) if per_thread else np.int64(dst_ix)
                    buffer = temp_storage[slot]  # the whole image's room: see decode_window
                    status = decode_window_c(image_data, buffer, eighths, t0, l0, rows, cols)
                    window = buffer[: 3 * rows * cols]
                    if status != 0:
                        mark_cell(failed_address, np.int64(source_ix))
                        window[:] = 0  # counted, and black rather than the last image
                    image = window.reshape(rows, cols, 3)
                    t0, l0 = 0, 0  # the decoded image is the window
                else:
                    image = image_data.reshape(height, width, 3)
                if scaled:
                    linear = rows < 2 * crop
                    resize_window(image, t0, l0, rows, cols, destination[dst_ix], linear)
                else:
                    resize_crop_c(image, t0, t0 + rows, l0, l0 + cols, destination[dst_ix])
                if flips and uniform(key, 3) < 0.5:
                    mirror(destination[dst_ix])
            numba.set_parallel_chunksize(previous)
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def make_loader(spec: LoaderSpec) -> tuple[Batches, EpochOrder]:
    """A loader yielding (uint8 NCHW channels_last images, int64 labels): FFCV's, or with
    `decode` torch or gpu the torch one that gives the same batches (torch_loader.py)."""
    if spec.decode != "ffcv":
        from vggcli.data.torch_loader import make_torch_loader

        return make_torch_loader(spec)
    decoder = ScaleCropDecoder(
        spec.crop, spec.s_min, spec.s_max, spec.seed, not spec.train, spec.scheme, spec.flip
    )
    gpu = spec.device.startswith("cuda")
    to_device = [ToDevice(torch.device(spec.device), non_blocking=True)] if gpu else []
    loader = Loader(
        str(spec.beton),
        batch_size=spec.batch_size,
        num_workers=spec.workers,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,  # EpochOrder already cut the epoch to whole effective batches
        os_cache=True,
        batches_ahead=2,
        pipelines={
            "image": [decoder, ToTensor(), *to_device, ToTorchImage(channels_last=True)],
            "label": [IntDecoder(), ToTensor(), Squeeze(-1), *to_device],
        },
    )
    num_samples = int(loader.reader.num_samples)
    global_batch = spec.global_batch or spec.batch_size
    order = EpochOrder(
        num_samples,
        spec.seed,
        global_batch,
        spec.train,
        spec.rank,
        spec.world_size,
        decoder.epoch_cell,
        decoder.failed,
    )
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

    def __call__(self, images: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
        """`alpha`: (N, 3) standard normal draws per image (None: no shift, validation)."""
        x = images.float()
        if alpha is not None and self.sigma > 0:
            shift = (alpha.to(x.device) * self.sigma) @ self.basis.T
            x = x + shift.view(-1, 3, 1, 1)
        return x.contiguous(memory_format=torch.channels_last)


@njit
def _normals(seed: np.uint64, epoch: np.uint64, samples: np.ndarray) -> np.ndarray:
    out = np.empty((len(samples), 3))
    key = epoch_key(seed, epoch)
    for i in range(len(samples)):
        image = image_key(key, seed, np.uint64(samples[i]))
        for c in range(3):  # Box-Muller; draws 4+ of the image's key (0-3 are the crop's)
            u1 = 1.0 - uniform(image, 4 + 2 * c)
            u2 = uniform(image, 5 + 2 * c)
            out[i, c] = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out


def colour_alphas(
    scheme: int, seed: int, epoch: int, samples: np.ndarray, first: int
) -> torch.Tensor:
    """Standard normal draws (N, 3) for the colour shift of these samples. Schemes 2 and 3: keyed
    by (seed, epoch, sample id) alone; scheme 1: one generator per micro-batch, keyed by (seed,
    epoch, the micro-batch's first position in the epoch)."""
    if scheme >= 2:
        ids = np.ascontiguousarray(samples, dtype=np.uint64)
        return torch.from_numpy(_normals(np.uint64(seed), np.uint64(epoch), ids)).float()
    key = hash((seed, epoch, first)) & 0x7FFFFFFFFFFFFFFF
    return torch.randn(len(samples), 3, generator=torch.Generator().manual_seed(key))
