"""`vgg export`: options -> request -> the export stage."""

from __future__ import annotations

from typing import Annotated

import typer

from vggcli.commands.common import (
    RunsRoot,
    done,
    one_of,
    run_name,
    run_reference,
    runs_root,
    user_errors,
)
from vggcli.config import EXPORT_FORMATS


@user_errors
def command(
    run: Annotated[str, typer.Argument(callback=run_reference, help="A trained run, e.g. runs/D (latest complete version) or runs/D/v002.")],
    fmt: Annotated[str, typer.Option("--format", callback=one_of(*EXPORT_FORMATS), help="onnx (onnxruntime and other runtimes; needs the export extra) or torchscript (torch.jit.load; deprecated by PyTorch).")] = "onnx",
    name: Annotated[str | None, typer.Option(callback=run_name, help="Run to write (default: <run>-export, e.g. runs/D-export).")] = None,
    root: RunsRoot = None,
) -> None:
    """Export a trained run as a crop classifier and a dense one (any image size; one image, mirror averaging left to the caller), both taking 0-255 RGB and returning softmax posteriors; see docs/export.md."""
    from vggcli.stages import export as stage

    done(stage.run(stage.ExportRequest(run, fmt, name), runs_root(root)).path)
