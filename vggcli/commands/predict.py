"""`vgg predict`: options -> request -> the predict stage (a query: it writes no run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import (
    MAX_IMAGES,
    Device,
    Precision,
    RunsRoot,
    at_least,
    existing_path,
    one_of,
    parse_scales,
    run_reference,
    runs_root,
    scales_text,
    user_errors,
)
from vggcli.stages.arguments import FUSION_MODES


@user_errors
def command(
    run: Annotated[str, typer.Argument(callback=run_reference, help="A trained or imported model run, e.g. runs/D (latest complete version) or runs/D/v002.")],
    images: Annotated[list[Path], typer.Argument(parser=existing_path, help="JPEG or PNG files (any mode; EXIF orientation applied), or folders searched for them.", show_default=False)],
    mode: Annotated[str, typer.Option(callback=one_of(*FUSION_MODES), help="dense (fully convolutional over the whole image), crop (5x5 grid of crops), or dense+crop (both, averaged).")] = "dense",
    scales: Annotated[str | None, typer.Option(callback=scales_text, help="Test scales Q, e.g. 256,384,512; default: the model's multi-scale Q ({S-32, S, S+32}, or {Smin, middle, Smax} for jittered S), posteriors averaged over them.")] = None,
    top: Annotated[int, typer.Option(callback=at_least(1, MAX_IMAGES), help="How many classes to list per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout (a list of {image, top: [{rank, wnid, name, probability}]}) instead of tables.")] = False,
    precision: Precision = "auto",
    device: Device = "auto",
    root: RunsRoot = None,
) -> None:
    """The top classes of each image under a model run, with the paper's dense multi-scale protocol and mirror averaging (as the model was trained), exactly as `vgg evaluate` scores an image."""
    from vggcli.stages import predict as stage

    request = stage.PredictRequest(
        run, tuple(images), mode, parse_scales(scales), precision, device
    )
    stage.show(stage.run(request, runs_root(root)), top, as_json)
