"""A trained VGG as two self-contained classifiers, in ONNX or TorchScript files.

`CropClassifier` takes a batch of crop x crop views and returns their softmax posteriors (what
multi-crop evaluation computes per view). `DenseClassifier` takes one whole image of any height
and width >= the crop and returns the softmax of its spatially averaged class score map:
Sect. 3.2's dense evaluation of that image (`Evaluator` without the mirror; averaging in the
mirror image's posteriors is the caller's, one more call). Both take float32 0-255 RGB, NCHW:
the training set's mean and std are inside, as in the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vggcli.config import EXPORT_FORMATS
from vggcli.errors import VggError
from vggcli.models import VGG

INPUT, OUTPUT = "image", "posteriors"
OPSET = 20  # torch 2.14's default, pinned so that a torch upgrade does not change the files


class CropClassifier(nn.Module):
    """(N, 3, crop, crop) 0-255 RGB -> (N, classes) softmax posteriors."""

    def __init__(self, model: VGG) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)

    def onnx_input(self) -> tuple[torch.Tensor, dict[int, Any]]:
        """An example input and its dynamic axes (the batch); a batch of 2, since
        torch.export specialises a dimension whose example size is 1."""
        crop = self.model.spec.crop
        return torch.full((2, 3, crop, crop), 128.0), {0: torch.export.Dim("batch")}


class DenseClassifier(nn.Module):
    """(1, 3, H, W) 0-255 RGB, H and W >= crop -> (1, classes): the softmax of the class
    score map averaged over its positions, the classifier run as convolutions
    (`Head.conv_score_map`: the same numbers as `VGG.score_map`)."""

    def __init__(self, model: VGG) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.features(self.model.normalised(x))
        scores = self.model.head.conv_score_map(features)
        return torch.softmax(scores.mean(dim=(2, 3)), dim=1)

    def onnx_input(self) -> tuple[torch.Tensor, dict[int, Any]]:
        """A non-square example larger than the crop, so that neither side is taken for
        the other or for the crop; height and width dynamic from the crop up."""
        crop = self.model.spec.crop
        dims = {2: torch.export.Dim("height", min=crop), 3: torch.export.Dim("width", min=crop)}
        return torch.full((1, 3, crop + 32, crop + 64), 128.0), dims


def classifiers(model: VGG) -> dict[str, CropClassifier | DenseClassifier]:
    """The two exported models, named as their files will be; fp32, eval mode (no dropout)."""
    model = model.float().eval()
    return {"crop": CropClassifier(model).eval(), "dense": DenseClassifier(model).eval()}


def check_format(fmt: str) -> str:
    """A known format whose exporter is installed, or one line saying what to do."""
    if fmt not in EXPORT_FORMATS:
        raise VggError(f"unknown format '{fmt}': choose onnx or torchscript", field="format")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise VggError(
                "onnx needs the onnx and onnxscript packages, the project's export extra: "
                "`just setup` installs it (or pip install -e '.[export]'); torchscript needs "
                "neither",
                field="format",
            ) from None
    return fmt


def save(classifier: CropClassifier | DenseClassifier, fmt: str, path: Path) -> None:
    """Write `classifier` to `path` in `fmt` (one of EXPORT_FORMATS)."""
    if fmt == "onnx":
        _save_onnx(classifier, path)
    else:
        _save_torchscript(classifier, path)


def _save_onnx(classifier: CropClassifier | DenseClassifier, path: Path) -> None:
    """torch.onnx's torch.export-based exporter (dynamo=True, the default since torch 2.9).
    The TorchScript-based one (dynamo=False) also keeps H and W dynamic for these nets, but
    it is deprecated (a warning on every call) and no longer developed; this one is
    maintained, checks while tracing that the model holds for the whole range of H and W
    it is given, and writes a cleaner graph. It needs onnxscript.
    One file with the weights inside (external_data=False): the largest net, E, is ~550 MB,
    under protobuf's 2 GB, and a side file would be named after our temporary path."""
    example, dynamic = classifier.onnx_input()
    program = torch.onnx.export(
        classifier,
        (example,),
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=(dynamic,),
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
    )
    program.save(path, external_data=False)


def _save_torchscript(classifier: CropClassifier | DenseClassifier, path: Path) -> None:
    """torch.jit.script, not trace: scripting keeps every shape symbolic (and the crop
    path's own shape test as code), so the dense model takes any H and W by construction.
    PyTorch has deprecated TorchScript; docs/export.md says so once, instead of a
    warning on every export."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        torch.jit.save(torch.jit.script(classifier), str(path))


def description(model: VGG, fmt: str, files: dict[str, str], mirror: bool) -> dict[str, Any]:
    """What the exported files take and return (export.json), `files` naming each
    classifier's file; `mirror`: whether evaluation averages in the mirror image's
    posteriors (as the model was trained: not after --no-flip)."""
    spec, classes = model.spec, model.spec.num_classes
    return {
        "format": fmt,
        **({"opset": OPSET} if fmt == "onnx" else {}),
        "net": spec.net,
        "crop": spec.crop,
        "num_classes": classes,
        "input": {
            "name": INPUT,
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [0, 255],
            "normalisation": "inside the model: (x - mean) / std per channel",
            "mean": model.mean.tolist(),
            "std": model.std.tolist(),
        },
        "output": {"name": OUTPUT, "what": "softmax posteriors, in the classes' order"},
        "files": {
            files["crop"]: {
                "input_shape": ["N", 3, spec.crop, spec.crop],
                "output_shape": ["N", classes],
                "what": "the posteriors of each crop",
            },
            files["dense"]: {
                "input_shape": [1, 3, "H", "W"],
                "min_side": spec.crop,
                "output_shape": [1, classes],
                "what": (
                    "the softmax of the class score map averaged over its positions, of one "
                    "image; evaluation averages it with the mirror image's (x[..., ::-1]) "
                    "when mirror_averaging is true: that second call is the caller's"
                ),
            },
        },
        "mirror_averaging": mirror,
    }
