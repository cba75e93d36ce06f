"""Class lists and how one model's classes map onto a dataset's, by wnid. No torch.

A class list is what a dataset run stores as classes.json: `{"index", "wnid", "name"}` per
class, in label order. A model trained here has its dataset's list; a model imported from
torchvision weights has ImageNet-1k's in torchvision's order (the sorted wnids), shipped in
the package as `data/imagenet_classes.tsv`. A model is used on a dataset whose classes are
a subset of its own (in any order) by keeping the logits of those classes alone, in the
dataset's order (`indices_for`), so the softmax runs over the dataset's classes only.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from vggcli.errors import VggError

ClassList = list[dict[str, Any]]

IMAGENET = "imagenet-1k"  # how an imported run names its class list


def imagenet_classes() -> ClassList:
    """ImageNet-1k's 1000 classes in torchvision's order, with torchvision's short names."""
    text = resources.files("vggcli.data").joinpath("imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    return [{"index": i, "wnid": wnid, "name": name} for i, (wnid, name) in enumerate(rows)]


def wnids(classes: ClassList) -> list[str]:
    return [str(c["wnid"]) for c in classes]


def indices_for(model: ClassList, dataset: ClassList) -> list[int] | None:
    """The model's output index of each of the dataset's classes, in the dataset's order;
    None when the lists are the same (nothing to map). A dataset class the model was never
    trained on is an error naming it."""
    model_wnids, dataset_wnids = wnids(model), wnids(dataset)
    if model_wnids == dataset_wnids:
        return None
    position = {wnid: i for i, wnid in enumerate(model_wnids)}
    unknown = [w for w in dataset_wnids if w not in position]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        shown = ", ".join(unknown[:3]) + more
        raise VggError(
            f"the model does not know {len(unknown)} of the dataset's {len(dataset_wnids)} "
            f"classes ({shown}): it can only be used on datasets whose classes it has"
        )
    return [position[w] for w in dataset_wnids]
