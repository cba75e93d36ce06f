"""`vgg adopt TRAIN.beton VAL.beton`: options -> request -> the adopt stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import (
    RunsRoot,
    Workers,
    done,
    existing_file,
    processes,
    run_name,
    runs_root,
    user_errors,
)


@user_errors
def command(
    train: Annotated[Path, typer.Argument(parser=existing_file, help="The training .beton: an RGBImageField 'image' and an IntField 'label', as ffcv-imagenet's write_imagenet.sh writes them (JPEG, raw or both).")],
    val: Annotated[Path, typer.Argument(parser=existing_file, help="The validation .beton, with the same fields and labels.")],
    name: Annotated[str | None, typer.Option(callback=run_name, help="Run name (default: the training file's folder name).")] = None,
    wnids: Annotated[Path | None, typer.Option(parser=existing_file, help="The class order: one wnid per line, line i naming label i. Default: ILSVRC-2012's 1000 wnids sorted (the order of ffcv-imagenet's ImageFolder).")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the files into the run instead of linking to them.")] = False,
    root: RunsRoot = None,
    jobs: Workers = None,
) -> None:
    """Make a dataset run from FFCV files you already have, without rewriting them: checks their fields and labels, links (or copies) them, records their sha256, computes the mean RGB and PCA colour statistics in one pass over the training file, and writes classes.json and the sample index as `vgg preprocess` does."""
    from vggcli.stages import adopt as stage

    request = stage.AdoptRequest(train, val, name or "", wnids, copy, processes(jobs))
    done(stage.run(request, runs_root(root)).path)
