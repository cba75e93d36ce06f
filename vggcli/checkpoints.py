"""Saving and loading model weights and training state, safely.

Files are written to a temporary name and renamed (through RunWriter.writing), and loaded
with `weights_only=True`: a checkpoint can never run code when it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vggcli.errors import VggError
from vggcli.models import VGG, NetSpec
from vggcli.runs import RunVersion, RunWriter

MODEL_FILE = "model.pt"
CHECKPOINT_PREFIX = "checkpoint-"


def save(run: RunWriter, name: str, payload: dict[str, Any]) -> None:
    with run.writing(name) as tmp:
        torch.save(payload, tmp)


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong file: all mean unusable
        raise VggError(
            f"{path} is corrupted or not a vgg checkpoint ({type(exc).__name__}); "
            "start a new run or restore the file",
            exit_code=1,
        ) from exc


def model_payload(model: VGG, extra: dict[str, Any]) -> dict[str, Any]:
    """What model.pt holds: the net's shape, its weights (never a compiled wrapper's) and
    what evaluation needs to feed it (mean RGB, training scales)."""
    return {"spec": model.spec.as_dict(), "state_dict": model.state_dict(), **extra}


def model_file(version: RunVersion) -> Path:
    """The weights file of a trained run; a clear error if the run holds none."""
    if MODEL_FILE not in version.manifest().get("outputs", {}):
        raise VggError(f"{version.label} is not a trained model run (it has no {MODEL_FILE})")
    return version.path / MODEL_FILE


def load_model(version: RunVersion) -> tuple[VGG, dict[str, Any]]:
    """The trained net of a run version and everything saved with it."""
    payload = load(model_file(version))
    model = VGG(NetSpec(**payload["spec"]))
    model.load_state_dict(payload["state_dict"])
    return model, payload
