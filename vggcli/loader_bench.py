"""`vgg bench loader`: our training loader beside torchvision's and stock FFCV's, and the
ceiling that JPEG decoding alone sets, on the same images, cores and batch size.

Every loader delivers what training consumes: decoded, rescaled, cropped, flipped uint8
batches. The references: a torchvision `ImageFolder` + `DataLoader` doing the same
transforms (shortest side to S, random crop, flip) with as many worker processes as our
loader has threads; the stock FFCV `RandomResizedCropRGBImageDecoder` loader; and a tight
loop of libjpeg-turbo decodes alone over the same number of threads, at full size and at
the reduced DCT scales our decoder picks (a reduced-scale decode is compared with a
reduced-scale ceiling), and of only the windows our decoder decodes (the strictest: our
decode step alone); our loader as it was before reduced-scale decoding (scheme 2), to
show what that buys; and our torch decode path (`vgg train --decode torch`; on a machine
with CUDA, `--decode gpu` too). Passes are interleaved, their order rotated, medians taken.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggcli.config import SCHEME
from vggcli.data.beton import BetonImages
from vggcli.errors import VggError

SEED = 0


@dataclass(frozen=True)
class LoaderBench:
    s_min: int = 256
    s_max: int = 256
    workers: int = 2  # our loader's threads = torchvision's worker processes = decode threads
    batch: int = 64
    crop: int = 224
    images: int = 1200  # a seeded sample of the training images (all of them when fewer)
    repeats: int = 3
    # a timed pass reads the sample as often as it takes to reach this many images, so that
    # an epoch's start (threads, the first batches in flight) weighs as little as in training
    pass_images: int = 3000

    def __post_init__(self) -> None:
        if self.s_min < self.crop:
            raise VggError(
                f"training scale S={self.s_min} is below the crop size {self.crop}", field="scale"
            )


@dataclass(frozen=True)
class Encoded:
    """The bench's sample: JPEG bytes and stored sizes, in the order every loader uses."""

    ids: np.ndarray  # sample ids in the .beton
    jpegs: list[np.ndarray]
    shapes: list[tuple[int, int]]
    labels: np.ndarray
    failed: int  # drawn images left out because their JPEG data does not decode


def sample(beton: Path, count: int) -> Encoded:
    """`count` JPEG-stored training images drawn with a fixed seed, bytes read once; those
    that no longer decode are counted and left out, so that every loader reads the same
    images (torchvision's would stop at the first)."""
    images = BetonImages(beton)
    jpegs = np.array([i for i in range(len(images)) if images.is_jpeg(i)], dtype=np.int64)
    drawn = np.sort(np.random.default_rng(SEED).permutation(jpegs)[:count])
    stored = {int(i): images.encoded(int(i)) for i in drawn}  # each read once
    kept = [i for i, jpeg in stored.items() if _decodes(jpeg, images.shapes[i])]
    ids = np.array(kept, dtype=np.int64)
    return Encoded(
        ids,
        [stored[i] for i in kept],
        [images.shapes[i] for i in kept],
        images.labels[ids],
        len(drawn) - len(kept),
    )


def _decodes(jpeg: np.ndarray, shape: tuple[int, int]) -> bool:
    from vggcli.data.beton import decode_jpeg

    return decode_jpeg(jpeg, np.empty((*shape, 3), dtype=np.uint8)) == 0


def write_image_folder(encoded: Encoded, folder: Path) -> None:
    """The sample as an ImageFolder (class/<id>.JPEG): byte for byte the stored JPEGs."""
    for sample_id, jpeg, label in zip(encoded.ids, encoded.jpegs, encoded.labels, strict=True):
        path = folder / f"{int(label):05d}" / f"{int(sample_id):08d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg.tobytes())


