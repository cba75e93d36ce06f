"""The paper's claims (Sect. 4) checked on our numbers, each with its noise.

Every claim compares a first model with a second. Two nets scored on the same validation
images are compared with McNemar's exact test: only the images where exactly one of them is
right carry information, and under "no difference" each of those is equally likely to favour
either net (a fair coin). Two error rates on different image sets fall back to a
two-proportion z-test. A claim that something does *not* help needs more than a failure to
find a difference (which small validation sets always give): a one-sided test that the first
model is not better by as much as `MARGIN`, the half of an equivalence test (TOST) that the
claim makes. About thirty claims are tested at once, so the p-values are adjusted by Holm's
step-down method before any verdict. Pure numpy and math, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

SIGNIFICANCE = 0.05  # family-wise, after Holm's adjustment
# "No better": the first model's top-1 error is lower by less than half a point (absolute),
# less than the smallest gain the paper calls real in Table 3 (C over B, 0.6 points); its
# own "no better" pairs are not gains at all (A-LRN 0.1 points worse than A, E 0.3 worse
# than D).
MARGIN = 0.005
Z_95 = 1.959964  # two-sided 95% normal quantile, for the intervals


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


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest of m p-values times (m - k + 1), never
    below an adjusted p before it, at most 1. Controls the chance of any false verdict."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Difference:
    """The first model's top-1 error minus the second's, with its (Wald) standard error and
    the two-sided p of "no difference"; `counts` (images only the first gets right, only the
    second, all) when paired, `scores` (first, second) when not."""

    value: float
    standard_error: float
    p: float
    method: str  # how it was tested, for the report: "McNemar 12 vs 3 images", "unpaired z"
    counts: tuple[int, int, int] | None = None
    scores: tuple[Score, Score] | None = None

    @staticmethod
    def of(a: Score, b: Score) -> Difference | None:
        """Paired when both were scored on the same images with per-image correctness,
        unpaired when only the error rates are known; None when either has no images."""
        paired = a.correct is not None and b.correct is not None and a.images == b.images
        if paired and a.images and len(a.correct) == len(b.correct):  # type: ignore[arg-type]
            wins, losses, p = mcnemar_exact(a.correct, b.correct)  # type: ignore[arg-type]
            n = len(a.correct)  # type: ignore[arg-type]
            # the paired difference (losses - wins) / n and its standard error
            spread = math.sqrt(max(wins + losses - (losses - wins) ** 2 / n, 0.0)) / n
            method = f"McNemar {wins} vs {losses} images"
            return Difference((losses - wins) / n, spread, p, method, counts=(wins, losses, n))
        if a.num_images and b.num_images:
            spread = math.sqrt(a.standard_error**2 + b.standard_error**2)
            return Difference(a.error - b.error, spread, unpaired_p(a, b), "unpaired z",
                              scores=(a, b))
        return None

    def p_not_better_by(self, margin: float) -> float:
        """One-sided p of "the first is better by at least `margin`" (value <= -margin): small
        when the data show the first is at most `margin` better, or worse.

        Paired: the score test of Nam (1997) and Tango (1998), whose variance is taken at the
        boundary of that hypothesis (the restricted maximum-likelihood cell rates) rather than
        from the observed discordant images: with few of them the observed variance is tiny
        and the Wald test would call 0 vs 1 images on 200 "at most half a point better".
        Unpaired:
        Agresti and Caffo's adjusted Wald test (one image right and one wrong added to each
        set), which never has a zero variance either."""
        if self.counts is not None:
            wins, losses, n = self.counts
            delta = -margin  # the hypothesis's boundary: losses - wins = delta * n on average
            concordant = n - wins - losses
            b = losses * (1 - delta) + wins * (1 - 3 * delta) - 2 * concordant * delta
            c = wins * delta * (1 - delta)
            rate = (b + math.sqrt(b * b + 8 * n * c)) / (4 * n)  # P(only the first right)
            spread = math.sqrt(max(2 * rate + delta - delta * delta, 1e-300) / n)
            return 0.5 * math.erfc((self.value - delta) / spread / math.sqrt(2))
        assert self.scores is not None
        (first_error, first_n), (second_error, second_n) = (
            ((s.error * s.num_images + 1) / (s.num_images + 2), s.num_images + 2)
            for s in self.scores
        )
        value = first_error - second_error
        spread = math.sqrt(
            first_error * (1 - first_error) / first_n + second_error * (1 - second_error) / second_n
        )
        return 0.5 * math.erfc((value + margin) / spread / math.sqrt(2))

    def interval(self) -> tuple[float, float]:
        """The 95% (Wald) confidence interval of the difference."""
        half = Z_95 * self.standard_error
        return self.value - half, self.value + half


class Expect(StrEnum):
    LOWER = "lower"  # the first model's error is lower than the second's
    NOT_LOWER = "not lower"  # the first does not beat the second (LRN, saturation)


class Verdict(StrEnum):
    HOLDS = "holds"
    FAILS = "does not hold"
    NOT_SHOWN = "not shown"
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

    def difference(self) -> Difference | None:
        if self.first is None or self.second is None:
            return None
        return Difference.of(self.first, self.second)


@dataclass(frozen=True)
class Judged:
    """A claim's verdict with the test that decided it: its raw and Holm-adjusted p."""

    claim: Claim
    verdict: Verdict
    test: str = "-"
    p: float = float("nan")
    adjusted: float = float("nan")
    why: str = ""  # what a "not shown" did show: the difference's interval


