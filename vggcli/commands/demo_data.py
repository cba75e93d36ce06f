"""`vgg make-demo-data DIR`: the embedded tiny ILSVRC-shaped dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import at_least, bounded, done, folder_path, one_of, user_errors
from vggcli.config import DEMO_STYLES, VAL_LAYOUTS

MAX_DEMO_PER_CLASS = 100_000  # generated images are written to disk: 10^13 would fill it


@user_errors
def command(
    out: Annotated[Path, typer.Argument(parser=folder_path, help="Folder to create (must be new or empty).")],
    classes: Annotated[int, typer.Option(callback=bounded(2, 10), help="Number of classes (at most 10 shapes).")] = 10,
    train_per_class: Annotated[int, typer.Option(callback=at_least(1, MAX_DEMO_PER_CLASS), help="Training images per class.")] = 100,
    val_per_class: Annotated[int, typer.Option(callback=at_least(1, MAX_DEMO_PER_CLASS), help="Validation images per class.")] = 20,
    seed: Annotated[int, typer.Option(callback=bounded(0, 2**32 - 1), help="Everything follows from this seed.")] = 0,
    min_side: Annotated[int, typer.Option(callback=bounded(32, 4096), help="Smallest image side, in pixels, of the shortest images.")] = 96,
    max_side: Annotated[int, typer.Option(callback=bounded(32, 4096), help="Longest image side, in pixels.")] = 400,
    val_layout: Annotated[str, typer.Option(callback=one_of(*VAL_LAYOUTS), help="folders (val/<wnid>/), loc (flat + LOC_val_solution.csv) or devkit (flat + ILSVRC2012 devkit ground truth and meta.mat).")] = "loc",
    style: Annotated[str, typer.Option(callback=one_of(*DEMO_STYLES), help="shapes (flat shapes and textures: the demo's), scenes (textured objects in cluttered scenes: harder) or photos (patches of ten real photographs, one class each, train and val from disjoint regions; needs scikit-image).")] = "shapes",
    clutter: Annotated[int, typer.Option(callback=bounded(0, 40), help="scenes: distractor patches per image, on average.")] = 6,
    min_object: Annotated[float, typer.Option(callback=bounded(0.05, 1.0), help="scenes: smallest object, as a share of the shorter side.")] = 0.3,
    max_object: Annotated[float, typer.Option(callback=bounded(0.05, 1.0), help="scenes: largest object, as a share of the shorter side.")] = 0.7,
    occlusion: Annotated[float, typer.Option(callback=bounded(0.0, 1.0), help="scenes: chance that a patch hides part of the object.")] = 0.3,
    imagenet_sized: Annotated[bool, typer.Option(help="ImageNet-sized images: 500x375 (either orientation), fine photo-like grain, quality 90, about 100 kB each (for `vgg bench loader`; --min-side/--max-side unused).")] = False,
) -> None:
    """Generate a tiny, deterministic ILSVRC-layout dataset (shapes, textured objects in cluttered scenes, or patches of real photographs, at varied scales and positions) for the demo and for smoke tests; no download needed."""
    from vggcli.stages import demo_data as stage

    scenes = stage.SceneSettings(clutter, min_object, max_object, occlusion)
    spec = stage.SyntheticSpec(
        classes,
        train_per_class,
        val_per_class,
        seed,
        min_side,
        max_side,
        val_layout,
        style,
        scenes,
        imagenet_sized,
    )
    done(stage.run(spec, out))
