"""The bench stage: `vgg bench train`, `vgg bench evaluate` and `vgg bench loader`, each a
new version of a bench run holding results.json (benchmarks never resume: a half-measured run
is no result)."""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vggcli import device, distributed
from vggcli.artifacts import BenchRun, DatasetRun, Kind, resolve_as
from vggcli.bench import (
    EvaluateBench,
    TrainBench,
    evaluation_cost,
    evaluation_overlap,
    scaling_throughput,
    train_step_throughput,
)
from vggcli.distributed import SINGLE, Cluster
from vggcli.errors import VggError
from vggcli.loader_bench import LoaderBench, loader_throughput, sample, write_image_folder
from vggcli.preprocess_bench import PreprocessBench, preprocess_throughput
from vggcli.progress import console, progress_bar
from vggcli.runs import RunVersion
from vggcli.stages.common import lead_run

__all__ = ["EvaluateBench", "LoaderBench", "TrainBench", "evaluate", "loader", "train"]


def train(bench: TrainBench, root: Path) -> RunVersion:
    """One process: a training step of full-size D beside torchvision's vgg16. Under torchrun
    (`--nproc N`): DDP throughput per rank beside one process alone."""
    with distributed.joined(bench.device) as (cluster, chosen):
        if cluster.distributed:
            measure = functools.partial(scaling_throughput, bench, cluster, chosen, console.print)
        else:
            measure = functools.partial(train_step_throughput, bench, chosen, console.print)
        config = asdict(bench)
        return _measure(root, "bench-train", config, measure, cluster, device.label(chosen))


def preprocess(bench: PreprocessBench, root: Path) -> RunVersion:
    """Each pass of `vgg preprocess` against its ceiling, on ImageNet-sized JPEGs drawn for
    the purpose, with the projection for ILSVRC-2012."""
    with tempfile.TemporaryDirectory(prefix="vgg-bench-preprocess-") as scratch:
        samples = _imagenet_sized_images(Path(scratch), bench.images)[: bench.images]

        def measure() -> dict[str, Any]:
            return preprocess_throughput(bench, samples, console.print)

        config = {**asdict(bench), "storage": asdict(bench.storage)}
        return _measure(root, "bench-preprocess", config, measure, SINGLE,
                        device.cpu_label(bench.workers))


def evaluate(bench: EvaluateBench, root: Path) -> RunVersion:
    """Dense against 150-crop evaluation of net D; the whole evaluation path against the
    model alone (net A by default) on ImageNet-sized JPEGs drawn for the purpose."""
    with tempfile.TemporaryDirectory(prefix="vgg-bench-evaluate-") as scratch:
        count = max(bench.images, bench.crop_images)
        beton = _imagenet_sized_beton(Path(scratch), count, device.available_cores())
        device.pick("cpu")  # torch gets back the cores that importing FFCV took

        def measure() -> dict[str, Any]:
            return {
                "dense_vs_crop": evaluation_cost(bench, report=console.print),
                "end_to_end": evaluation_overlap(bench, beton, report=console.print),
            }

        config = asdict(bench)
        return _measure(root, "bench-evaluate", config, measure, SINGLE, device.cpu_label())


def loader(bench: LoaderBench, data: str | None, root: Path) -> RunVersion:
    """Our training loader beside torchvision's, stock FFCV's and the decode ceiling, on a
    dataset run's training images, or else on ImageNet-sized images drawn for the purpose."""
    with tempfile.TemporaryDirectory(prefix="vgg-bench-loader-") as scratch:
        if data is None:
            beton = _imagenet_sized_beton(Path(scratch), bench.images, bench.workers)
            label = "drawn: imagenet-sized"
        else:
            dataset = resolve_as(data, root, DatasetRun, field="data")
            beton, label = dataset.beton("train"), dataset.label
        encoded = sample(beton, bench.images)
        if len(encoded.ids) == 0:
            raise VggError(f"{label} stores no training image as JPEG", field="data")
        folder = Path(scratch) / "image-folder"
        write_image_folder(encoded, folder)
        measure = functools.partial(loader_throughput, bench, beton, encoded, folder, console.print)
        config = {**asdict(bench), "data": label}
        return _measure(
            root, "bench-loader", config, measure, SINGLE, device.cpu_label(bench.workers)
        )


def _imagenet_sized_images(scratch: Path, images: int) -> list[tuple[Path, int]]:
    """At least `images` ImageNet-sized JPEGs (500x375, q90, about 100 kB: see
    `vgg make-demo-data --imagenet-sized`) drawn into `scratch`: (path, label) each."""
    from vggcli.data.layout import discover
    from vggcli.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(
        train_per_class=math.ceil(images / 10), val_per_class=1, imagenet_sized=True
    )
    total = spec.classes * (spec.train_per_class + spec.val_per_class)
    with progress_bar() as bar:
        drawing = bar.add_task("drawing ImageNet-sized images", total=total)
        generate(scratch / "images", spec, lambda: bar.advance(drawing))
    return [(s.path, s.label) for s in discover(scratch / "images").train]


def _imagenet_sized_beton(scratch: Path, images: int, workers: int) -> Path:
    """The drawn images (`_imagenet_sized_images`) written as a training .beton."""
    from vggcli.data.beton import StorageSettings, write_beton

    samples = _imagenet_sized_images(scratch, images)
    beton = scratch / "train.beton"
    with progress_bar() as bar:
        writing = bar.add_task("writing train.beton", total=len(samples))
        write_beton(
            beton,
            "train.beton",
            samples,
            StorageSettings(),
            workers,
            lambda n: bar.advance(writing, n),
        )
    return beton


def _measure(
    root: Path,
    name: str,
    config: dict[str, Any],
    measure: Callable[[], Any],
    cluster: Cluster,
    label: str,
) -> RunVersion:
    with lead_run(
        root, name, Kind.BENCH, config, device=label, cluster=cluster, resume=False
    ) as out:
        result = measure()
        if out.writer is not None:
            out.writer.write_json(BenchRun.RESULTS, result)
    return out.version
