"""`vgg import-weights`: options -> request -> the import stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import (
    RunsRoot,
    done,
    existing_file,
    one_of,
    run_name,
    runs_root,
    user_errors,
)
from vggcli.config import TORCHVISION_ARCHITECTURES


@user_errors
def command(
    file: Annotated[Path, typer.Argument(parser=existing_file, help="A local torchvision vgg11/vgg13/vgg16/vgg19 state dict (.pth), e.g. torch.save(torchvision.models.vgg16(weights=...).state_dict(), 'vgg16.pth').")],
    net: Annotated[str | None, typer.Option(callback=one_of(*TORCHVISION_ARCHITECTURES), help="A, B, D or E (vgg11, vgg13, vgg16, vgg19); checked against the file. Default: the file's.")] = None,
    name: Annotated[str | None, typer.Option(callback=run_name, help="Run to write (default torchvision-vgg16 and so on).")] = None,
    root: RunsRoot = None,
) -> None:
    """Import torchvision's VGG weights as a model run (ImageNet-1k classes, torchvision's normalisation inside the model) that evaluate, fuse, finetune-scale, train --init-from, predict, features and export take. Nothing is downloaded."""
    from vggcli.stages import import_weights as stage

    done(stage.run(stage.ImportRequest(file, net, name), runs_root(root)).path)
