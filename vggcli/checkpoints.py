"""Model weights and training state on disk, safely, for the stages that own the runs.

Files are written to a temporary name and renamed (through RunWriter.writing), and loaded
with `weights_only=True`: a checkpoint can never run code when it is read. Weights written
before the model owned its input normalisation are completed in memory when loaded, never
rewritten, so their recorded sha256 stays true.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from vggcli.artifacts import DatasetRun, ModelRun
from vggcli.classes import ClassList, indices_for
from vggcli.config import NetSpec
from vggcli.distributed import Cluster, lead_does
from vggcli.errors import VggError, WorkFailed
from vggcli.models import VGG, keep_classes, with_normalisation
from vggcli.progress import console
from vggcli.runs import RunWriter

MODEL_FILE = ModelRun.WEIGHTS
METRICS_FILE = ModelRun.METRICS
BOARD_FOLDER = ModelRun.BOARD
CHECKPOINT_PREFIX = "checkpoint-"


def save(run: RunWriter, name: str, payload: dict[str, Any]) -> None:
    with run.writing(name) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as exc:  # torch reports a failed write (a full disk) this way
            raise WorkFailed(f"could not write {run.path / name} (disk full?): {exc}") from exc


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong file: all mean unusable
        raise VggError(
            f"{path} is corrupted or not a vgg checkpoint ({type(exc).__name__}); "
            "start a new run or restore the file",
            exit_code=1,
        ) from exc


def model_payload(model: VGG, extra: dict[str, Any]) -> dict[str, Any]:
    """What model.pt holds: the net's shape, its weights (never a compiled wrapper's, and
    with the input normalisation inside) and what evaluation needs (training scales)."""
    return {"spec": model.spec.as_dict(), "state_dict": model.state_dict(), **extra}


def load_payload(path: Path) -> dict[str, Any]:
    """A model.pt payload, old ones completed with their normalisation."""
    payload = load(path)
    if "mean_rgb" in payload:
        std = [1.0 / NetSpec(**payload["spec"]).input_scale] * 3  # what the model multiplied by
        state = with_normalisation(payload["state_dict"], payload["mean_rgb"], std)
        payload = {**payload, "state_dict": state}
    return payload


def load_model(
    run: ModelRun, dataset: DatasetRun | None = None, root: Path | None = None
) -> tuple[VGG, dict[str, Any]]:
    """The trained net of a model run and everything saved with it; given a dataset, a net
    whose outputs are that dataset's classes (`payload_for`)."""
    payload = payload_for(run, dataset, root)
    model = VGG(NetSpec(**payload["spec"]))
    model.load_state_dict(payload["state_dict"])
    return model, payload


def payload_for(
    run: ModelRun, dataset: DatasetRun | None = None, root: Path | None = None
) -> dict[str, Any]:
    """A model run's payload; used on `dataset`, with fc8 cut down to the dataset's classes,
    by wnid, when the run was trained on other classes (imported ImageNet-1k weights,
    another dataset). `root` finds the model's own class list (default: its run's root)."""
    payload = load_payload(run.weights())
    if dataset is None or run.dataset() == dataset.label:
        return payload
    own = run.classes(root or run.path.parent.parent)
    return for_classes(payload, own, dataset.classes())


def for_classes(payload: dict[str, Any], own: ClassList, wanted: ClassList) -> dict[str, Any]:
    """A payload whose fc8 gives the `wanted` classes' logits alone, in their order (by
    wnid); unchanged when the class lists are the same."""
    indices = indices_for(own, wanted)
    if indices is None:
        return payload
    state, spec = keep_classes(payload["state_dict"], NetSpec(**payload["spec"]), indices)
    return {**payload, "state_dict": state, "spec": spec.as_dict()}