def judge(claims: list[Claim], margin: float = MARGIN) -> list[Judged]:
    """Every claim's verdict, its p-values adjusted together (Holm).

    A "lower" claim holds when the first is significantly better and does not hold when it is
    significantly worse. A "not lower" claim tests two hypotheses: it does not hold when the
    first is significantly better, and holds when the first is shown to be better by less
    than `margin` (or worse). Neither: not shown, with the interval the data allow.
    """
    tests: list[tuple[int, str, float]] = []  # (claim index, which test, raw p)
    differences = [c.difference() for c in claims]
    for i, (claim, diff) in enumerate(zip(claims, differences, strict=True)):
        if diff is None:
            continue
        tests.append((i, "difference", diff.p))
        if claim.expect == Expect.NOT_LOWER:
            tests.append((i, "margin", diff.p_not_better_by(margin)))
    adjusted = holm([p for _, _, p in tests])
    found = {(i, which): (p, adj) for (i, which, p), adj in zip(tests, adjusted, strict=True)}
    return [
        _judge(claim, diff, found.get((i, "difference")), found.get((i, "margin")), margin)
        for i, (claim, diff) in enumerate(zip(claims, differences, strict=True))
    ]


def _judge(
    claim: Claim,
    diff: Difference | None,
    difference: tuple[float, float] | None,
    margin_test: tuple[float, float] | None,
    margin: float,
) -> Judged:
    if diff is None or difference is None:
        return Judged(claim, Verdict.NOT_RUN)
    real = difference[1] < SIGNIFICANCE
    lower = diff.value < 0
    low, high = diff.interval()
    why = f"difference {_points(diff.value)} points, 95% CI {_points(low)} to {_points(high)}"
    if diff.counts is not None and diff.counts[0] == diff.counts[1] == 0:
        why = "both get the same images right"
    if claim.expect == Expect.LOWER:
        if real:
            return Judged(
                claim, Verdict.HOLDS if lower else Verdict.FAILS, diff.method, *difference
            )
        return Judged(claim, Verdict.NOT_SHOWN, diff.method, *difference, why)
    if real and lower:
        return Judged(claim, Verdict.FAILS, diff.method, *difference)
    assert margin_test is not None
    test = f"{diff.method}; better by < {100 * margin:g} point, one-sided score test"
    if margin_test[1] < SIGNIFICANCE:
        return Judged(claim, Verdict.HOLDS, test, *margin_test)
    return Judged(claim, Verdict.NOT_SHOWN, test, *margin_test, why)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def p_text(p: float) -> str:
    """`0.012`, `< 0.001`, or `-` when there was no test."""
    if math.isnan(p):
        return "-"
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def with_error(score: Score) -> str:
    """`13.0 ± 2.4`: top-1 error and its standard error, in %."""
    return f"{100 * score.error:.1f} ± {100 * score.standard_error:.1f}"
