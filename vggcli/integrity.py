"""Every input file checked against the size and sha256 its run recorded, before it is read.

A run's manifest records each output's size and sha256 when it is written. A flipped byte
in a beton, a model or a posteriors file would otherwise train, evaluate or fuse silently
on damaged data, so `Artifact.file` (artifacts.py) hands out no file without this check.
Hashing runs at about 1 GB/s: a whole ImageNet train.beton costs about a minute at the
start of a days-long training. Each file is hashed once per process (remembered by inode,
size and mtime) and, under torchrun, once per node: the node's local rank 0 hashes, the
other local ranks check only the size. `--no-verify` (env VGG_NO_VERIFY=1) skips hashing.

No torch here: fusing stored posteriors stays light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggcli.errors import WorkFailed
from vggcli.files import sha256_file
from vggcli.progress import console

NO_VERIFY_ENV = "VGG_NO_VERIFY"
ANNOUNCE_BYTES = 1 << 30  # say so before hashing a file this large

_verified: set[tuple[int, int, int, int, str]] = set()


def enabled() -> bool:
    return os.environ.get(NO_VERIFY_ENV, "") not in ("1", "true", "yes")


def _hashes_here() -> bool:
    """Under torchrun only the node's local rank 0 hashes (same files, same disk)."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


@dataclass(frozen=True)
class Damage:
    """One recorded file that is not what its run wrote."""

    label: str  # the run version, e.g. imagenet/v001
    name: str  # the output, e.g. train.beton
    problem: str

    def __str__(self) -> str:
        return f"{self.label}: {self.name} {self.problem}"


def damage(
    path: Path, record: dict[str, Any], label: str, always_hash: bool = False
) -> Damage | None:
    """What is wrong with `path` against its manifest record, or None when it matches.
    `always_hash` (`vgg verify`) hashes whatever --no-verify and the rank say."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return Damage(label, path.name, "is missing")
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, record["sha256"])
    if key in _verified:
        return None
    if stat.st_size != record["size"]:
        return Damage(label, path.name, f"is {stat.st_size} bytes, recorded {record['size']}")
    if always_hash or (enabled() and _hashes_here()):
        if stat.st_size >= ANNOUNCE_BYTES:
            console.print(f"verifying {label}/{path.name} ({stat.st_size / 1e9:.1f} GB)")
        if sha256_file(path) != record["sha256"]:
            return Damage(label, path.name, "does not match its recorded sha256")
        _verified.add(key)
    return None


def check(path: Path, record: dict[str, Any], label: str) -> Path:
    """`path`, once it matches its record; a one-line error naming the file and run if not."""
    if (found := damage(path, record, label)) is not None:
        raise WorkFailed(
            f"{found}: it changed after its run wrote it (damaged or edited); restore it or "
            "re-run the command that made it (--no-verify skips this check)"
        )
    return path
