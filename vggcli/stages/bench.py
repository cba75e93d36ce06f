"""The bench stage: `vgg bench train` and `vgg bench evaluate`, each a new version of a
bench run holding results.json (benchmarks never resume: a half-measured run is no result)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vggcli import device, distributed
from vggcli.artifacts import BenchRun, Kind
from vggcli.bench import (
    EvaluateBench,
    TrainBench,
    evaluation_cost,
    scaling_throughput,
    train_step_throughput,
)
from vggcli.distributed import SINGLE, Cluster
from vggcli.progress import console
from vggcli.runs import RunVersion
from vggcli.stages.common import open_on_lead

__all__ = ["EvaluateBench", "TrainBench", "evaluate", "train"]


def train(bench: TrainBench, root: Path) -> RunVersion:
    """One process: a training step of full-size D beside torchvision's vgg16. Under torchrun
    (`--nproc N`): DDP throughput per rank beside one process alone."""
    several = distributed.from_environment().world_size > 1
    with distributed.joined("auto" if several else "cpu") as (cluster, chosen):
        if cluster.distributed:
            measure = functools.partial(scaling_throughput, bench, cluster, chosen, console.print)
        else:
            measure = functools.partial(train_step_throughput, bench, console.print)
        return _measure(root, "bench-train", bench, measure, cluster, device.label(chosen))


def evaluate(bench: EvaluateBench, root: Path) -> RunVersion:
    """Dense against 150-crop evaluation of full-size D."""
    measure = functools.partial(evaluation_cost, bench, report=console.print)
    return _measure(root, "bench-evaluate", bench, measure, SINGLE, device.cpu_label())


def _measure(
    root: Path,
    name: str,
    bench: TrainBench | EvaluateBench,
    measure: Callable[[], Any],
    cluster: Cluster,
    label: str,
) -> RunVersion:
    writer = open_on_lead(cluster, root, name, Kind.BENCH, asdict(bench), label, resume=False)
    with writer or contextlib.nullcontext():
        result = measure()
        if writer is not None:
            writer.write_json(BenchRun.RESULTS, result)
    return RunVersion(Path(cluster.broadcast(str(writer.path) if writer else None)))
