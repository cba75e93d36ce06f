"""ConvNet fusion (Sect. 4.4): average the softmax posteriors of several models. Pure numpy."""

from __future__ import annotations

import numpy as np

from vggcli.errors import VggError


def average(posteriors: list[np.ndarray]) -> np.ndarray:
    """Equal-weight mean of (N, classes) posteriors that describe the same images."""
    shapes = {p.shape for p in posteriors}
    if len(shapes) != 1:
        raise VggError(f"posteriors of different shapes cannot be fused: {sorted(shapes)}")
    return np.mean([p.astype(np.float64) for p in posteriors], axis=0)


def check_compatible(members: list[dict]) -> None:
    """Members must describe the same images in the same order with the same classes."""
    keys = ("dataset", "val_index_sha256", "num_images", "num_classes")
    first = members[0]
    for member in members[1:]:
        for key in keys:
            if member[key] != first[key]:
                raise VggError(
                    f"cannot fuse {first['model']} and {member['model']}: different {key} "
                    f"({first[key]} vs {member[key]})"
                )
