"""The numbers of the feature figures: stage maps (Fig. 5) and the DAT PCA (Fig. 8).

Both start from one image's intermediate features (``stages`` of a forward pass with
``return_intermediates=True``, see :func:`entitwist.evaluation.figures.model.run_single`):
:func:`stage_maps` reduces each stage's F^out to one map, :func:`dat_pca` projects the
visual and textual halves of the tri-modal cube before and after DAT with one PCA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from entitwist.errors import ConfigError, InputError

__all__ = ["dat_pca", "feature_map", "pca", "separation", "stage_maps"]


def pca(x: np.ndarray, k: int = 3) -> dict[str, np.ndarray]:
    """Principal component analysis of ``x`` (n, c) by SVD of the centred data (float64).

    Returns ``projected`` (n, k), ``components`` (k, c) (unit rows), ``mean`` (c,) and
    ``variance`` (k,) (variance along each component, ddof = 1). Each component's sign is
    fixed so that its largest-magnitude loading is positive. When n or c is below k, the
    missing components are zero.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise InputError(f"PCA needs an (n, c) array with n >= 1, got shape {x.shape}")
    n, c = x.shape
    mean = x.mean(axis=0)  # (c,)
    xc = x - mean  # (n, c)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)  # s (r,), vt (r, c), r = min(n, c)
    r = min(k, vt.shape[0])
    comps = np.zeros((k, c))
    comps[:r] = vt[:r]
    for i in range(r):
        j = int(np.argmax(np.abs(comps[i])))
        if comps[i, j] < 0:
            comps[i] = -comps[i]
    var = np.zeros(k)
    var[:r] = s[:r] ** 2 / max(n - 1, 1)
    return {"projected": xc @ comps.T, "components": comps, "mean": mean, "variance": var}


def separation(visual: np.ndarray, textual: np.ndarray) -> tuple[float, float]:
    """Distance between the centroids of two clouds (n, c) and (m, c).

    Returns ``(distance, relative)`` where ``relative`` divides by the RMS distance of all
    points to the joint centroid (scale-free: comparable before and after DAT).
    """
    v = np.asarray(visual, dtype=np.float64)
    t = np.asarray(textual, dtype=np.float64)
    dist = float(np.linalg.norm(v.mean(axis=0) - t.mean(axis=0)))
    joint = np.concatenate([v, t])
    rms = float(np.sqrt(((joint - joint.mean(axis=0)) ** 2).sum(axis=1).mean()))
    return dist, (dist / rms if rms > 0 else 0.0)


def _positions(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, c, h, w) or (c, h, w) -> (h*w, c) float64."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InputError(f"expected one image's features (1, c, h, w), got {a.shape}")
        a = a[0]
    if a.ndim != 3:
        raise InputError(f"expected (c, h, w) features, got shape {a.shape}")
    return a.reshape(a.shape[0], -1).T.astype(np.float64)  # (h*w, c)


def dat_pca(
    stage: dict[str, Any], max_points: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Fig. 8 numbers for one stage's intermediates (``cube`` and ``sem``, (1, 2d, h, w)).

    For ``before`` (F^cube) and ``after`` (F^sem): split the 2d channels into the visual
    half [:d] and the textual half [d:], giving two clouds of h*w points in R^d; fit one
    PCA on both; keep at most ``max_points`` positions (the same positions for both
    clouds, drawn with ``seed``). Returns per phase ``visual`` and ``textual`` (n, 3)
    projections, ``index`` (n,) the kept positions, ``variance`` (3,), ``distance`` and
    ``separation`` (:func:`separation` on all positions, full d channels), ``what``.
    """
    if "cube" not in stage or "sem" not in stage:
        raise ConfigError(
            "the model has DAT off (fusion.dat='none'): there is no F^cube / F^sem to project; "
            "use a model with DAT (e.g. the full Enti-TwistNet)"
        )
    out: dict[str, dict[str, Any]] = {}
    for phase, key, what in (
        ("before", "cube", "F^cube halves (F^in+G | T^loc)"),
        ("after", "sem", "F^sem halves (F^vis | F^txt)"),
    ):
        pts = _positions(stage[key])  # (h*w, 2d)
        d = pts.shape[1] // 2
        vis, txt = pts[:, :d], pts[:, d:]  # (h*w, d) each
        hw = pts.shape[0]
        rng = np.random.default_rng(seed)
        index = (
            np.sort(rng.choice(hw, size=max_points, replace=False))
            if hw > max_points
            else np.arange(hw)
        )
        p = pca(np.concatenate([vis[index], txt[index]]), 3)
        n = len(index)
        dist, rel = separation(vis, txt)
        out[phase] = {
            "visual": p["projected"][:n],
            "textual": p["projected"][n:],
            "index": index,
            "variance": p["variance"],
            "distance": dist,
            "separation": rel,
            "what": what,
        }
    return out


def feature_map(features: torch.Tensor | np.ndarray, reduce: str = "mean") -> np.ndarray:
    """One (h, w) map in 0..1 from features (c, h, w) or (1, c, h, w).

    ``reduce``: ``mean`` (channel mean), ``norm`` (L2 norm over channels) or ``pca``
    (first principal component over positions, its sign chosen to correlate positively
    with the channel mean). Min-max normalised; a constant map gives zeros.
    """
    pts = _positions(features)  # (h*w, c)
    a = features.shape[-2:]
    h, w = int(a[0]), int(a[1])
    if reduce == "mean":
        v = pts.mean(axis=1)
    elif reduce == "norm":
        v = np.linalg.norm(pts, axis=1)
    elif reduce == "pca":
        v = pca(pts, 1)["projected"][:, 0]
        m = pts.mean(axis=1)
        if np.dot(v - v.mean(), m - m.mean()) < 0:
            v = -v
    else:
        raise ConfigError(f"unknown --reduce {reduce!r}; use mean, pca or norm")
    lo, hi = float(v.min()), float(v.max())
    v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    return v.reshape(h, w)


def stage_maps(stages: Sequence[dict[str, Any]], reduce: str = "mean") -> list[np.ndarray]:
    """:func:`feature_map` of each stage's ``f_out`` (the language-referred features)."""
    return [feature_map(s["f_out"], reduce) for s in stages]
