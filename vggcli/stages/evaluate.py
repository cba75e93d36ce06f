"""The evaluate stage: a model run -> an evaluation run.

`vgg evaluate runs/D` writes `runs/D-eval/vNNN` holding float32 posteriors per method and
scale (`dense.npy`, `crop-Q384.npy`, ...), the labels, and the dataset version and image
order they belong to, so that `vgg fuse` never recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vggcli import checkpoints, device, distributed
from vggcli.artifacts import DatasetRun, EvaluationRun, Kind, ModelRun, resolve_as
from vggcli.data.beton import BetonImages, check_decodes
from vggcli.distributed import Cluster
from vggcli.errors import VggError
from vggcli.eval_settings import EvalSettings, Mode, parse_mode
from vggcli.evaluate import Evaluator, assemble, by_method, evaluate_method
from vggcli.metrics import error_table
from vggcli.progress import console, progress_bar
from vggcli.runs import RunVersion, RunWriter
from vggcli.stages.common import lead_run, print_errors, read_on_every_rank, save_posteriors

__all__ = ["EvaluateRequest", "run"]


@dataclass(frozen=True)
class EvaluateRequest:
    run: str  # a model run: runs/D, D or runs/D/v002
    mode: str = Mode.DENSE
    multi_scale: bool = False
    scales: tuple[int, ...] | None = None  # default: the paper's for the training scale
    precision: str = "auto"
    device: str = "auto"
    name: str | None = None  # default: <model run>-eval
    flip: bool | None = None  # mirror averaging; default: as the model was trained
    data: str | None = None  # a dataset run; default: the model's (imported models: required)


def run(request: EvaluateRequest, root: Path) -> RunVersion:
    """Evaluate a trained run, in this process or sharded over a torchrun job; rank 0
    gathers the posteriors in image order and writes the evaluation run."""
    model_run = resolve_as(request.run, root, ModelRun)
    dataset = _dataset(model_run, request.data, root)
    own_data = dataset.label == model_run.dataset()
    with distributed.joined(request.device) as (cluster, chosen):
        model, payload, images = read_on_every_rank(
            cluster,
            chosen,
            lambda: (
                *checkpoints.load_model(model_run, dataset, root),
                BetonImages(dataset.beton("val")),
            ),
        )
        settings = EvalSettings(
            parse_mode(request.mode),
            request.scales or model_run.default_test_scales(request.multi_scale),
            model_run.crop(),
            device.precision_for(chosen, request.precision),
            flip=model_run.flips() if request.flip is None else request.flip,
        )
        config = {
            "model": model_run.label,
            "mode": settings.mode,
            "scales": list(settings.scales),
            "crop": settings.crop,
            "precision": settings.precision,
            **({} if settings.flip else {"flip": False}),  # as before the switch when on
            **({} if own_data else {"data": dataset.label}),  # recorded when not the model's
        }
        evaluator = Evaluator(model, settings, chosen)
        with lead_run(
            root,
            request.name or f"{model_run.name}-eval",
            Kind.EVALUATION,
            config,
            parents=[model_run.version, dataset.version],
            device=device.label(chosen),
            cluster=cluster,
        ) as out:
            writer = out.writer
            per_scale = _posteriors(writer, evaluator, images, cluster)
            (failed,) = cluster.sum([float(len(images.failed))], chosen)
            if note := check_decodes(int(failed), len(images), "validation"):
                console.print(f"[yellow]warning:[/] {note}")
            if writer is not None:
                writer.set_result("decode_failures", int(failed))
                rows = _finish(writer, settings, per_scale, images.labels)
                for key, value in _membership(model_run, dataset, len(images)).items():
                    writer.set_result(key, value)
    if writer is not None:
        print_errors(f"{model_run.label} ({payload.get('stage', '')})", rows)
    return out.version


def _dataset(model_run: ModelRun, data: str | None, root: Path) -> DatasetRun:
    """The dataset named, else the one the model was trained on (an imported model has
    none: it must be named)."""
    if data is None and model_run.dataset() is None:
        raise VggError(
            f"{model_run.label} was imported and has no dataset of its own: name the dataset "
            "run to evaluate it on with --data (its classes are matched by wnid)"
        )
    return resolve_as(data, root, DatasetRun, "data") if data else model_run.dataset_run(root)


def _posteriors(
    writer: RunWriter | None, evaluator: Evaluator, images: BetonImages, cluster: Cluster
) -> dict[tuple[Mode, int], np.ndarray]:
    """Each method at each scale, this rank's share computed, rank 0 gathering them all in
    image order and saving each as it comes (the others get an empty dict)."""
    settings = evaluator.settings
    per_scale = {}
    with progress_bar() as bar:
        for method in settings.methods():
            for q in settings.scales:
                task = bar.add_task(f"{method} Q={q}", total=len(images))
                part = evaluate_method(
                    evaluator,
                    images,
                    method,
                    q,
                    lambda n, t=task: bar.advance(t, n),
                    cluster.rank,
                    cluster.world_size,
                )
                parts = cluster.gather(part)
                if writer is not None:
                    per_scale[(method, q)] = assemble(parts, len(images))
                    name = EvaluationRun.posteriors_name(method, q)
                    save_posteriors(writer, name, per_scale[(method, q)])
    return per_scale


def _finish(
    writer: RunWriter,
    settings: EvalSettings,
    per_scale: dict[tuple[Mode, int], np.ndarray],
    labels: np.ndarray,
) -> list[dict[str, Any]]:
    """Scales averaged per method, methods averaged for dense+crop, labels, error rows."""
    per_method = by_method(settings, per_scale)
    for method, probs in per_method.items():
        save_posteriors(writer, EvaluationRun.posteriors_name(method), probs)
    with writer.writing(EvaluationRun.LABELS) as tmp, open(tmp, "wb") as fh:
        np.save(fh, labels)
    rows = _rows(settings, labels, per_scale, per_method)
    writer.set_result("errors", rows)
    return rows


def _rows(
    settings: EvalSettings,
    labels: np.ndarray,
    per_scale: dict[tuple[Mode, int], np.ndarray],
    per_method: dict[Mode, np.ndarray],
) -> list[dict[str, Any]]:
    """Error rows: each method at each scale (when there are several), then combined."""
    named = {}
    if len(settings.scales) > 1:
        named = {(method, (q,)): probs for (method, q), probs in per_scale.items()}
    named |= {(method, tuple(settings.scales)): probs for method, probs in per_method.items()}
    rows = []
    for (method, scales), probs in named.items():
        (row,) = error_table({method: probs}, labels)
        rows.append({**row, "method": str(method), "scales": list(scales)})
    return rows


def _membership(model_run: ModelRun, dataset: DatasetRun, num_images: int) -> dict[str, Any]:
    """What fusion checks: same dataset version, same image order, same classes."""
    return {
        "model": model_run.label,
        "dataset": dataset.label,
        "val_index_sha256": dataset.val_index_sha256(),
        "num_images": num_images,
        "num_classes": dataset.num_classes(),
    }
