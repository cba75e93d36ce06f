"""The Python entry point for notebooks: `from vggcli import load_model`.

    model = load_model("runs/D")            # latest complete version, hash-checked
    probs = model(images).softmax(1)        # images: (N, 3, 224, 224) float 0-255 RGB
    model.classes[probs.argmax(1)[0]]       # {"index", "wnid", "name"}
"""

from __future__ import annotations

from pathlib import Path

from vggcli.artifacts import ModelRun, resolve_as
from vggcli.checkpoints import load_model as _load
from vggcli.models import VGG

__all__ = ["load_model"]


def load_model(run: str | Path, root: str | Path = "runs") -> VGG:
    """The net of a trained or imported model run (`runs/D`, `D` or `runs/D/v002`; its
    latest complete version unless one is named), its weights checked against their
    recorded sha256, in eval mode on the CPU. It takes 0-255 RGB (N, 3, H, W) floats and
    returns logits (spatially averaged for images larger than its crop). `model.classes`
    lists its outputs (index, wnid, name); `model.run` is the version it came from."""
    model_run = resolve_as(run, Path(root), ModelRun)
    model, _ = _load(model_run)
    model.classes = model_run.classes(model_run.path.parent.parent)  # the run's own root
    model.run = model_run.label
    return model.eval()
