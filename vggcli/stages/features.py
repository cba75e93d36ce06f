"""The features stage: image files -> one L2-normalised descriptor per image (Appendix B).

`vgg features runs/D photos/ --out photos.npy` writes `photos.npy` ((images, dim) float32,
one row per image) and `photos.json` beside it: the images in row order, the model version,
layer, scales and aggregation that made the rows. Neither file is a run (the user names
where they go), but both are written whole or not at all, and never over an existing file.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from vggcli import checkpoints, device
from vggcli.artifacts import ModelRun, resolve_as
from vggcli.data.image_files import expand
from vggcli.descriptors import Describer, Layer, combine, describe_at
from vggcli.errors import VggError
from vggcli.files import writing_new
from vggcli.progress import console, progress_bar
from vggcli.stages.common import read_images

__all__ = ["FeaturesRequest", "PAPER_SCALES", "run"]

PAPER_SCALES = (256, 384, 512)  # Appendix B's Caltech scales (VOC adds 640 and 768)


@dataclass(frozen=True)
class FeaturesRequest:
    run: str  # a model run: runs/D, D or runs/D/v002
    inputs: tuple[Path, ...]  # files, or folders searched for JPEG and PNG files
    out: Path  # the .npy to write; the image list goes beside it as .json
    scales: tuple[int, ...] = PAPER_SCALES
    stack: bool = False  # concatenate the scales' descriptors instead of averaging them
    layer: str = Layer.FC7
    precision: str = "auto"
    device: str = "auto"
    batch: int = 16  # images of the same rescaled size per forward pass (twice that with mirrors)


def run(request: FeaturesRequest, root: Path) -> Path:
    """Every check and every file decoded before any compute; the outputs written last."""
    listing = _targets(request.out)
    layer = Layer(request.layer)
    model_run = resolve_as(request.run, root, ModelRun)
    _check_scales(request.scales, model_run.crop(), layer)
    paths = expand(request.inputs)
    chosen = device.pick(request.device)
    precision = device.precision_for(chosen, request.precision)
    with progress_bar() as bar:
        images = read_images(bar, paths)
        model, _ = checkpoints.load_model(model_run)
        how = "stacked" if request.stack else "averaged"
        scales = ", ".join(str(q) for q in request.scales)
        console.print(f"model: [bold]{model_run.label}[/] ({layer}, Q = {scales} {how})")
        describer = Describer(model, layer, chosen, precision)
        per_scale = []
        for q in request.scales:
            task = bar.add_task(f"{layer} Q={q}", total=len(images))
            advance = functools.partial(bar.advance, task)
            per_scale.append(describe_at(describer, images, q, request.batch, advance))
    descriptors = combine(per_scale, request.stack)
    record = {
        "model": model_run.label,
        "layer": str(layer),
        "scales": list(request.scales),
        "stack": request.stack,
        "precision": precision,
        "shape": list(descriptors.shape),
        "images": [str(p) for p in paths],  # row i describes images[i]
    }
    _write(request.out, listing, descriptors, record)
    console.print(f"image list: {listing}")
    return request.out


def _targets(out: Path) -> Path:
    """The image list's path beside `out`; neither may exist (refused before any work)."""
    if out.suffix != ".npy":
        raise VggError(f"must name a .npy file (e.g. features.npy), not '{out}'", field="out")
    listing = out.with_suffix(".json")
    for path in (out, listing):
        if path.exists():
            raise VggError(f"{path} exists: features never overwrite a file; choose another --out")
    return listing


def _check_scales(scales: tuple[int, ...], crop: int, layer: Layer) -> None:
    """fc7 needs at least one fc6 window (Q >= the crop); pool5 one pooled cell (Q >= 32)."""
    least = crop if layer == Layer.FC7 else 32
    if not scales or min(scales) < least:
        raise VggError(
            f"each test scale Q must be at least {least} for {layer} (this model's crop is "
            f"{crop}), not {min(scales, default='none')}",
            field="scales",
        )


def _write(out: Path, listing: Path, descriptors: np.ndarray, record: dict[str, Any]) -> None:
    """Both files or neither: the .npy goes again when its list cannot be written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with _new_file(out) as fh:
        np.save(fh, descriptors)
    try:
        with _new_file(listing) as fh:
            fh.write((json.dumps(record, indent=2) + "\n").encode())
    except BaseException:
        out.unlink(missing_ok=True)  # ours: writing_new just created it
        raise


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[BinaryIO]:
    """`writing_new`, with a file that appeared meanwhile as one line, not a traceback."""
    try:
        with writing_new(path) as fh:
            yield fh
    except FileExistsError:
        raise VggError(
            f"{path} appeared while the features were computed; it was not overwritten",
            exit_code=1,
        ) from None
