"""What every stage does the same way."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from vggcli.artifacts import Kind
from vggcli.data.image_files import ImageFiles
from vggcli.distributed import SINGLE, Cluster, lead_does
from vggcli.errors import VggError, WorkFailed
from vggcli.progress import console
from vggcli.runs import RunVersion, RunWriter

if TYPE_CHECKING:
    import torch
    from rich.progress import Progress

T = TypeVar("T")


def read_on_every_rank(cluster: Cluster, device: torch.device, read: Callable[[], T]) -> T:
    """Run `read` (which verifies the inputs it opens) on every rank; when it failed on any
    rank, fail on all, before rank 0 opens a run. Hashing happens once per node, so only
    that node's processes would know of a damaged file otherwise."""
    failure: VggError | None = None
    try:
        value = read()
    except VggError as exc:
        failure = exc
    (failed,) = cluster.sum([float(failure is not None)], device)
    if failure is not None:
        raise failure
    if failed:
        raise WorkFailed("another process of this job could not read its inputs (see its error)")
    return value


@dataclass
class LeadRun:
    """The run version a stage writes: `writer` on rank 0 (None on the other ranks; always
    set in one process), and `version`, the same on every rank once the block has ended."""

    writer: RunWriter | None
    version: RunVersion | None = None


@contextlib.contextmanager
def lead_run(
    root: Path,
    name: str,
    kind: Kind,
    config: dict[str, Any],
    *,
    parents: list[RunVersion] = (),  # type: ignore[assignment]
    device: str = "cpu",
    cluster: Cluster = SINGLE,
    resume: bool = True,
    resume_only: Path | None = None,
) -> Iterator[LeadRun]:
    """Every stage opens its run here: rank 0 alone opens (or resumes) the version and
    announces it, and every rank learns whether that worked; the block writes it (rank 0)
    and computes (every rank); when the block ends the version is complete (failed on an
    exception) and its path is known to every rank."""
    writer = lead_does(
        cluster,
        lambda: RunWriter.open(
            root,
            name,
            kind=kind,
            config=config,
            parents=parents,
            device=device,
            execution=cluster.facts(),
            resume=resume,
            resume_only=resume_only,
        ),
    )
    if writer is not None:
        announce(writer)
    run = LeadRun(writer)
    with writer or contextlib.nullcontext():
        yield run
    run.version = RunVersion(Path(cluster.broadcast(str(writer.path) if writer else None)))


def announce(writer: RunWriter) -> None:
    """Every command says where its run directory is (and whether it resumes one)."""
    resumed = " (resuming)" if writer.resumed else ""
    console.print(f"run directory: [bold]{writer.path}[/]{resumed}")


def load_array(path: Path) -> np.ndarray:
    """A stored numeric array; never a pickled object array."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise VggError(f"{path}: not a readable numeric array ({exc})", exit_code=1) from exc
    if array.dtype.kind not in "fiu":
        raise VggError(f"{path}: holds {array.dtype} values, not numbers", exit_code=1)
    return array


def save_posteriors(writer: RunWriter, name: str, posteriors: np.ndarray) -> None:
    """Posteriors are stored as float32, so that a fusion read from the files scores exactly
    what the in-memory numbers scored (float16 turns near-ties into ties, and a tie counts
    as an error: see metrics.topk_errors)."""
    with writer.writing(name) as tmp, open(tmp, "wb") as fh:
        np.save(fh, posteriors.astype(np.float32))


def print_errors(title: str, rows: list[dict[str, Any]]) -> None:
    """Top-1 / top-5 error rows as a table on the terminal."""
    from rich.table import Table

    table = Table(
        "method", "test scale Q", "top-1 val error (%)", "top-5 val error (%)", title=title
    )
    for row in rows:
        name = row.get("method", row.get("name"))
        scales = ",".join(str(q) for q in row.get("scales", []))
        table.add_row(name, scales, f"{100 * row['top1_err']:.1f}", f"{100 * row['top5_err']:.1f}")
    console.print(table)


def read_images(bar: Progress, paths: list[Path]) -> ImageFiles:
    """Every image file decoded before any compute (the first bar of `bar`); when one fails,
    the bars are erased, so that the error is the only line the command leaves."""
    task = bar.add_task("reading images", total=len(paths))
    try:
        return ImageFiles(paths, lambda n: bar.advance(task, n))
    except VggError:
        bar.live.transient = True
        raise
