"""`vgg features`: options -> request -> the features stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import (
    Device,
    Precision,
    RunsRoot,
    done,
    existing_path,
    new_file_path,
    parse_scales,
    run_reference,
    runs_root,
    scales_text,
    user_errors,
)


@user_errors
def command(
    run: Annotated[str, typer.Argument(callback=run_reference, help="A trained or imported model run, e.g. runs/D or runs/D/v002.")],
    inputs: Annotated[list[Path], typer.Argument(parser=existing_path, help="Folders (searched recursively for JPEG and PNG files, in sorted order) or image files.", show_default=False)],
    out: Annotated[Path, typer.Option(parser=new_file_path, help="The .npy to write: (images, dim) float32, one L2-normalised row per image; FILE.json beside it lists the images in row order. Never overwritten.", show_default=False)],
    scales: Annotated[str, typer.Option(callback=scales_text, help="Test scales Q (Appendix B's Caltech setting; VOC adds 640,768).")] = "256,384,512",
    stack: Annotated[bool, typer.Option("--stack", help="Concatenate the scales' descriptors (dim x scales) instead of averaging them.")] = False,
    conv5: Annotated[bool, typer.Option("--conv5", help="Describe with the last conv block's output after its max-pool (pool5, 512-d at full width), pooled the same way, instead of the paper's fc7.")] = False,
    precision: Precision = "auto",
    device: Device = "auto",
    root: RunsRoot = None,
) -> None:
    """Appendix B's image descriptors: fc7 (after its ReLU) computed densely over the image at each scale Q, averaged over positions and with the mirror image, averaged (or stacked) over scales, L2-normalised."""
    from vggcli.stages import features as stage

    layer = "pool5" if conv5 else "fc7"
    request = stage.FeaturesRequest(
        run, tuple(inputs), out, parse_scales(scales), stack, layer, precision, device
    )
    done(stage.run(request, runs_root(root)))
