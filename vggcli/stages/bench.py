"""The bench stage: `vgg bench train` and `vgg bench evaluate`, each a new version of a
bench run holding results.json (benchmarks never resume: a half-measured run is no result)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from vggcli.artifacts import BenchRun, Kind
from vggcli.bench import EvaluateBench, TrainBench, evaluation_cost, train_step_throughput
from vggcli.device import cpu_label
from vggcli.progress import console
from vggcli.runs import RunVersion, RunWriter
from vggcli.stages.common import announce

__all__ = ["EvaluateBench", "TrainBench", "evaluate", "train"]


def train(bench: TrainBench, root: Path) -> RunVersion:
    """A training step of full-size D beside torchvision's vgg16."""
    with RunWriter.open(
        root,
        "bench-train",
        kind=Kind.BENCH,
        config=asdict(bench),
        device=cpu_label(),
        resume=False,
    ) as writer:
        announce(writer)
        writer.write_json(BenchRun.RESULTS, train_step_throughput(bench, console.print))
    return writer.version


def evaluate(bench: EvaluateBench, root: Path) -> RunVersion:
    """Dense against 150-crop evaluation of full-size D."""
    with RunWriter.open(
        root,
        "bench-evaluate",
        kind=Kind.BENCH,
        config=asdict(bench),
        device=cpu_label(),
        resume=False,
    ) as writer:
        announce(writer)
        writer.write_json(BenchRun.RESULTS, evaluation_cost(bench, report=console.print))
    return writer.version
