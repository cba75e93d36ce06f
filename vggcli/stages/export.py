"""The export stage: a model run -> an export run.

`vgg export runs/D` writes `runs/D-export/vNNN` holding `crop.onnx` and `dense.onnx` (or
`crop.pt` and `dense.pt` for TorchScript) and `export.json`, which says what they take and
return and the class of each output index (when the model's dataset run is at hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggcli import checkpoints, device, export
from vggcli.artifacts import ExportRun, Kind, ModelRun, resolve_as
from vggcli.errors import VggError
from vggcli.progress import console
from vggcli.runs import RunVersion
from vggcli.stages.common import lead_run

__all__ = ["ExportRequest", "run"]


@dataclass(frozen=True)
class ExportRequest:
    run: str  # a model run: runs/D, D or runs/D/v002
    format: str = "onnx"
    name: str | None = None  # default: <model run>-export


def run(request: ExportRequest, root: Path) -> RunVersion:
    """Export a trained run's crop and dense classifiers; a file already written by an
    interrupted export of the same version and format is kept."""
    fmt = export.check_format(request.format)  # before a run is opened for nothing
    model_run = resolve_as(request.run, root, ModelRun)
    model, _ = checkpoints.load_model(model_run)
    classes = _classes(model_run, root)
    config = {"model": model_run.label, "format": fmt}
    with lead_run(
        root,
        request.name or f"{model_run.name}-export",
        Kind.EXPORT,
        config,
        parents=[model_run.version],
        device=device.cpu_label(),
    ) as out:
        writer = out.writer
        files = {}
        for which, classifier in export.classifiers(model).items():
            files[which] = ExportRun.model_name(which, fmt)
            if not writer.has_output(files[which]):
                with writer.writing(files[which]) as tmp:
                    export.save(classifier, fmt, tmp)
        described = export.description(model, fmt, files, model_run.flips())
        writer.write_json(ExportRun.DESCRIPTION, {"model": model_run.label, **described, **classes})
    return out.version


def _classes(model_run: ModelRun, root: Path) -> dict[str, Any]:
    """{"classes": [{index, wnid, name}]}: the model's dataset's, or its own when imported;
    nothing (and a warning) when its dataset run is not under this runs root: the files
    work without it."""
    try:
        return {"classes": model_run.classes(root)}
    except VggError as exc:
        console.print(f"[yellow]warning:[/] export.json will name no classes: {exc}")
        return {}
