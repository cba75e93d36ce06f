"""vgg: reproduce Simonyan & Zisserman's VGG paper. `from vggcli import load_model` for notebooks
(see vggcli/api.py); importing the package itself loads no torch."""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":  # torch is imported only when the entry point is asked for
        from vggcli.api import load_model

        return load_model
    raise AttributeError(f"module 'vggcli' has no attribute {name!r}")
