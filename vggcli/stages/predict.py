"""The predict stage: image files -> each image's top-k classes under a model run.

A query, not an experiment: it writes no run, and says which model version answered. Each
image is evaluated exactly as `vgg evaluate` evaluates a validation image: the same
Evaluator, methods, test scales and mirror averaging, the posteriors averaged over scales
(and over dense and crop for dense+crop) by the same function. By default that is the paper's
dense multi-scale protocol at the model's own multi-scale Q.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from vggcli import checkpoints, device
from vggcli.artifacts import ModelRun, resolve_as
from vggcli.data.image_files import expand
from vggcli.eval_settings import FUSION_MODES, EvalSettings, Mode, parse_mode
from vggcli.evaluate import Evaluator, assemble, by_method, evaluate_method
from vggcli.progress import console, progress_bar
from vggcli.stages.common import read_images

__all__ = ["PredictRequest", "Predictions", "run", "show"]


@dataclass(frozen=True)
class PredictRequest:
    run: str  # a model run: runs/D, D or runs/D/v002
    images: tuple[Path, ...]  # files, or folders searched for JPEG and PNG files
    mode: str = Mode.DENSE
    scales: tuple[int, ...] | None = None  # default: the model's multi-scale Q
    precision: str = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class Predictions:
    model: str  # the model version that answered, e.g. D/v002
    settings: EvalSettings
    images: list[Path]
    posteriors: np.ndarray  # (images, classes), rows in image order
    classes: list[dict[str, Any]]  # index, wnid, name, in output order

    def top(self, row: int, k: int) -> list[dict[str, Any]]:
        """The k most probable classes of one image (ties: the lower class index first)."""
        probs = self.posteriors[row]
        order = np.argsort(-probs, kind="stable")[:k]
        return [
            {
                "rank": rank,
                "wnid": self.classes[c]["wnid"],
                "name": self.classes[c]["name"],
                "probability": float(probs[c]),
            }
            for rank, c in enumerate(order, start=1)
        ]


def run(request: PredictRequest, root: Path) -> Predictions:
    """Every file decoded first (a bad one fails before any compute), then the model."""
    model_run = resolve_as(request.run, root, ModelRun)
    chosen = device.pick(request.device)
    settings = EvalSettings(
        parse_mode(request.mode, FUSION_MODES),
        request.scales or model_run.default_test_scales(multi_scale=True),
        model_run.crop(),
        device.precision_for(chosen, request.precision),
        flip=model_run.flips(),
    )
    paths = expand(request.images)
    with progress_bar() as bar:
        images = read_images(bar, paths)
        model, _ = checkpoints.load_model(model_run)
        classes = model_run.classes(root)
        _say(model_run.label, settings)
        evaluator = Evaluator(model, settings, chosen)
        per_scale = {}
        for method in settings.methods():
            for q in settings.scales:
                task = bar.add_task(f"{method} Q={q}", total=len(images))
                advance = functools.partial(bar.advance, task)
                part = evaluate_method(evaluator, images, method, q, advance)
                per_scale[(method, q)] = assemble([part], len(images))
    posteriors = by_method(settings, per_scale)[settings.mode]
    return Predictions(model_run.label, settings, paths, posteriors, classes)


def _say(model: str, settings: EvalSettings) -> None:
    """Which model version answers, and how (on stderr: stdout may be JSON)."""
    scales = ", ".join(str(q) for q in settings.scales)
    mirror = "with mirror" if settings.flip else "no mirror"
    console.print(f"model: [bold]{model}[/] ({settings.mode}, Q = {scales}, {mirror})")


def show(predictions: Predictions, top: int, as_json: bool) -> None:
    """A table per image on stdout, or one JSON document and nothing else."""
    k = min(top, len(predictions.classes))
    rows = [
        {"image": str(path), "top": predictions.top(i, k)}
        for i, path in enumerate(predictions.images)
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    out = Console(highlight=False)
    for row in rows:
        # the path on its own unwrapped line: a table title would wrap it at the table's width
        out.print(row["image"], soft_wrap=True, markup=False)
        table = Table("rank", "probability", "wnid", "name")
        for entry in row["top"]:
            table.add_row(
                str(entry["rank"]), f"{entry['probability']:.4f}", entry["wnid"], entry["name"]
            )
        out.print(table)