class RunCheckpoints:
    """The training loop's checkpoint store inside a run version being written.

    Every save takes a new name (checkpoint-000001.pt, -000002, ...) and only then drops the
    older ones, so a kill between the rename and the manifest update leaves the previous,
    recorded checkpoint intact.
    """

    def __init__(self, run: RunWriter) -> None:
        self.run = run

    def recorded(self) -> list[str]:
        return [n for n in self.run.recorded() if n.startswith(CHECKPOINT_PREFIX)]

    def save(self, state: dict[str, Any]) -> None:
        previous = self.recorded()
        number = int(previous[-1][len(CHECKPOINT_PREFIX) : -3]) + 1 if previous else 1
        save(self.run, f"{CHECKPOINT_PREFIX}{number:06d}.pt", state)
        for name in previous:
            self.run.remove_output(name)

    def latest(self) -> dict[str, Any] | None:
        """The newest recorded checkpoint that matches its sha256 and loads; None if there
        is none. A damaged one is set aside (NAME.damaged) with a line saying so, and the one
        before it is tried: a damaged checkpoint must not leave a run that the same command
        can never finish."""
        for name in reversed(self.recorded()):
            try:
                if not self.run.has_output(name):
                    raise VggError("it does not match its recorded sha256")
                return load(self.run.path / name)
            except VggError as exc:
                aside = self.run.set_aside(name)
                left = self.recorded()
                then = "trying the one before" if left else "training starts over"
                console.print(f"[yellow]{name} is damaged ({exc}): set aside as {aside.name}; "
                              f"{then}[/]")
        return None

    def clear(self) -> None:
        for name in self.recorded():
            self.run.remove_output(name)


class LeadCheckpoints:
    """The checkpoint store of every rank: rank 0 writes into the run (`RunCheckpoints`)
    while the others wait for it; on resume rank 0 reads and verifies the checkpoint and
    sends it to all, so no rank needs to see rank 0's filesystem. When rank 0 fails (full
    disk, corrupted checkpoint) every rank fails with it instead of waiting."""

    def __init__(self, cluster: Cluster, run: RunWriter | None) -> None:
        self.cluster = cluster
        self.store = RunCheckpoints(run) if run is not None else None

    def save(self, state: dict[str, Any]) -> None:
        store = self.store
        lead_does(self.cluster, lambda: store.save(state) if store is not None else None)

    def latest(self) -> dict[str, Any] | None:
        store = self.store
        found = lead_does(self.cluster, lambda: store.latest() if store is not None else None)
        return self.cluster.broadcast(found)

    def clear(self) -> None:
        if self.store is not None:
            self.store.clear()


class RunMetrics:
    """metrics.jsonl of a run version being written: one JSON object per line, cut back to
    what the restored checkpoint had seen when a run resumes; and the same rows as
    TensorBoard event files in tensorboard/ (`Board`). `truncate` starts both."""

    def __init__(self, run: RunWriter) -> None:
        self.run, self.path = run, run.path / METRICS_FILE
        self.board: Board | None = None

    def truncate(self, lines: int) -> None:
        kept = self.path.read_text().splitlines(keepends=True)[:lines] if lines else []
        self.path.write_text("".join(kept))
        self.board = Board(self.run.path / BOARD_FOLDER, [json.loads(row) for row in kept])

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.board is not None:
            self.board.add(row)

    def record(self) -> None:
        self.run.record_output(METRICS_FILE)
        if self.board is not None:
            self.board.close()
            for events in sorted((self.run.path / BOARD_FOLDER).iterdir()):
                self.run.record_output(f"{BOARD_FOLDER}/{events.name}")


class Board:
    """A run's curves for TensorBoard: each numeric field of a metrics row is a scalar
    `KIND/FIELD` (train loss is `step/loss`, validation error `epoch/val_top1_err`) at its
    optimizer step, flushed with the row, so the event files hold every row the JSON lines
    do. Resumed at step K (the last row kept), a purge marker hides what a killed attempt
    logged from K on and the kept rows of step K are logged again: one continuous curve."""

    def __init__(self, folder: Path, kept: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # the tensorboard package's writer

        last = kept[-1]["step"] if kept else None
        if last is None and folder.exists():  # started over: no earlier row is kept
            shutil.rmtree(folder)
        self.writer = SummaryWriter(str(folder), purge_step=last)
        for row in kept:
            if row["step"] == last:
                self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        for field, value in row.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and field not in ("kind", "epoch", "step"):
                self.writer.add_scalar(f"{row['kind']}/{field}", value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _NoMetrics:
    """What ranks other than 0 log to: nothing."""

    def truncate(self, lines: int) -> None:
        pass

    def append(self, row: dict[str, Any]) -> None:
        pass


NO_METRICS = _NoMetrics()