def laps(bench: LoaderBench, encoded: Encoded) -> int:
    """How many times one timed pass reads the sample."""
    return -(-bench.pass_images // max(1, len(encoded.ids)))


def _ours(
    bench: LoaderBench, beton: Path, encoded: Encoded, scheme: int, decode: str = "ffcv"
) -> Callable[[int], int]:
    """Our training loader under augmentation `scheme` (2: every window decoded at full scale
    and resized with INTER_AREA, the decoder before reduced-scale decoding), decoded by `decode`
    (`--decode` of vgg train: ffcv, torch, or gpu, whose batches are timed until on the GPU)."""
    import torch

    from vggcli.data.loader import make_loader
    from vggcli.data.sampling import LoaderSpec

    device = "cuda" if decode == "gpu" else "cpu"

    spec = LoaderSpec(
        beton,
        bench.batch,
        bench.crop,
        bench.s_min,
        bench.s_max,
        SEED,
        True,
        bench.workers,
        scheme=scheme,
        device=device,
        decode=decode,
    )
    loader, order = make_loader(spec)
    rng = np.random.default_rng(SEED)
    shuffled = np.concatenate([rng.permutation(encoded.ids) for _ in range(laps(bench, encoded))])
    shuffled = shuffled.astype(np.uint64)

    def one_pass(epoch: int) -> int:
        order.start(epoch)
        order.current = shuffled  # the bench's sample stands in for the whole epoch
        count = sum(len(images) for images, _ in loader)
        if device == "cuda":
            torch.cuda.synchronize()
        return count

    return one_pass


def _ffcv_rrc(bench: LoaderBench, beton: Path, encoded: Encoded) -> Callable[[int], int]:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    loader = Loader(
        str(beton),
        batch_size=bench.batch,
        num_workers=bench.workers,
        order=OrderOption.RANDOM,
        indices=np.tile(encoded.ids, laps(bench, encoded)).tolist(),
        drop_last=False,
        os_cache=True,
        batches_ahead=2,
        pipelines={
            "image": [
                RandomResizedCropRGBImageDecoder((bench.crop, bench.crop)),
                RandomHorizontalFlip(),
                ToTensor(),
                ToTorchImage(channels_last=True),
            ],
            "label": [IntDecoder(), ToTensor()],
        },
    )
    return lambda epoch: sum(len(images) for images, _ in loader)


def _torchvision(bench: LoaderBench, folder: Path, repeat: int) -> Callable[[int], int]:
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.RandomResize(bench.s_min, bench.s_max + 1),  # shortest side to S in [min, max]
            v2.RandomCrop(bench.crop),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
        ]
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.ConcatDataset([ImageFolder(str(folder), transform=transform)] * repeat),
        batch_size=bench.batch,
        shuffle=True,
        num_workers=bench.workers,
        persistent_workers=bench.workers > 0,
        generator=torch.Generator().manual_seed(SEED),
    )
    return lambda epoch: sum(len(images) for images, _ in loader)


def chosen_windows(bench: LoaderBench, encoded: Encoded, epoch: int = 1) -> np.ndarray:
    """What our decoder decodes of each image of the sample in `epoch`: rows of (eighths,
    top, left, rows, cols), the DCT scale and the crop's window in the image at that scale."""
    from vggcli.data.loader import decoded_window
    from vggcli.data.sampling import crop_window, epoch_key, image_key

    seed = np.uint64(SEED)
    key = np.uint64(epoch_key(seed, np.uint64(epoch)))
    out = np.empty((len(encoded.ids), 5), dtype=np.int64)
    for k, (sample_id, (height, width)) in enumerate(zip(encoded.ids, encoded.shapes, strict=True)):
        image = np.uint64(image_key(key, seed, np.uint64(sample_id)))
        top, left, side, _ = crop_window(
            height, width, bench.crop, bench.s_min, bench.s_max, False, image
        )
        out[k] = decoded_window(top, left, side, bench.crop, True)
    return out


Decode = Callable[[np.ndarray, tuple[int, int], np.ndarray, np.ndarray], int]


