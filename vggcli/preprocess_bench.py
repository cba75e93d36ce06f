"""`vgg bench preprocess`: each pass of `vgg preprocess` against the least work it could do.

Preprocess reads every image twice: the scan (decode, shrink to the stored size, sum the
colours: validation and statistics) and FFCV's write (decode again, shrink, encode to JPEG,
write pages). The ceiling, measured in the same run on the same images and processes, is
decode + shrink + encode alone, nothing kept: what any writer of the same file must do.
Rates are medians of interleaved repeats; per core = img/s / processes.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2

from vggcli.data.beton import StorageSettings, write_beton
from vggcli.data.images import fit_longer_side, load_rgb, scan_image
from vggcli.processes import die_with_parent

IMAGENET = {"train": 1_281_167, "val": 50_000}  # ILSVRC-2012's images
PROJECTED_CORES = (16, 64)


@dataclass(frozen=True)
class PreprocessBench:
    images: int = 240  # ImageNet-sized JPEGs (500x375, q90)
    workers: int = 1  # processes in every pass
    repeats: int = 3
    storage: StorageSettings = StorageSettings()


def encode_once(job: tuple[str, int | None, int]) -> int:
    """The ceiling's unit of work: decode, shrink as FFCV's field does, encode as it does
    (OpenCV, BGR, the storage quality); the encoded size, so nothing is optimised away."""
    path, max_side, quality = job
    image = fit_longer_side(load_rgb(Path(path))[0], max_side)
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return len(encoded) if ok else 0


def preprocess_throughput(
    bench: PreprocessBench, samples: list[tuple[Path, int]], report: Callable[[str], None]
) -> dict[str, Any]:
    """img/s of the ceiling, the scan and the write on the same images, interleaved."""
    storage = bench.storage
    ceiling_jobs = [(str(p), storage.max_side, storage.jpeg_quality) for p, _ in samples]
    scan_jobs = [(str(p), storage.max_side, True) for p, _ in samples]
    times: dict[str, list[float]] = {"ceiling": [], "scan": [], "write": []}
    with tempfile.TemporaryDirectory(prefix="vgg-bench-preprocess-") as scratch, Pool(
        bench.workers, initializer=die_with_parent
    ) as pool:
        pool.map(encode_once, ceiling_jobs[: bench.workers])  # start the workers, warm caches
        for repeat in range(bench.repeats):
            times["ceiling"].append(_timed(lambda: pool.map(encode_once, ceiling_jobs, 8)))
            times["scan"].append(_timed(lambda: pool.map(scan_image, scan_jobs, 8)))
            out = Path(scratch) / f"write-{repeat}.beton"
            times["write"].append(_timed(lambda out=out: write_beton(
                out, "train.beton", samples, storage, bench.workers, lambda _: None)))
            out.unlink()
    rate = {name: len(samples) / statistics.median(t) for name, t in times.items()}
    result = {
        "images": len(samples),
        "workers": bench.workers,
        **{f"{name}_img_s": value for name, value in rate.items()},
        **{f"{name}_img_s_per_core": value / bench.workers for name, value in rate.items()},
        "scan_vs_ceiling": rate["scan"] / rate["ceiling"],
        "write_vs_ceiling": rate["write"] / rate["ceiling"],
        "projection": projection(rate["scan"] / bench.workers, rate["write"] / bench.workers),
    }
    report(_summary(result))
    return result


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def projection(scan_per_core: float, write_per_core: float) -> dict[str, dict[str, float]]:
    """Hours for ILSVRC-2012 (both splits, both passes) on 16 and 64 cores, if the passes
    scale with cores (each image is independent) and the disk keeps up (about 100 kB read
    per image per pass, 100 kB written: 13 GB and 2 minutes at 1 GB/s per pass)."""
    images = sum(IMAGENET.values())
    per_image = 1 / scan_per_core + 1 / write_per_core  # core-seconds
    return {f"{cores}_cores": {"hours": images * per_image / cores / 3600,
                               "write_pass_minutes": images / write_per_core / cores / 60}
            for cores in PROJECTED_CORES}


def _summary(result: dict[str, Any]) -> str:
    cores = result["workers"]
    lines = [
        f"{result['images']} ImageNet-sized images, {cores} process(es):",
        f"  ceiling (decode + shrink + encode): {result['ceiling_img_s']:.1f} img/s",
        f"  scan (decode + shrink + colour sums): {result['scan_img_s']:.1f} img/s "
        f"({result['scan_vs_ceiling']:.2f}x the ceiling)",
        f"  write (FFCV DatasetWriter): {result['write_img_s']:.1f} img/s "
        f"({result['write_vs_ceiling']:.2f}x the ceiling)",
    ]
    for name, figures in result["projection"].items():
        lines.append(f"  ILSVRC-2012 on {name.replace('_', ' ')}: {figures['hours']:.2f} h "
                     f"(the write pass {figures['write_pass_minutes']:.0f} min)")
    return "\n".join(lines)
