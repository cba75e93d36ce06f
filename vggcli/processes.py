"""Processes and signals: children that do not outlive their parent, SIGTERM as a request."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (call it in the child),
    so that a killed command leaves no orphan still writing a run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[Callable[[], bool]]:
    """While the block runs, SIGTERM (Slurm preemption, scancel, torchrun passing on its own
    SIGTERM) only raises a flag, which the yielded function reads: the training loop then
    checkpoints and stops at its next step instead of dying mid-write."""
    requested = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: requested.set())
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def pause_point(name: str) -> None:
    """A test hook that makes races deterministic: with VGG_PAUSE_AT=name, touch
    `$VGG_PAUSE_DIR/name.reached` and wait until `name.go` appears there. A no-op otherwise."""
    if os.environ.get("VGG_PAUSE_AT") != name:
        return
    folder = Path(os.environ["VGG_PAUSE_DIR"])
    (folder / f"{name}.reached").touch()
    while not (folder / f"{name}.go").exists():
        time.sleep(0.05)

