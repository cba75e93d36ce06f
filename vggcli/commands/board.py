"""`vgg tensorboard [RUNS_ROOT]`: TensorBoard on every run's curves."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import bounded, folder_path, runs_root, user_errors
from vggcli.errors import VggError


@user_errors
def command(
    root: Annotated[Path | None, typer.Argument(parser=folder_path, envvar="VGG_RUNS", help="The runs root (default ./runs; env VGG_RUNS).", show_default=False)] = None,
    port: Annotated[int, typer.Option(callback=bounded(1, 65535), help="Port to serve on (localhost; forward it with ssh -L from a cluster).")] = 6006,
    print_only: Annotated[bool, typer.Option("--print", help="Print the command that starts TensorBoard and stop.")] = False,
) -> None:
    """Start TensorBoard on the runs root: every training and fine-tune run's loss, lr, train and validation errors, img/s and input stall, per step and epoch (each run writes them to RUN/vNNN/tensorboard/ beside metrics.jsonl)."""
    folder = runs_root(root)
    if not folder.is_dir():
        raise VggError(f"no runs root {folder}: give RUNS_ROOT, or set VGG_RUNS")
    argv = [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--port", str(port)]
    typer.echo(shlex.join(argv))
    if not print_only:
        sys.stdout.flush()
        os.execv(sys.executable, argv)  # TensorBoard in this process, until Ctrl-C
