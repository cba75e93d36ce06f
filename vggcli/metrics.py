"""Top-k error, the paper's measure (Sect. 4): pure numpy, no torch."""

from __future__ import annotations

import numpy as np


def _rivals(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image, how many other classes score at least as high as the true one (all of
    them when the true score is NaN)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels][:, None]
    rivals = (scores >= true).sum(axis=1) - 1
    rivals[np.isnan(true[:, 0])] = scores.shape[1]
    return rivals


def topk_errors(
    scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Fraction of images whose true class is not among the k highest scores.

    Ties count against us: the true class is within the top k only if fewer than k other
    classes score at least as high, so a constant prediction is never "right".
    """
    rivals = _rivals(scores, labels)
    return {
        k: float(np.mean(rivals >= min(k, scores.shape[1]))) if len(labels) else float("nan")
        for k in ks
    }


def top1_correct(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image, right at top-1 under the same tie rule (what paired tests compare)."""
    return _rivals(scores, labels) == 0


def counts_correct(
    scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[int, int]:
    """How many images are right at each k (for accumulating over batches)."""
    errors = topk_errors(scores, labels, ks)
    return {k: int(round((1 - e) * len(labels))) for k, e in errors.items()}


def error_table(posteriors: dict[str, np.ndarray], labels: np.ndarray) -> list[dict]:
    """Top-1 / top-5 error of each named set of posteriors."""
    rows = []
    for name, probs in posteriors.items():
        errors = topk_errors(probs, labels, (1, 5))
        rows.append({"name": name, "top1_err": errors[1], "top5_err": errors[5]})
    return rows
