"""`vgg evaluate` and `vgg fuse`: options -> request -> the evaluate / fuse stage."""

from __future__ import annotations

from typing import Annotated

import typer

from vggcli.commands.common import (
    Device,
    NoVerify,
    NProc,
    Precision,
    RunsRoot,
    device_name,
    done,
    one_of,
    parse_scales,
    relaunch,
    run_name,
    run_reference,
    runs_root,
    scales_text,
    user_errors,
)
from vggcli.errors import VggError
from vggcli.stages.arguments import FUSION_MODES, MODES, PRECISIONS


@user_errors
def evaluate_command(
    run: Annotated[str, typer.Argument(callback=run_reference, help="A trained run, e.g. runs/D (latest complete version) or runs/D/v002.")],
    mode: Annotated[str, typer.Option(callback=one_of(*MODES), help="dense (fully convolutional over the whole image + flip), crop (5x5 grid of crops + flips, 50 per scale), dense+crop (both, averaged), centre (one centre crop: the training-time validation).")] = "dense",
    multi_scale: Annotated[bool, typer.Option(help="Test scales Q = {S-32, S, S+32} for fixed S, {Smin, middle, Smax} for jittered S (Table 4); default a single Q = S or the jitter middle (Table 3).")] = False,
    scales: Annotated[str | None, typer.Option(callback=scales_text, help="Explicit test scales Q, e.g. 256,384,512.")] = None,
    precision: Precision = "auto",
    device: Device = "auto",
    name: Annotated[str | None, typer.Option(callback=run_name, help="Run to write (default: <run>-eval, e.g. runs/D-eval).")] = None,
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="Average each view's posteriors with its mirror image's (the paper's); default: as the model was trained, so --no-flip at training follows the model.", show_default=False)] = None,
    data: Annotated[str | None, typer.Option(callback=run_reference, help="Dataset run to evaluate on (default: the one the model was trained on; needed for imported weights). Its classes are matched to the model's by wnid: the softmax runs over the dataset's classes only.")] = None,
    nproc: NProc = 1,
    no_verify: NoVerify = False,
    root: RunsRoot = None,
) -> None:
    """Top-1/top-5 error of a trained run at test scale(s) Q, saving per-image posteriors."""
    from vggcli.stages import evaluate as stage

    test_scales = parse_scales(scales)  # a bad value is said once, before the ranks start
    if multi_scale and test_scales is not None:
        raise VggError("give --scales or --multi-scale, not both (--scales lists every Q)",
                       field="scales")
    relaunch(nproc)
    request = stage.EvaluateRequest(
        run, mode, multi_scale, test_scales, precision, device, name, flip, data
    )
    done(stage.run(request, runs_root(root)).path)


@user_errors
def fuse_command(
    runs: Annotated[list[str], typer.Argument(callback=run_reference, help="Two or more trained runs (e.g. runs/D runs/E) or evaluation runs holding the mode's posteriors.")],
    mode: Annotated[str, typer.Option(callback=one_of(*FUSION_MODES), help="dense, crop or dense+crop posteriors to average.")] = "dense",
    multi_scale: Annotated[bool, typer.Option(help="Fuse multi-scale posteriors (Table 6 does); --no-multi-scale for single-scale.")] = True,
    name: Annotated[str | None, typer.Option(callback=run_name, help="Run to write (default fuse-D+E).")] = None,
    precision: Annotated[str, typer.Option(callback=one_of(*PRECISIONS), help="auto, bf16 or fp32 (for members evaluated now).")] = "auto",
    device: Annotated[str, typer.Option(callback=device_name, help="auto (CUDA when present), cpu or cuda[:N] (for members evaluated now).")] = "auto",
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="Use posteriors averaged with the mirror image's (the paper's); default: as each member was trained.", show_default=False)] = None,
    no_verify: NoVerify = False,
    root: RunsRoot = None,
) -> None:
    """Average the softmax posteriors of several runs (ConvNet fusion, Table 6); members without stored posteriors for the mode are evaluated first."""
    from vggcli.stages import fuse as stage

    request = stage.FuseRequest(tuple(runs), mode, multi_scale, precision, device, name, flip)
    done(stage.run(request, runs_root(root)).path)
