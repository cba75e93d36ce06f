"""Write a list of (image file, label) into an FFCV .beton, safely.

FFCV 1.0.2's writer has two traps we close here: when a worker process dies (a full disk,
a file that vanished) its parent waits forever for the missing samples, and a worker's
exception prints a traceback. `CheckedWriter` watches the workers, turns a failure into one
line, and reports progress to our rich bar instead of tqdm.
"""

from __future__ import annotations

import vggcli.data.numba_cache  # noqa: F401  (before FFCV: see there)

# isort: split

import ctypes
import errno
import os
import queue
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import Process, Queue, Value
from pathlib import Path

import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter, worker_job_indexed_dataset

from vggcli.config import WRITE_MODES
from vggcli.data.images import load_rgb
from vggcli.errors import VggError, WorkFailed
from vggcli.processes import die_with_parent

MIN_PAGE = 8 << 20
MAX_DECODE_FAILURES = 0.001  # share of a split's images that may fail to decode at read time


def check_decodes(failed: int, total: int, what: str) -> str | None:
    """Stored JPEGs that no longer decode (all decoded when the beton was written, so the
    file was damaged since): fail above MAX_DECODE_FAILURES of the images, else a note."""
    if failed == 0:
        return None
    message = f"{failed} of {total} {what} images failed to decode (damaged JPEG data)"
    if failed > MAX_DECODE_FAILURES * total:
        raise WorkFailed(f"{message}: more than {MAX_DECODE_FAILURES:.1%}; check the dataset "
                         "with `vgg verify`, or preprocess it again")
    return message


