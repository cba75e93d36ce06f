"""The import stage: a local torchvision VGG state dict -> a model run every command takes.

`vgg import-weights vgg16.pth` writes `runs/torchvision-vgg16/vNNN` with model.pt (config D,
torchvision's normalisation in the model's mean and std buffers, so it gives torchvision's
logits on 0-255 RGB), ImageNet-1k's class list in torchvision's order, and the source
file's sha256. It has no dataset and no training scale: `vgg evaluate --data` names the
dataset, whose classes are matched by wnid, and the test scales are stated in the run.
Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vggcli import checkpoints
from vggcli.artifacts import Kind, ModelRun
from vggcli.classes import IMAGENET, imagenet_classes
from vggcli.config import TORCHVISION_ARCHITECTURES
from vggcli.errors import VggError
from vggcli.files import sha256_file
from vggcli.runs import RunVersion
from vggcli.stages.common import lead_run
from vggcli.torchvision_weights import IMAGENET_MEAN, IMAGENET_STD, net_of, to_ours

__all__ = ["ImportRequest", "run"]

# The test scales of an imported run: torchvision evaluates at Resize(256) + CenterCrop(224);
# multi-scale takes the paper's {Q-32, Q, Q+32} around it.
TEST_SCALES = {"single": [256], "multi": [224, 256, 288]}


@dataclass(frozen=True)
class ImportRequest:
    file: Path
    net: str | None = None  # checked against the file's; default: the file's
    name: str | None = None  # default: torchvision-vgg16 and so on


def run(request: ImportRequest, root: Path) -> RunVersion:
    state = _read_state_dict(request.file)
    net = net_of(state)
    if request.net is not None and request.net != net:
        raise VggError(
            f"{request.file} holds {TORCHVISION_ARCHITECTURES[net]} weights (config {net}), "
            f"not config {request.net}'s "
            f"({TORCHVISION_ARCHITECTURES.get(request.net, 'no torchvision net')})"
        )
    converted, spec = to_ours(state, net)
    if spec.num_classes != len(imagenet_classes()):
        raise VggError(
            f"{request.file} has {spec.num_classes} outputs, not ImageNet-1k's 1000: "
            "the classes of a re-headed net are unknown"
        )
    architecture = TORCHVISION_ARCHITECTURES[net]
    config = _config(request.file, spec.as_dict(), architecture)
    with lead_run(root, request.name or f"torchvision-{architecture}", Kind.MODEL, config) as out:
        writer = out.writer
        if not writer.has_output(ModelRun.CLASSES):
            writer.write_json(ModelRun.CLASSES, imagenet_classes())
        if not writer.has_output(ModelRun.WEIGHTS):
            payload = {"spec": spec.as_dict(), "state_dict": converted,
                       "stage": f"{net}/torchvision {architecture}"}
            checkpoints.save(writer, ModelRun.WEIGHTS, payload)
    return out.version


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors by name, read without running any code it might hold."""
    if not path.is_file():
        raise VggError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled module, a truncated zip, not a torch file at all
        raise VggError(
            f"{path} is not a state dict torch can read safely ({type(exc).__name__}): save "
            "the weights with torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise VggError(f"{path} holds no state dict (a mapping of names to tensors)")
    return state


def _config(file: Path, net: dict[str, Any], architecture: str) -> dict[str, Any]:
    """What identifies the import: the source file's hash, the net, how it takes its input."""
    return {
        "net": net,
        "source": {
            "library": "torchvision",
            "architecture": architecture,
            "file": str(file.resolve()),
            "sha256": sha256_file(file),
        },
        "classes": IMAGENET,
        "preprocessing": {
            "input": "0-255 RGB; the model subtracts its mean buffer and divides by its std",
            "torchvision": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        },
        "test_scales": TEST_SCALES,
    }
