"""What an evaluation computes: its mode, the methods that mode needs, the test scales Q.

Torch-free, so that fusion can tell which stored posteriors it needs without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vggcli.device import Precision
from vggcli.errors import VggError


class Mode(StrEnum):
    """dense (whole image, fully convolutional), crop (5x5 grid), both averaged, or the
    training-time validation's single centre crop."""

    DENSE = "dense"
    CROP = "crop"
    DENSE_CROP = "dense+crop"
    CENTRE = "centre"


MODES = tuple(Mode)
FUSION_MODES = (Mode.DENSE, Mode.CROP, Mode.DENSE_CROP)


def parse_mode(text: str, allowed: tuple[Mode, ...] = MODES, what: str = "mode") -> Mode:
    if text not in allowed:
        raise VggError(f"unknown {what} '{text}': choose one of {', '.join(allowed)}")
    return Mode(text)


@dataclass(frozen=True)
class EvalSettings:
    mode: Mode
    scales: tuple[int, ...]
    crop: int
    precision: Precision = "bf16"
    batch: int = 16
    flip: bool = True  # average each view's posteriors with its mirror's (the paper's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", parse_mode(self.mode))
        if not self.scales:
            raise VggError("give at least one test scale Q")
        if min(self.scales) < self.crop:
            raise VggError(f"test scale Q={min(self.scales)} is smaller than the crop {self.crop}")

    def methods(self) -> tuple[Mode, ...]:
        """The posteriors this mode computes (dense+crop needs both)."""
        return (Mode.DENSE, Mode.CROP) if self.mode == Mode.DENSE_CROP else (self.mode,)


def default_scales(s_min: int, s_max: int, multi_scale: bool, crop: int = 224) -> tuple[int, ...]:
    """Q = S (or the jitter middle); multi-scale {S-32, S, S+32} or {Smin, middle, Smax}.

    For nets trained on smaller crops the 32 shrinks in proportion (32 * crop / 224), so
    that the test scales stay as close to S, relative to the crop, as in the paper. A Q
    below the crop (S-32 for a net trained at S = crop) is raised to the crop, once: dense
    evaluation needs the crop's size at least (the paper's S-32 = 224 is exactly it).
    """
    middle = (s_min + s_max) // 2
    if not multi_scale:
        return (middle,)
    if s_min == s_max:
        delta = round(32 * crop / 224)
        return tuple(dict.fromkeys(max(q, crop) for q in (s_min - delta, s_min, s_min + delta)))
    return (s_min, middle, s_max)
