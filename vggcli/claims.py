"""The paper's claims (Sect. 4) checked on our numbers, each with its noise.

Two nets scored on the same validation images are compared with McNemar's exact test: only
the images where exactly one of them is right carry information, and under "no difference"
each of those is equally likely to favour either net (a fair coin). Two error rates on
different image sets fall back to a two-proportion z-test. A single error rate gets its
binomial standard error. Pure numpy and math, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

SIGNIFICANCE = 0.05  # two-sided; below it a difference is called real, above it noise


@dataclass(frozen=True)
class Score:
    """One evaluated model's top-1 error, with per-image correctness when the posteriors
    were read, and the identity of the image set (the validation index's sha256)."""

    error: float
    num_images: int
    images: str = ""
    correct: np.ndarray | None = None

    @property
    def standard_error(self) -> float:
        """Binomial standard error of the error rate."""
        if self.num_images <= 0:
            return float("nan")
        return math.sqrt(self.error * (1 - self.error) / self.num_images)


def mcnemar_exact(first: np.ndarray, second: np.ndarray) -> tuple[int, int, float]:
    """(images only `first` gets right, images only `second` gets right, two-sided exact
    p-value): the smaller count's binomial tail under p = 1/2, doubled, at most 1."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    only_first = int(np.sum(first & ~second))
    only_second = int(np.sum(~first & second))
    n = only_first + only_second
    if n == 0:
        return only_first, only_second, 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1))
    return only_first, only_second, min(1.0, 2 * tail / 2**n)


def unpaired_p(a: Score, b: Score) -> float:
    """Two-sided p of a two-proportion z-test (pooled), for different image sets."""
    pooled = (a.error * a.num_images + b.error * b.num_images) / (a.num_images + b.num_images)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / a.num_images + 1 / b.num_images))
    if spread == 0:
        return 1.0
    return math.erfc(abs(a.error - b.error) / spread / math.sqrt(2))


class Expect(StrEnum):
    LOWER = "lower"  # the first model's error is lower than the second's
    NOT_LOWER = "not lower"  # the first does not beat the second (LRN, saturation)


class Verdict(StrEnum):
    HOLDS = "holds"
    FAILS = "does not hold"
    NOISE = "within noise"
    NOT_RUN = "not run"


@dataclass(frozen=True)
class Claim:
    """`first` vs `second`: the paper's top-1 errors (or a sentence where it gives none)
    and ours, when both were run."""

    text: str
    paper: tuple[float, float] | str
    expect: Expect = Expect.LOWER
    first: Score | None = None
    second: Score | None = None

    def test(self) -> tuple[str, float] | None:
        """(how the difference was tested, its p-value); None when not run."""
        a, b = self.first, self.second
        if a is None or b is None:
            return None
        paired = a.correct is not None and b.correct is not None and a.images == b.images
        if paired and a.images and len(a.correct) == len(b.correct):  # type: ignore[arg-type]
            wins, losses, p = mcnemar_exact(a.correct, b.correct)  # type: ignore[arg-type]
            return f"McNemar {wins} vs {losses} images, p {_p(p)}", p
        if a.num_images and b.num_images:
            return f"unpaired z, p {_p(unpaired_p(a, b))}", unpaired_p(a, b)
        return None

    def verdict(self) -> Verdict:
        tested = self.test()
        if tested is None or self.first is None or self.second is None:
            return Verdict.NOT_RUN
        real = tested[1] < SIGNIFICANCE
        lower = self.first.error < self.second.error
        if self.expect == Expect.LOWER:
            if not real:
                return Verdict.NOISE
            return Verdict.HOLDS if lower else Verdict.FAILS
        return Verdict.FAILS if real and lower else Verdict.HOLDS


def _p(p: float) -> str:
    return f"= {p:.2g}" if p >= 0.001 else "< 0.001"


def with_error(score: Score) -> str:
    """`13.0 ± 2.4`: top-1 error and its standard error, in %."""
    return f"{100 * score.error:.1f} ± {100 * score.standard_error:.1f}"
