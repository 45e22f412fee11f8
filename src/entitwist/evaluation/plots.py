"""Drawing helpers of ``entitwist figures`` (matplotlib, Agg, no pyplot global state).

Each ``plot_*`` function takes numbers already computed by :mod:`entitwist.evaluation.figures`
and writes one picture atomically with :func:`save_figure`; nothing here computes a
metric. matplotlib is imported inside the functions (it belongs to the ``train`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.errors import ConfigError
from entitwist.utils import atomic_path

__all__ = [
    "FORMATS",
    "check_output",
    "new_figure",
    "plot_ksweep",
    "plot_overlay_grid",
    "plot_overlay_panel",
    "plot_pca",
    "plot_prx",
    "plot_stages",
    "save_figure",
]

FORMATS = (".png", ".pdf", ".svg")
GT_COLOR = (0.10, 0.85, 0.25)  # green
PRED_COLOR = (1.00, 0.19, 0.19)  # red
VISUAL_COLOR = "tab:blue"
TEXT_COLOR = "tab:red"


def check_output(path: str | os.PathLike) -> Path:
    """The output path, checked: a .png/.pdf/.svg file name; its folder is created."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(
            f"output {str(path)!r} must end in {', '.join(FORMATS)}; give e.g. -o figure.png"
        )
    if path.is_dir():
        raise ConfigError(
            f"output {str(path)!r} is a folder; give a file name such as {path}/figure.png"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn by the Agg canvas (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and return the path."""
    path = check_output(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=dpi, bbox_inches="tight")
    return path


# ---------------------------------------------------------------------------------- overlays
def _blend(rgb: np.ndarray, mask: np.ndarray, color: tuple[float, float, float]) -> np.ndarray:
    """(H, W, 3) uint8 with ``mask`` (H, W) tinted at 45 % and its outline opaque."""
    out = rgb.astype(np.float32) / 255.0
    tint = np.asarray(color, dtype=np.float32)
    out[mask] = 0.55 * out[mask] + 0.45 * tint
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    out[mask & ~inner] = tint
    return np.clip(out, 0, 1)


def _wrap(text: str, width: int = 46, quote: bool = True) -> str:
    import textwrap

    text = f'"{text}"' if quote else text
    return "\n".join(textwrap.wrap(text, width=width)) or '""'


def _draw_overlay_row(axes: Sequence[Any], item: dict[str, Any]) -> None:
    image, gt, pred = item["image"], item["gt"], item["pred"]
    axes[0].imshow(image)
    axes[0].set_title(_wrap(item["sentence"]), fontsize=9)
    axes[1].imshow(_blend(image, gt, GT_COLOR))
    axes[1].set_title("ground truth", fontsize=9)
    axes[2].imshow(_blend(image, pred, PRED_COLOR))
    axes[2].set_title(f"prediction, IoU {item['iou']:.2f}", fontsize=9)
    axes[0].set_ylabel(str(item["sample_id"]), fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def plot_overlay_panel(item: dict[str, Any], path: str | os.PathLike) -> Path:
    """One sample: image (sentence as title), ground truth, prediction (IoU in the title).

    ``item``: ``image`` uint8 (H, W, 3), ``gt`` and ``pred`` bool (H, W), ``sentence``,
    ``sample_id``, ``iou`` (0..1).
    """
    fig = new_figure(9.6, 3.6)
    axes = fig.subplots(1, 3)
    _draw_overlay_row(axes, item)
    return save_figure(fig, path)


def plot_overlay_grid(items: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """All samples, one row each (image, ground truth, prediction)."""
    fig = new_figure(9.6, 3.2 * len(items))
    axes = fig.subplots(len(items), 3, squeeze=False)
    for row, item in zip(axes, items):
        _draw_overlay_row(row, item)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------- curves
def plot_prx(curves: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Pr@X (percent) against X, one line per result.

    ``curves``: dicts with ``label``, ``x`` (thresholds), ``y`` (percent) and ``fine``
    (True when computed from per-expression IoUs; False: the five Pr@ columns, drawn
    with markers).
    """
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    for c in curves:
        ax.plot(
            c["x"],
            c["y"],
            marker=None if c["fine"] else "o",
            linestyle="-" if c["fine"] else "--",
            label=c["label"] + ("" if c["fine"] else " (Pr@ columns)"),
        )
    ax.set_xlabel("IoU threshold X")
    ax.set_ylabel("Pr@X (%)")
    ax.set_ylim(0, 100)
    lo = min(float(np.min(c["x"])) for c in curves)
    hi = max(float(np.max(c["x"])) for c in curves)
    ax.set_xlim(lo, hi)
    ax.grid(True, alpha=0.3)
    ax.set_title("Share of expressions with IoU >= X")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_ksweep(
    series: dict[str, list[tuple[int, float]]], path: str | os.PathLike, metric: str = "mIoU"
) -> Path:
    """``metric`` against K (Fig. 6): one line per dataset, values written at the points."""
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    ks: set[int] = set()
    for name, points in series.items():
        x = [k for k, _ in points]
        y = [v for _, v in points]
        ks.update(x)
        ax.plot(x, y, marker="o", label=name)
        for k, v in points:
            ax.annotate(
                f"{v:.2f}",
                (k, v),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
    ax.set_xticks(sorted(ks))
    ax.set_xlabel("K (entity masks)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Impact of the number of entity masks K on {metric}")
    if len(series) > 1 or any(series):
        ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------- features
def plot_stages(
    image: np.ndarray,
    sentence: str,
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    blend: float = 0.0,
) -> Path:
    """Fig. 5: the image, then one heat map per stage; one row per model.

    ``rows``: dicts with ``label`` and ``maps`` (list of (h_t, w_t) float arrays in 0..1).
    ``blend`` > 0 draws each heat map with that opacity over a grey copy of the image.
    """
    grey = image.astype(np.float32).mean(axis=2) / 255.0  # (H, W)
    n = max(len(r["maps"]) for r in rows)
    fig = new_figure(2.3 * (n + 1), 2.5 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), n + 1, squeeze=False)
    h, w = image.shape[:2]
    for r, row in enumerate(rows):
        axes[r][0].imshow(image)
        axes[r][0].set_ylabel(_wrap(row["label"], 24, quote=False), fontsize=8)
        if r == 0:
            axes[r][0].set_title(_wrap(sentence, 30), fontsize=8)
        for t in range(n):
            ax = axes[r][t + 1]
            if t < len(row["maps"]):
                if blend > 0:
                    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
                # extent stretches the h_t x w_t map over the image's frame
                ax.imshow(
                    row["maps"][t],
                    cmap="jet",
                    vmin=0,
                    vmax=1,
                    interpolation="bilinear",
                    extent=(0, w, h, 0),
                    alpha=blend if blend > 0 else None,
                )
            if r == 0:
                shape = row["maps"][t].shape if t < len(row["maps"]) else ()
                ax.set_title(
                    f"stage {t + 1}" + (f" ({shape[0]}x{shape[1]})" if shape else ""), fontsize=8
                )
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    return save_figure(fig, path)


def plot_pca(result: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Fig. 8: two 3D scatters (before / after DAT), visual blue, textual red.

    ``result``: the dict of :func:`entitwist.evaluation.figures.dat_pca`.
    """
    fig = new_figure(11, 5.2)
    for i, phase in enumerate(("before", "after")):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        vis, txt = result[phase]["visual"], result[phase]["textual"]  # (n, 3) each
        ax.scatter(
            vis[:, 0], vis[:, 1], vis[:, 2], s=6, c=VISUAL_COLOR, label="visual", depthshade=False
        )
        ax.scatter(
            txt[:, 0], txt[:, 1], txt[:, 2], s=6, c=TEXT_COLOR, label="textual", depthshade=False
        )
        what = result[phase]["what"]
        sep = result[phase]["separation"]
        ax.set_title(f"({'ab'[i]}) {phase} DAT: {what}\ncentroid separation {sep:.3f}", fontsize=9)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.set_zlabel("PC3")
        ax.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