@dataclass(frozen=True)
class StorageSettings:
    """How images are stored; see docs/preprocess.md for why these defaults suit VGG."""

    max_side: int | None = 683
    write_mode: str = "jpg"
    jpeg_quality: int = 90
    compress_probability: float = 1.0

    def __post_init__(self) -> None:
        if self.write_mode not in WRITE_MODES:
            raise VggError(
                f"unknown write mode '{self.write_mode}': choose {', '.join(WRITE_MODES)}",
                field="write_mode",
            )
        if self.max_side is not None and self.max_side < 32:
            raise VggError(
                f"a stored longer side of {self.max_side} px is below 32", field="max_side"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise VggError(
                f"JPEG quality {self.jpeg_quality} is outside 1-100", field="jpeg_quality"
            )
        if not 0.0 <= self.compress_probability <= 1.0:
            raise VggError(
                f"probability {self.compress_probability} is outside 0-1",
                field="compress_probability",
            )

    def field(self) -> RGBImageField:
        return RGBImageField(
            write_mode=self.write_mode,
            max_resolution=self.max_side,
            jpeg_quality=self.jpeg_quality,
            compress_probability=self.compress_probability,
        )

    def page_size(self) -> int:
        """A power of two that fits the largest raw sample (a sample bigger than a page fails)."""
        largest = 3 * (self.max_side or 4096) ** 2
        return max(MIN_PAGE, 1 << int(np.ceil(np.log2(largest * 2))))


class _Images:
    """The indexable dataset FFCV's workers read: decoded RGB array and label."""

    def __init__(self, samples: Sequence[tuple[Path, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        return load_rgb(path)[0], label


def _guarded_worker(errors: Queue, *args: object) -> None:
    die_with_parent()
    try:
        worker_job_indexed_dataset(*args)
    except BaseException as exc:  # report, don't print a traceback
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG)
        errors.put(("disk full: " if full else "") + f"{type(exc).__name__}: {exc}".splitlines()[0])
        sys.exit(1)


class CheckedWriter(DatasetWriter):
    """DatasetWriter that fails fast and quietly when a worker fails."""

    def __init__(
        self,
        path: Path,
        label: str,
        fields: dict,
        page_size: int,
        workers: int,
        on_progress: Callable[[int], None],
    ) -> None:
        super().__init__(str(path), fields, page_size=page_size, num_workers=workers)
        self.label = label
        self.on_progress = on_progress

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):  # type: ignore[no-untyped-def]
        """Upstream's loop, plus: worker exit codes checked, errors surfaced, our progress."""
        self.num_samples = num_samples
        self.prepare()
        work: Queue = Queue()
        for todo in queue_content:
            work.put(todo)
        for _ in range(self.num_workers):
            work.put(None)
        allocations: Queue = Queue()
        errors: Queue = Queue()
        done = Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
        args = (
            errors,
            work,
            self.metadata_sm,
            self.metadata_type,
            self.fields,
            allocator,
            done,
            allocations,
            *extra_worker_args,
        )
        workers = [
            Process(target=_guarded_worker, args=args, daemon=True) for _ in range(self.num_workers)
        ]
        try:
            for worker in workers:
                worker.start()
            self.finalize(self._collect(workers, done, errors, allocations))
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def _collect(
        self,
        workers: list[Process],
        done: Value,
        errors: Queue,  # type: ignore[valid-type]
        allocations: Queue,
    ) -> list:
        """Report progress and gather each worker's allocation table; raise if one dies.

        Pages reach the disk only when a worker finishes or fills a page, so a write error
        can come after every sample was counted: wait for the tables, not for the count.
        """
        reported, tables = 0, []
        while len(tables) < len(workers):
            value = done.value  # type: ignore[attr-defined]
            if value > reported:
                self.on_progress(value - reported)
                reported = value
            try:
                tables.append(allocations.get(timeout=0.05))
                continue
            except queue.Empty:
                pass
            failed = [w for w in workers if w.exitcode not in (None, 0)]
            if failed:
                try:
                    reason = errors.get(timeout=5)
                except queue.Empty:
                    reason = f"worker exited with code {failed[0].exitcode}"
                raise WorkFailed(f"writing {self.label} failed: {reason}")
        return [allocation for table in tables for allocation in table]


def write_beton(
    path: Path,
    label: str,
    samples: Sequence[tuple[Path, int]],
    storage: StorageSettings,
    workers: int,
    on_progress: Callable[[int], None],
) -> None:
    """Write `samples` in the given order to `path` (a temporary name; `label` is the final
    name, for messages)."""
    fields = {"image": storage.field(), "label": IntField()}
    writer = CheckedWriter(path, label, fields, storage.page_size(), workers, on_progress)
    try:
        writer.from_indexed_dataset(_Images(samples), chunksize=16)
    except OSError as exc:
        raise WorkFailed(f"writing {label} failed: {exc}") from exc
    size = os.path.getsize(path)
    if size == 0:
        raise WorkFailed(f"writing {path.name} produced an empty file")


class BetonImages:
    """Random access to the images of a .beton written by `write_beton`, at stored size.

    FFCV's decoders produce one fixed output size; whole-image (dense) evaluation needs each
    image as it is, so this reads the file directly: metadata gives mode, size and pointer,
    the allocation table the byte length of each JPEG.
    """

    def __init__(self, path: Path) -> None:
        from ffcv.reader import Reader

        reader = Reader(str(path))
        self._sizes = dict(
            zip(
                reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist(), strict=True
            )
        )
        image, label = (f"f{reader.field_names.index(name)}" for name in ("image", "label"))
        self._meta = reader.metadata[image]  # by name: an adopted file may order them otherwise
        self._data = np.memmap(path, dtype=np.uint8, mode="r")
        self.labels = np.asarray(reader.metadata[label], dtype=np.int64).reshape(-1)
        self.shapes = [(int(m["height"]), int(m["width"])) for m in self._meta]
        self.failed: set[int] = set()  # images whose JPEG data no longer decodes

    def __len__(self) -> int:
        return len(self._meta)

    def is_jpeg(self, index: int) -> bool:
        return int(self._meta[index]["mode"]) == 0  # FFCV: 0 = JPEG, 1 = raw

    def encoded(self, index: int) -> np.ndarray:
        """The stored bytes of an image: a JPEG file, or raw height x width x 3 RGB."""
        ptr = int(self._meta[index]["data_ptr"])
        return np.array(self._data[ptr : ptr + self._sizes[ptr]])

    def __getitem__(self, index: int) -> np.ndarray:
        height, width = self.shapes[index]
        encoded = self.encoded(index)
        if not self.is_jpeg(index):
            return encoded[: height * width * 3].reshape(height, width, 3)
        decoded = np.empty((height, width, 3), dtype=np.uint8)
        if decode_jpeg(encoded, decoded) != 0:  # counted (see check_decodes); black as in training
            self.failed.add(index)
            decoded[:] = 0
        return decoded


def decode_jpeg(encoded: np.ndarray, out: np.ndarray) -> int:
    """FFCV's libjpeg-turbo decode of a whole stored JPEG into `out` (height, width, 3) RGB:
    the call and flags the training loader's compiled decoder makes (`ScaleCropDecoder`),
    so that evaluation sees exactly the pixels training saw. 0 when it decoded."""
    from ffcv.libffcv import imdecode

    height, width = out.shape[:2]
    return int(imdecode(encoded, out, height, width, height, width, 0, 0, 1, 1, False, False))


def read_samples(path: Path) -> list[tuple[np.ndarray, int]]:
    """Every (RGB image, label) of a .beton, in file order, at stored size (small files)."""
    images = BetonImages(path)
    return [(images[i], int(images.labels[i])) for i in range(len(images))]
