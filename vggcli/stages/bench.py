"""The bench stage: `vgg bench train` and `vgg bench evaluate`, each a new version of a
bench run holding results.json (benchmarks never resume: a half-measured run is no result)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vggcli.artifacts import BenchRun, Kind
from vggcli.bench import EvaluateBench, TrainBench, evaluation_cost, train_step_throughput
from vggcli.device import cpu_label
from vggcli.progress import console
from vggcli.runs import RunVersion, RunWriter
from vggcli.stages.common import announce

__all__ = ["EvaluateBench", "TrainBench", "evaluate", "train"]


def train(bench: TrainBench, root: Path) -> RunVersion:
    """A training step of full-size D beside torchvision's vgg16."""
    return _measure(root, "bench-train", bench, lambda: train_step_throughput(bench, console.print))


def evaluate(bench: EvaluateBench, root: Path) -> RunVersion:
    """Dense against 150-crop evaluation of full-size D."""
    return _measure(
        root, "bench-evaluate", bench, lambda: evaluation_cost(bench, report=console.print)
    )


def _measure(
    root: Path, name: str, bench: TrainBench | EvaluateBench, measure: Callable[[], Any]
) -> RunVersion:
    with RunWriter.open(
        root, name, kind=Kind.BENCH, config=asdict(bench), device=cpu_label(), resume=False
    ) as writer:
        announce(writer)
        writer.write_json(BenchRun.RESULTS, measure())
    return writer.version
