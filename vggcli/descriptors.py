"""Image descriptors (Appendix B): a trained net's fc7 as a generic image representation.

At each scale Q the image, rescaled so its smallest side is Q, goes through the net densely:
fc6 and fc7 at every window, as dense evaluation runs the classifier. The fc7 map (after its
ReLU; dropout is off at test time) is averaged spatially, then with its mirror image's. The
scales are averaged (the paper's VOC setting) or stacked (its Caltech setting), and the
result is L2-normalised: what the paper hands to a linear SVM.

`pool5` swaps fc7 for the last conv block's output after its max-pool (what fc6 reads),
pooled, mirrored and normalised the same way: a smaller descriptor, not the paper's.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import numpy as np
import torch

from vggcli.device import Precision, autocast
from vggcli.evaluate import (
    Images,
    decode_workers,
    prepared_ahead,
    rescale,
    size_groups,
    to_tensor,
)
from vggcli.models import VGG


class Layer(StrEnum):
    FC7 = "fc7"
    POOL5 = "pool5"


class Describer:
    """Feeds same-size images to a net and returns their pooled, mirror-averaged maps."""

    def __init__(
        self, model: VGG, layer: Layer, device: torch.device, precision: Precision
    ) -> None:
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.layer, self.device, self.precision = layer, device, precision

    @property
    def dim(self) -> int:
        if self.layer == Layer.FC7:
            return self.model.head.fc7.out_features
        return self.model.convs()[-1].out_channels

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) rescaled images -> (N, dim) float32: each image's map averaged over
        its positions, and with its mirror image's."""
        both = np.concatenate([images, images[:, :, ::-1]])
        with autocast(self.device, self.precision):
            x = to_tensor(both, self.device)
            maps = self.model.fc7_map(x) if self.layer == Layer.FC7 else self.model.pool5_map(x)
        pooled = maps.float().mean(dim=(2, 3)).cpu()
        return ((pooled[: len(images)] + pooled[len(images) :]) / 2).numpy()


def describe_at(
    describer: Describer, images: Images, q: int, batch: int, advance: Callable[[int], None]
) -> np.ndarray:
    """(N, dim) descriptors at scale Q, rows in image order, before normalisation; images
    that rescale to the same size go through the net together, the next ones decoded and
    rescaled in the background meanwhile (as evaluation does)."""
    out = np.zeros((len(images), describer.dim), dtype=np.float32)
    groups = list(size_groups(images.shapes, q, batch))
    workers = decode_workers(describer.device)

    def rescaled(indices: list[int]) -> np.ndarray:
        return np.stack([rescale(images[i], q) for i in indices])

    for indices, stacked in prepared_ahead(groups, rescaled, workers):
        out[indices] = describer(stacked)
        advance(len(indices))
    return out


def combine(per_scale: list[np.ndarray], stack: bool) -> np.ndarray:
    """The scales averaged (or concatenated with `stack`), then each row L2-normalised; a row
    of zeros (every unit dead) stays zero. float32."""
    if stack:
        joined = np.concatenate(per_scale, axis=1).astype(np.float64)
    else:
        joined = np.mean([d.astype(np.float64) for d in per_scale], axis=0)
    norms = np.linalg.norm(joined, axis=1, keepdims=True)
    return (joined / np.maximum(norms, 1e-12)).astype(np.float32)
