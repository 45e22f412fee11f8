"""The numbers of the Pr@X figure: Pr@X against the IoU threshold X.

Pr@X is the share of expressions with IoU >= X, computed from per-expression IoUs
(:func:`pr_curve`), or, for a results file without them, its five Pr@ columns
(:func:`prx_curve_of`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from entitwist.errors import ConfigError, InputError
from entitwist.evaluation.figures.results import PR_COLUMNS

__all__ = ["pr_curve", "prx_curve_of", "thresholds"]


def thresholds(lo: float = 0.5, hi: float = 0.9, step: float = 0.01) -> np.ndarray:
    """``lo, lo + step, ..., hi`` (inclusive), rounded to 6 decimals so 0.6 is exactly 0.6."""
    if step <= 0:
        raise ConfigError(f"--step {step} must be positive, e.g. 0.01")
    n = int(math.floor((hi - lo) / step + 1e-9)) + 1
    return np.round(lo + step * np.arange(n), 6)


def pr_curve(ious: Sequence[float] | np.ndarray, xs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Pr@X in percent for each X of ``xs``: the share of ``ious`` (E,) with IoU >= X.

    Same rule as :func:`entitwist.metrics.summarize` (``>=``, float64).
    """
    iou = np.asarray(ious, dtype=np.float64).reshape(-1)  # (E,)
    if iou.size == 0:
        raise InputError("no per-expression IoU to compute Pr@X from; the split is empty")
    x = np.asarray(xs, dtype=np.float64).reshape(-1)  # (T,)
    return (iou[None, :] >= x[:, None]).mean(axis=1) * 100.0  # (T,)


def prx_curve_of(result: dict[str, Any], xs: np.ndarray) -> dict[str, Any]:
    """The curve to draw for one :func:`read_results` result (fine, or the Pr@ columns)."""
    if result["ious"] is not None:
        return {"label": result["label"], "x": xs, "y": pr_curve(result["ious"], xs), "fine": True}
    cols = [c for c in PR_COLUMNS if result["row"].get(c) is not None]
    if not cols:
        raise InputError(f"result {result['label']!r} has no Pr@ columns; rerun the evaluation")
    x = np.asarray([float(c.split("@")[1]) for c in cols])
    y = np.asarray([float(result["row"][c]) for c in cols])
    return {"label": result["label"], "x": x, "y": y, "fine": False}
