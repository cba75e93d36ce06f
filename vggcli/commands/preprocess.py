"""`vgg preprocess DIR`: options -> PreprocessConfig -> the preprocess stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import (
    MAX_IMAGES,
    MAX_SCALE,
    RunsRoot,
    Workers,
    at_least,
    bounded,
    done,
    existing_file,
    existing_folder,
    one_of,
    processes,
    run_name,
    runs_root,
    user_errors,
)
from vggcli.config import WRITE_MODES


@user_errors
def command(
    source: Annotated[Path, typer.Argument(parser=existing_folder, help="ILSVRC-layout folder: train/<wnid>/*.JPEG and val/.")],
    name: Annotated[str | None, typer.Option(callback=run_name, help="Run name (default: the folder's name).")] = None,
    classes: Annotated[int | None, typer.Option(callback=at_least(1, MAX_IMAGES), help="Keep only this many classes, evenly spaced over the sorted wnids (smoke tests on real ImageNet).")] = None,
    train_per_class: Annotated[int | None, typer.Option(callback=at_least(1, MAX_IMAGES), help="Keep the first N training images of each class.")] = None,
    val_per_class: Annotated[int | None, typer.Option(callback=at_least(1, MAX_IMAGES), help="Keep the first N validation images of each class.")] = None,
    val_labels: Annotated[Path | None, typer.Option(parser=existing_file, help="Labels of a flat val/ folder: LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt (found automatically in the usual places).")] = None,
    synsets: Annotated[Path | None, typer.Option(parser=existing_file, help="Synset order for the devkit ground truth: meta.mat, or one wnid per line in ILSVRC2012_ID order.")] = None,
    max_side: Annotated[int, typer.Option(callback=bounded(0, 4 * MAX_SCALE), help="Store images with their longer side at most this many pixels; 683 keeps a 4:3 image's smallest side at 512, the largest training scale S. 0 = keep full size.")] = 683,
    write_mode: Annotated[str, typer.Option(callback=one_of(*WRITE_MODES), help="FFCV storage: jpg, raw, proportion (a random share as JPEG) or smart.")] = "jpg",
    jpeg_quality: Annotated[int, typer.Option(callback=bounded(1, 100), help="JPEG quality of stored images.")] = 90,
    compress_probability: Annotated[float, typer.Option(callback=bounded(0, 1), help="Share stored as JPEG when --write-mode proportion.")] = 0.5,
    max_skipped_fraction: Annotated[float, typer.Option(callback=bounded(0, 1), help="Fail if more than this share of a split is missing or cannot be decoded.")] = 0.01,
    root: RunsRoot = None,
    jobs: Workers = None,
) -> None:
    """Write an ILSVRC-layout folder into FFCV train.beton / val.beton and compute the training set's mean RGB (the paper's only preprocessing) and RGB covariance."""
    from vggcli.stages import preprocess as stage

    storage = stage.StorageSettings(max_side or None, write_mode, jpeg_quality,
                              compress_probability if write_mode == "proportion" else 1.0)
    config = stage.PreprocessConfig(
        source=source,
        name=name or source.resolve().name,
        workers=processes(jobs),
        subset=stage.Subset(classes, train_per_class, val_per_class),
        storage=storage,
        val_labels=val_labels,
        synsets=synsets,
        max_skipped_fraction=max_skipped_fraction,
    )
    done(stage.run(config, runs_root(root)).path)