def _decoder() -> Decode:
    """decode(jpeg, shape, window, out): the whole image (FFCV's call, with its flags) at
    the window's DCT scale, or with `window[1:]` set, only that window (our decoder's call).
    Made once per timed loop, so that no import runs per image."""
    from ffcv.libffcv import imdecode

    from vggcli.data.jpeg_window import decode_window_nogil as decode_window

    def decode(
        jpeg: np.ndarray, shape: tuple[int, int], window: np.ndarray, out: np.ndarray
    ) -> int:
        eighths, top, left, rows, cols = (int(x) for x in window)
        if rows:
            return int(decode_window(jpeg, out, eighths, top, left, rows, cols))
        height, width = shape
        return int(
            imdecode(jpeg, out, height, width, height, width, 0, 0, eighths, 8, False, False)
        )

    return decode


def _decode_only(bench: LoaderBench, encoded: Encoded, windows: np.ndarray) -> Callable[[int], int]:
    """libjpeg-turbo alone (see `_decoder`), on `workers` threads (ctypes and our nogil
    wrapper let go of the GIL), each decoding its share of the sample into its own buffer."""
    decode_one = _decoder()
    largest = max(h * w for h, w in encoded.shapes) * 3
    every = np.tile(np.arange(len(encoded.ids)), laps(bench, encoded))
    shares = np.array_split(every, bench.workers)

    def decode(share: np.ndarray) -> int:
        out = np.empty(largest, dtype=np.uint8)
        for k in share:
            decode_one(encoded.jpegs[k], encoded.shapes[k], windows[k], out)
        return len(share)

    def one_pass(epoch: int) -> int:
        with ThreadPoolExecutor(bench.workers) as pool:  # its threads end with the pass
            return sum(pool.map(decode, shares))

    return one_pass


def whole_images(windows: np.ndarray, eighths: int | None = None) -> np.ndarray:
    """`windows` as whole-image decodes: at their own scale, or at `eighths`."""
    whole = np.zeros_like(windows)
    whole[:, 0] = windows[:, 0] if eighths is None else eighths
    return whole


def breakdown(bench: LoaderBench, encoded: Encoded, windows: np.ndarray) -> dict[str, float]:
    """Milliseconds per image on one thread of our decoder's two steps, decoding the window
    (at the chosen scale) and resizing it to the crop, and of decoding the whole image at
    that scale instead (the rest is the loader's own)."""
    from vggcli.data.resize import resize_window

    out = np.empty((bench.crop, bench.crop, 3), dtype=np.uint8)
    resize_window(np.zeros_like(out), 0, 0, bench.crop, bench.crop, out, True)  # compiles
    buffer = np.empty(max(h * w for h, w in encoded.shapes) * 3, dtype=np.uint8)
    whole, decode = whole_images(windows), _decoder()
    seconds = np.zeros(3)
    for k, shape in enumerate(encoded.shapes):
        rows, cols = int(windows[k, 3]), int(windows[k, 4])
        times = [time.perf_counter()]
        decode(encoded.jpegs[k], shape, whole[k], buffer)
        times.append(time.perf_counter())
        decode(encoded.jpegs[k], shape, windows[k], buffer)
        times.append(time.perf_counter())
        image = buffer[: rows * cols * 3].reshape(rows, cols, 3)
        resize_window(image, 0, 0, rows, cols, out, rows < 2 * bench.crop)
        times.append(time.perf_counter())
        seconds += np.diff(times)
    whole_ms, window_ms, resize_ms = 1e3 * seconds / len(encoded.shapes)
    return {"decode_ms": window_ms, "resize_ms": resize_ms, "whole_image_decode_ms": whole_ms}


