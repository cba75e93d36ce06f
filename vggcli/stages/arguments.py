"""What the command line is checked against before any stage runs: run names and the runs a
command reads (the run layer's), and the closed sets of values options take. Torch- and
FFCV-free: commands/common.py checks every option with these as typer parses it."""

from __future__ import annotations

from pathlib import Path

from vggcli.device import PRECISIONS
from vggcli.errors import VggError
from vggcli.eval_settings import FUSION_MODES, MODES
from vggcli.runs import check_name, locate

__all__ = ["FUSION_MODES", "MODES", "PRECISIONS", "check_name", "check_reference"]


def check_reference(ref: str, root: Path) -> None:
    """A run a command reads (`runs/D`, `D`, `runs/D/v002`) must be there, under the runs root
    or as a path; whether it is complete, sound and of the right kind is its stage's to say."""
    if not ref.strip():
        raise VggError("is empty; name a run such as runs/D")
    locate(ref, root)
