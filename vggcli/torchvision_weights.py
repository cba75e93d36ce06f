"""torchvision's `vgg11/13/16/19` state dicts as our configs A, B, D, E.

torchvision's VGG is the paper's nets with the same layer order, so its `features.N` keys
are ours unchanged; its classifier's Linear layers 0, 3 and 6 are our fc6, fc7 and fc8 (fc6
reads the 7x7x512 map in the same (C, H, W) order, and its adaptive pool is the identity at
224). Its nets take 0-1 RGB normalised by ImageNet's mean and std; ours take 0-255 RGB and
normalise inside, so the same normalisation is carried in the model's buffers:
(x / 255 - m) / s = (x - 255 m) / (255 s).
"""

from __future__ import annotations

import torch

from vggcli.config import CONFIGS, TORCHVISION_ARCHITECTURES, NetSpec
from vggcli.errors import VggError
from vggcli.models import VGG

# torchvision's ImageNet preprocessing (transforms.Normalize in its weights' transforms)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIFIER = {"classifier.0": "head.fc6", "classifier.3": "head.fc7", "classifier.6": "head.fc8"}


def net_of(state: dict[str, torch.Tensor]) -> str:
    """Which of A, B, D, E a torchvision VGG state dict holds, by its conv count; the
    batch-normalised variants (not the paper's nets) are refused."""
    if any(key.endswith("running_mean") for key in state):
        raise VggError(
            "this is a batch-normalised VGG (vgg*_bn): the paper's nets have no "
            "normalisation layers; import vgg11, vgg13, vgg16 or vgg19 weights"
        )
    convs = sum(1 for k, v in state.items() if k.startswith("features.") and v.ndim == 4)
    for net in TORCHVISION_ARCHITECTURES:
        if convs == sum(1 for item in CONFIGS[net] if isinstance(item, int)):
            return net
    raise VggError(
        f"not a torchvision vgg11/13/16/19 state dict ({convs} conv weights found): pass the "
        "file torchvision's model.state_dict() was saved to"
    )


def to_ours(state: dict[str, torch.Tensor], net: str) -> tuple[dict[str, torch.Tensor], NetSpec]:
    """Our state dict and spec for torchvision's `state`, normalisation included; any key or
    shape that does not fit config `net` is an error naming it."""
    spec = NetSpec(net=net, num_classes=_classes(state))
    converted = {_our_name(key): value.float() for key, value in state.items()}
    converted["mean"] = torch.tensor(IMAGENET_MEAN) * 255
    converted["std"] = torch.tensor(IMAGENET_STD) * 255
    with torch.device("meta"):
        expected = VGG(spec).state_dict()
    if set(converted) != set(expected):
        odd = sorted(set(converted) ^ set(expected))
        architecture = TORCHVISION_ARCHITECTURES[net]
        raise VggError(f"the weights do not fit {architecture} ({', '.join(odd[:3])})")
    for key, value in converted.items():
        if value.shape != expected[key].shape:
            raise VggError(
                f"{key} has shape {tuple(value.shape)}, {TORCHVISION_ARCHITECTURES[net]} needs "
                f"{tuple(expected[key].shape)}"
            )
    return converted, spec


def _our_name(key: str) -> str:
    layer, _, parameter = key.rpartition(".")
    return f"{CLASSIFIER.get(layer, layer)}.{parameter}"


def _classes(state: dict[str, torch.Tensor]) -> int:
    if "classifier.6.weight" not in state:
        raise VggError("not a torchvision VGG state dict (no classifier.6.weight)")
    return int(state["classifier.6.weight"].shape[0])