def loader_throughput(
    bench: LoaderBench, beton: Path, encoded: Encoded, folder: Path, report: Callable[[str], None]
) -> dict:
    """img/s of each loader and of the decode ceilings, interleaved; ratios of ours."""
    import torch

    gpu = torch.cuda.is_available()
    windows = chosen_windows(bench, encoded)
    eighths = windows[:, 0]
    passes = {
        "ours": _ours(bench, beton, encoded, SCHEME),
        "ours_scheme_2": _ours(bench, beton, encoded, 2),
        "ours_torch_decode": _ours(bench, beton, encoded, SCHEME, "torch"),
        **({"ours_gpu_decode": _ours(bench, beton, encoded, SCHEME, "gpu")} if gpu else {}),
        "torchvision": _torchvision(bench, folder, laps(bench, encoded)),
        "ffcv_rrc": _ffcv_rrc(bench, beton, encoded),
        "decode_full": _decode_only(bench, encoded, whole_images(windows, 8)),
        "decode_ours_scales": _decode_only(bench, encoded, whole_images(windows)),
        "decode_ours_windows": _decode_only(bench, encoded, windows),
    }
    for one_pass in passes.values():
        one_pass(0)  # warm-up: FFCV compiles its pipeline, DataLoader starts its workers
    times: dict[str, list[float]] = {name: [] for name in passes}
    counts: dict[str, int] = {}
    for repeat in range(bench.repeats):
        names = list(passes)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start = time.perf_counter()
            counts[name] = passes[name](repeat + 1)
            times[name].append(time.perf_counter() - start)
    rate = {name: counts[name] / statistics.median(times[name]) for name in passes}
    result = {
        "scale": [bench.s_min, bench.s_max],
        "crop": bench.crop,
        "batch": bench.batch,
        "workers": bench.workers,
        "images": len(encoded.ids),
        "images_per_pass": len(encoded.ids) * laps(bench, encoded),
        "decode_failures": encoded.failed,
        "mean_jpeg_kb": float(np.mean([len(j) for j in encoded.jpegs]) / 1e3),
        "median_sides": [
            int(np.median([min(shape) for shape in encoded.shapes])),
            int(np.median([max(shape) for shape in encoded.shapes])),
        ],
        "ours_dct_scales": {f"{e}/8": float(np.mean(eighths == e)) for e in np.unique(eighths)},
        **{f"{name}_img_s": value for name, value in rate.items()},
        "ours_vs_torchvision": rate["ours"] / rate["torchvision"],
        "ours_vs_ffcv_rrc": rate["ours"] / rate["ffcv_rrc"],
        "ours_vs_ceiling": rate["ours"] / rate["decode_ours_scales"],
        "ours_vs_full_ceiling": rate["ours"] / rate["decode_full"],
        "ours_vs_window_ceiling": rate["ours"] / rate["decode_ours_windows"],
        "ours_vs_scheme_2": rate["ours"] / rate["ours_scheme_2"],
        "ours_one_thread_ms": breakdown(bench, encoded, windows),
    }
    report(_summary(result))
    return result


def _summary(result: dict) -> str:
    scale = "-".join(str(s) for s in sorted(set(result["scale"])))
    return (
        f"S={scale}, {result['images']} images, {result['workers']} workers: ours "
        f"{result['ours_img_s']:.0f} img/s, torchvision {result['torchvision_img_s']:.0f} "
        f"({result['ours_vs_torchvision']:.2f}x), stock FFCV RRC {result['ffcv_rrc_img_s']:.0f} "
        f"({result['ours_vs_ffcv_rrc']:.2f}x), ours before reduced-scale decoding "
        f"{result['ours_scheme_2_img_s']:.0f}; decode alone {result['decode_full_img_s']:.0f} "
        f"(full size), {result['decode_ours_scales_img_s']:.0f} (our scales), "
        f"{result['decode_ours_windows_img_s']:.0f} (our windows only): ours at "
        f"{result['ours_vs_ceiling']:.0%} of the ceiling at our scales, "
        f"{result['ours_vs_window_ceiling']:.0%} of the windows-only one"
    )
