"""Files that readers see whole or not at all, and their fingerprints. No torch, no runs."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a stray half file
        raise


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Rewrite an existing file in its own blocks: the last resort when the disk is too full
    for a temporary copy. Not atomic; callers write something no longer than before."""
    with open(path, "r+b") as fh:
        fh.write(data)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def writing_new(path: Path) -> Iterator[BinaryIO]:
    """A temporary sibling, open for writing, that becomes `path` (fsynced, whole) when the
    block succeeds, unless a file named `path` exists by then: FileExistsError, nothing
    overwritten. On any failure the temporary file goes."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _rename_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rename_new(tmp: Path, path: Path) -> None:
    """Give `tmp`'s file the name `path` only if no file has it: a hard link is an exclusive
    create; where the file system has no hard links, a check, then a rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)
