"""``entitwist figures``: the paper's figures from one command each.

::

    entitwist figures overlays --checkpoint runs/x/export --dataset jsonl --root scenes \\
        --split test --n 8 -o figs/overlays
    entitwist figures prx --results runs/a/eval/evaluate_jsonl_test.json b.json -o prx.png
    entitwist figures prx --checkpoint runs/x/export --dataset jsonl --root scenes -o prx.png
    entitwist figures ksweep --results runs/ -o ksweep.png          # Fig. 6
    entitwist figures stages --checkpoint full/ --compare baseline/ seg/ \\
        --image scene.png --sentence "the red car" -o stages.png   # Fig. 5
    entitwist figures pca --checkpoint full/ --image scene.png --sentence "..." -o pca.png  # Fig. 8

What each figure shows, and where its numbers come from:

- **overlays**: per sample the image (sentence as title), the ground truth (green) and the
  prediction (red) with its IoU, compared at the image's original size (the network output
  upsampled bilinearly, as ``entitwist evaluate --protocol original``). One PNG per sample
  plus ``grid.png`` and ``overlays.json`` (the IoUs).
- **prx**: Pr@X, the share of expressions with IoU >= X, for X in 0.50..0.90 in steps of
  ``--step``, from per-expression IoUs: the ``<stem>_per_sample.csv`` that ``entitwist
  evaluate --per-sample`` writes beside its JSON (found automatically), a per-sample CSV
  given directly, or computed here with ``--checkpoint``. A JSON without them (``entitwist
  test``) gives its five Pr@ columns, drawn with markers.
- **ksweep**: mIoU (``--metric``) against K, one line per dataset. K is read from the JSON
  (``max_entities``), the checkpoint folder's ``config.json``, or a ``k<N>`` in the path
  (``runs/fig6_rrsisd_k10/...``); ``--k`` overrides.
- **stages** (Fig. 5): F^out of the four stages reduced to one map each (channel mean,
  first principal component, or L2 norm over channels), min-max normalised, beside the
  image; ``--compare`` adds a row per further model (baseline / SEG / full).
- **pca** (Fig. 8): the visual and textual halves of the tri-modal cube at one stage,
  before DAT = the two halves of F^cube (visual F^in + G, textual T^loc) and after DAT =
  the two halves of F^sem (after the channel-wise semantic propagation of eq. 7, the
  features eq. 8 splits into F^vis and F^txt; for the SA-only variant F^sem = F^cube).
  Each phase is projected to 3D by one PCA fitted on both clouds together; visual blue,
  textual red. The centroid distance of the clouds (in the full d channels, on every
  position) is printed raw and relative to the joint cloud's RMS radius.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entitwist.errors import CheckpointError, ConfigError, InputError

__all__ = [
    "dat_pca",
    "describe_model",
    "feature_map",
    "find_result_files",
    "ksweep_points",
    "main",
    "overlay_items",
    "pca",
    "pr_curve",
    "read_results",
    "run_single",
    "separation",
    "stage_maps",
    "write_overlays",
]

PR_COLUMNS = ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9")
METRIC_KEYS = (*PR_COLUMNS, "oIoU", "mIoU")


# =============================================================================== numbers
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


# =============================================================================== results
def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(
            f"results file {str(path)!r} does not exist; give the JSON written by "
            "`entitwist test` or `entitwist evaluate`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"results file {str(path)!r} is not valid JSON ({exc}); rerun the evaluation"
        ) from None


def _metric_rows(data: Any) -> list[dict[str, Any]]:
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    return [r for r in rows if isinstance(r, dict) and any(k in r for k in METRIC_KEYS)]


def _pick_row(rows: list[dict[str, Any]], protocol: str, path: Path) -> dict[str, Any]:
    if not rows:
        raise InputError(
            f"{str(path)!r} holds no metrics (no 'results' rows with Pr@0.5..mIoU); give the "
            "JSON written by `entitwist test` or `entitwist evaluate`"
        )
    match = [r for r in rows if r.get("protocol", protocol) == protocol]
    if not match:
        have = ", ".join(sorted({str(r.get("protocol")) for r in rows}))
        raise InputError(
            f"{str(path)!r} has no {protocol!r} protocol row (it has {have}); pass --protocol"
        )
    return match[0]


def _read_per_sample_csv(path: Path, protocol: str) -> np.ndarray:
    column = f"{protocol}_IoU"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise InputError(
                    f"{str(path)!r} has no {column!r} column; give a per-sample CSV from "
                    f"`entitwist evaluate --per-sample` (protocol {protocol})"
                )
            values = [float(row[column]) for row in reader]
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read per-sample IoUs from {str(path)!r} ({exc})") from None
    return np.asarray(values, dtype=np.float64)


def read_results(path: str | os.PathLike, protocol: str = "lavt") -> dict[str, Any]:
    """One result for the Pr@X curve.

    ``path``: a results JSON (``{"results": [rows]}`` of :mod:`entitwist.engine.report`)
    or a per-sample CSV (``<protocol>_IoU`` column). Per-expression IoUs are taken from
    the CSV, from a ``per_sample`` list in the JSON, or from ``<stem>_per_sample.csv``
    beside the JSON. Returns ``row`` (metrics, may be empty for a CSV), ``ious`` ((E,)
    array or None), ``label`` and ``source`` (where the IoUs came from).
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise InputError(f"per-sample file {str(path)!r} does not exist")
        return {
            "row": {},
            "ious": _read_per_sample_csv(path, protocol),
            "label": path.stem,
            "source": str(path),
        }
    data = _load_json(path)
    row = _pick_row(_metric_rows(data), protocol, path)
    ious, source = None, None
    per = data.get("per_sample") if isinstance(data, dict) else None
    if isinstance(per, list) and per and f"{protocol}_IoU" in per[0]:
        ious, source = np.asarray([float(r[f"{protocol}_IoU"]) for r in per]), str(path)
    else:
        sibling = path.with_name(f"{path.stem}_per_sample.csv")
        if sibling.is_file():
            ious, source = _read_per_sample_csv(sibling, protocol), str(sibling)
    label = " ".join(str(row[k]) for k in ("model", "dataset", "split") if row.get(k)) or path.stem
    return {"row": row, "ious": ious, "label": label, "source": source}


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


def find_result_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders into the results JSONs under them (files holding metric rows)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [
                f
                for f in sorted(p.rglob("*.json"))
                if not any(part.startswith(".") for part in f.relative_to(p).parts)
                and _metric_rows(_quiet_json(f))
            ]
            if not found:
                raise InputError(
                    f"folder {str(p)!r} holds no results JSON (from `entitwist test`/`evaluate`)"
                )
            out.extend(found)
        else:
            out.append(p)
    return out


def _quiet_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


_K_IN_PATH = re.compile(r"(?:^|[^a-z0-9])k[_=-]?([1-9][0-9]*)(?![0-9])")


def _k_of(path: Path, data: dict[str, Any], row: dict[str, Any]) -> int | None:
    for source in (row, data):
        for key in ("max_entities", "K", "k"):
            if isinstance(source.get(key), (int, float)) and not isinstance(source.get(key), bool):
                return int(source[key])
    ckpt = data.get("checkpoint")
    if isinstance(ckpt, str) and ckpt:
        cfg = Path(ckpt) / "config.json"
        if cfg.is_file():
            k = (_quiet_json(cfg) or {}).get("fusion", {}).get("max_entities")
            if isinstance(k, int):
                return k
    # a k<N> in the file name or its three nearest folders (nearest first), then the checkpoint's
    names = [path.stem, *(p.name for p in list(path.parents)[:3])]
    if isinstance(ckpt, str) and ckpt:
        names += [Path(ckpt).stem, *(p.name for p in list(Path(ckpt).parents)[:3])]
    for name in names:
        hits = _K_IN_PATH.findall(name.lower())
        if hits:
            return int(hits[-1])
    return None


def ksweep_points(
    paths: Sequence[str | os.PathLike],
    *,
    ks: Sequence[int] | None = None,
    protocol: str = "lavt",
    metric: str = "mIoU",
    split: str | None = "test",
) -> dict[str, list[tuple[int, float]]]:
    """``{dataset: [(K, metric), ...]}`` sorted by K, from results JSONs or folders of them.

    Rows of another split than ``split`` are skipped (a folder may hold val and test
    results); ``ks`` gives K per file in order, overriding what the files say.
    """
    files = find_result_files(paths)
    if ks is not None and len(ks) != len(files):
        raise ConfigError(
            f"--k gives {len(ks)} values for {len(files)} results files; give one K per file"
        )
    series: dict[str, dict[int, tuple[float, Path]]] = {}
    for i, path in enumerate(files):
        data = _load_json(path)
        rows = _metric_rows(data)
        if split is not None:
            kept = [r for r in rows if r.get("split", split) == split]
            if rows and not kept:
                continue
            rows = kept
        row = _pick_row(rows, protocol, path)
        if row.get(metric) is None:
            raise InputError(
                f"{str(path)!r} has no {metric!r}; choose --metric from {', '.join(METRIC_KEYS)}"
            )
        k = int(ks[i]) if ks is not None else _k_of(path, data, row)
        if k is None:
            raise InputError(
                f"cannot tell K for {str(path)!r} (no max_entities, no checkpoint config, no k<N> in the path); pass --k"
            )
        dataset = str(row.get("dataset") or "results")
        points = series.setdefault(dataset, {})
        if k in points:
            raise InputError(
                f"two {dataset} results at K={k}: {points[k][1]} and {path}; keep one (or pass --k)"
            )
        points[k] = (float(row[metric]), path)
    if not series:
        raise InputError(f"no {split} results among {len(files)} files; pass --split")
    return {name: sorted((k, v) for k, (v, _) in pts.items()) for name, pts in series.items()}


# =============================================================================== model runs
def _load_model(path: str | os.PathLike) -> Any:
    from entitwist.engine.evaluate import load_model

    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint {str(p)!r} does not exist; give a save_pretrained folder or a .ckpt file"
        )
    return load_model(p)


def describe_model(model: Any) -> str:
    """``baseline (no SEG, no DAT)``, ``SEG only``, ``DAT only`` or ``SEG + DAT (sp_sa)``."""
    f = model.config.fusion
    if f.dat == "none":
        return "SEG only (no DAT)" if f.seg else "baseline (no SEG, no DAT)"
    return f"SEG + DAT ({f.dat})" if f.seg else f"DAT only ({f.dat})"


def _entities_arg(value: str | None) -> Any:
    if value is None or value.lower() == "none":
        return None
    if value.lower() == "auto":
        return "auto"
    from entitwist.data.io import read_label_map

    return read_label_map(value)  # (H, W) uint8; DataError when missing


@torch.no_grad()
def run_single(
    model: Any, image: np.ndarray, sentence: str, entities: Any = "auto", device: Any = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``model`` on one uint8 (H, W, 3) image and sentence with intermediates.

    Preprocessing is the :class:`~entitwist.inference.Predictor`'s (resize to S,
    ImageNet normalisation, entity maps ``"auto"`` / None / an (H, W) label map).
    Returns the resized image (S, S, 3) uint8 and the model's dict (``logits``, ``stages``).
    """
    from entitwist.inference.predictor import Predictor

    if not isinstance(sentence, str) or not sentence.strip():
        raise InputError("the sentence is empty; give a referring sentence with --sentence")
    predictor = Predictor(model, device=device)
    x, small = predictor._prepare(image)  # (1, 3, S, S), (S, S, 3)
    ent = predictor._entities_tensor(image, small, entities)  # (1, S, S) | None
    tokens = model.tokenizer([sentence])
    dev = predictor.device
    out = predictor.model(
        x.to(dev),
        tokens["input_ids"].to(dev),
        tokens["attention_mask"].to(dev),
        None if ent is None else ent.to(dev),
        return_intermediates=True,
    )
    return small, out


@torch.no_grad()
def overlay_items(
    model: Any, dataset: Any, indices: Sequence[int], device: Any = None, batch_size: int = 8
) -> list[dict[str, Any]]:
    """Predictions for ``dataset[i]`` (raw samples, no transform) at the original size.

    Returns per sample ``sample_id``, ``sentence``, ``image`` uint8 (H, W, 3), ``gt`` and
    ``pred`` bool (H, W), ``iou`` (0..1; 0 when both are empty), as ``entitwist evaluate``
    computes the original-size protocol.
    """
    from entitwist.data import ReferringTransform, collate_referring
    from entitwist.inference.predictor import resolve_device
    from entitwist.metrics import intersection_union, upsample_to_original

    dev = resolve_device(device)
    model = model.to(dev).eval()
    transform = ReferringTransform(model.config.visual.img_size, model.tokenizer)
    items: list[dict[str, Any]] = []
    for start in range(0, len(indices), batch_size):
        raws = [dataset[i] for i in indices[start : start + batch_size]]
        batch = collate_referring([transform(r) for r in raws])
        ent = batch.get("entities")
        logits = model(
            batch["image"].to(dev),
            batch["input_ids"].to(dev),
            batch["attention_mask"].to(dev),
            None if ent is None else ent.to(dev),
        ).float()  # (b, 2, S, S)
        for j, raw in enumerate(raws):
            gt = batch["mask_orig"][j].to(dev).bool()[None]  # (1, H, W)
            pred = upsample_to_original(logits[j : j + 1], tuple(gt.shape[-2:]))  # (1, H, W)
            inter, union = intersection_union(pred, gt)
            i, u = int(inter[0]), int(union[0])
            items.append(
                {
                    "sample_id": raw["sample_id"],
                    "sentence": raw["expression"],
                    "image": np.asarray(raw["image"]),
                    "gt": gt[0].cpu().numpy(),
                    "pred": pred[0].cpu().numpy(),
                    "iou": i / u if u else 0.0,
                }
            )
    return items


# =============================================================================== commands
def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--dataset", default="jsonl", help="refsegrs, rrsisd, risbench or jsonl")
    p.add_argument("--root", required=required, help="dataset folder")
    p.add_argument("--split", default="test", help="split (default test)")
    p.add_argument(
        "--data-entities", default="auto", help="entity store: 'auto', a tag or folder, 'none'"
    )


def _add_model_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, GeoTIFF...)")
    p.add_argument("--sentence", required=True, help="the referring sentence")
    p.add_argument(
        "--entities",
        default="auto",
        help="'auto' (weight-free maps), 'none', or a label-map PNG of the image's size",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entitwist figures",
        description="Figures of the paper: overlays, Pr@X curve, K sweep (Fig. 6), stage maps (Fig. 5), DAT PCA (Fig. 8).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)"
    )
    sub = parser.add_subparsers(
        dest="kind", required=True, metavar="{overlays,prx,ksweep,stages,pca}"
    )

    p = sub.add_parser(
        "overlays", parents=[common], help="image, sentence, ground truth and prediction per sample"
    )
    p.add_argument("--checkpoint", required=True, help="save_pretrained folder or .ckpt")
    _add_data_args(p, required=True)
    p.add_argument(
        "--ids", default=None, help="comma-separated sample ids (default: the first --n)"
    )
    p.add_argument("--n", type=int, default=8, help="number of samples when --ids is not given")
    p.add_argument("-o", "--out", required=True, help="output folder")

    p = sub.add_parser("prx", parents=[common], help="Pr@X against the IoU threshold X")
    p.add_argument("--results", nargs="+", default=None, help="results JSONs or per-sample CSVs")
    p.add_argument("--checkpoint", nargs="+", default=None, help="score these models here instead")
    _add_data_args(p, required=False)
    p.add_argument("--labels", nargs="+", default=None, help="legend labels, one per curve")
    p.add_argument("--protocol", choices=("lavt", "original"), default="lavt")
    p.add_argument("--step", type=float, default=0.01, help="threshold step (default 0.01)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("-o", "--out", required=True, help="output picture (.png, .pdf, .svg)")

    p = sub.add_parser(
        "ksweep", parents=[common], help="mIoU against the number of entity masks K (Fig. 6)"
    )
    p.add_argument("--results", nargs="+", required=True, help="results JSONs or folders of runs")
    p.add_argument(
        "--k", nargs="+", type=int, default=None, help="K of each results file, in order"
    )
    p.add_argument("--metric", default="mIoU", choices=METRIC_KEYS)
    p.add_argument("--protocol", choices=("lavt", "original"), default="lavt")
    p.add_argument("--split", default="test", help="rows of this split only (default test)")
    p.add_argument("-o", "--out", required=True)

    p = sub.add_parser(
        "stages",
        parents=[common],
        help="language-referred feature maps of the four stages (Fig. 5)",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--compare", nargs="+", default=[], help="further models, one row each")
    _add_model_input_args(p)
    p.add_argument(
        "--reduce", choices=("mean", "pca", "norm"), default="mean", help="channels -> one map"
    )
    p.add_argument(
        "--blend",
        type=float,
        default=0.0,
        help="draw the maps with this opacity (0..1) over the grey image (default 0: maps only)",
    )
    p.add_argument("-o", "--out", required=True)

    p = sub.add_parser(
        "pca",
        parents=[common],
        help="3D PCA of visual and textual features before/after DAT (Fig. 8)",
    )
    p.add_argument("--checkpoint", required=True)
    _add_model_input_args(p)
    p.add_argument("--stage", type=int, default=4, help="stage 1..4 (default 4)")
    p.add_argument("--points", type=int, default=2000, help="at most this many positions per cloud")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {
        "overlays": _cmd_overlays,
        "prx": _cmd_prx,
        "ksweep": _cmd_ksweep,
        "stages": _cmd_stages,
        "pca": _cmd_pca,
    }[args.kind](args)


def _dataset(args: argparse.Namespace, model: Any) -> Any:
    from entitwist.data import load_dataset
    from entitwist.engine.datamodule import check_data_args, select_entity_store

    check_data_args(dataset=args.dataset, root=args.root)
    k = model.config.fusion.max_entities
    ent = None if str(args.data_entities).lower() == "none" else args.data_entities
    ent = select_entity_store(Path(args.root), ent, k)
    return load_dataset(
        args.dataset,
        args.root,
        args.split,
        transform=None,
        entities=ent,
        one_expression_per_ref=False,
        max_entities=k,
    )


def _safe_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(sample_id)).strip("._") or "sample"


def _cmd_overlays(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() in (".png", ".pdf", ".svg") or out.is_file():
        raise ConfigError(f"-o {str(out)!r} must be a folder for the overlays (one PNG per sample)")
    if args.ids is None and args.n < 1:
        raise ConfigError(f"--n {args.n} must be at least 1")
    model = _load_model(args.checkpoint)
    ds = _dataset(args, model)
    ids = [r.sample_id for r in ds.records]
    if args.ids is not None:
        wanted = [s.strip() for s in args.ids.split(",") if s.strip()]
        where = {sid: i for i, sid in enumerate(ids)}
        missing = [s for s in wanted if s not in where]
        if not wanted or missing:
            raise InputError(
                f"sample id(s) {', '.join(missing) or '(none)'} not in the {args.split} split; "
                f"it has e.g. {', '.join(ids[:3])}"
            )
        indices = [where[s] for s in wanted]
    else:
        indices = list(range(min(args.n, len(ids))))
    written = write_overlays(model, ds, indices, out, device=args.device)
    for it in written["items"]:
        print(f"{it['sample_id']}: IoU {it['iou']:.3f}  {it['sentence']!r}")
    print(f"wrote {len(written['panels'])} overlays and {written['grid']} in {out}")
    return 0


def write_overlays(
    model: Any,
    dataset: Any,
    indices: Sequence[int],
    out_dir: str | os.PathLike,
    device: Any = None,
) -> dict[str, Any]:
    """Overlay pictures of ``dataset[i]`` for ``i`` in ``indices`` (raw samples) in ``out_dir``.

    Writes ``<sample_id>.png`` per sample, ``grid.png`` (all samples) and
    ``overlays.json`` (sample ids, sentences, IoUs at the original size). Returns
    ``panels`` (paths), ``grid`` (path), ``json`` (path) and ``items`` (see
    :func:`overlay_items`).
    """
    from entitwist.engine.plots import plot_overlay_grid, plot_overlay_panel
    from entitwist.utils import atomic_path

    if not indices:
        raise InputError("no sample selected for the overlays; give sample ids or n >= 1")
    out = Path(out_dir)
    items = overlay_items(model, dataset, indices, device=device)
    out.mkdir(parents=True, exist_ok=True)
    panels = [
        plot_overlay_panel(item, out / f"{_safe_name(item['sample_id'])}.png") for item in items
    ]
    grid = plot_overlay_grid(items, out / "grid.png")
    summary = [
        {"sample_id": it["sample_id"], "expression": it["sentence"], "IoU": it["iou"]}
        for it in items
    ]
    with atomic_path(out / "overlays.json") as tmp:
        tmp.write_text(json.dumps({"protocol": "original", "samples": summary}, indent=2) + "\n")
    return {"panels": panels, "grid": grid, "json": out / "overlays.json", "items": items}


def _cmd_prx(args: argparse.Namespace) -> int:
    from entitwist.engine.plots import check_output, plot_prx

    check_output(args.out)
    if not args.results and not args.checkpoint:
        raise ConfigError(
            "give --results JSON... or --checkpoint DIR with --root (to score it here)"
        )
    if not 0 < args.step <= 0.4:
        raise ConfigError(f"--step {args.step} must be in (0, 0.4], e.g. 0.01")
    xs = thresholds(0.5, 0.9, args.step)
    results = [read_results(p, args.protocol) for p in args.results or []]
    for ckpt in args.checkpoint or []:
        if not args.root:
            raise ConfigError(
                "--checkpoint needs --root (and --dataset, --split) to score the model"
            )
        from entitwist.data import ReferringTransform
        from entitwist.engine.evaluate import evaluate

        model = _load_model(ckpt)
        raw = _dataset(args, model)
        raw.transform = ReferringTransform(model.config.visual.img_size, model.tokenizer)
        scores, per_sample = evaluate(
            model,
            raw,
            protocols=(args.protocol,),
            batch_size=max(1, args.batch_size),
            device=args.device,
            progress=True,
        )
        ious = np.asarray([r[f"{args.protocol}_IoU"] for r in per_sample])
        label = f"{Path(ckpt).name} {args.dataset} {args.split}"
        results.append(
            {"row": scores[args.protocol], "ious": ious, "label": label, "source": str(ckpt)}
        )
    if args.labels:
        if len(args.labels) != len(results):
            raise ConfigError(f"--labels gives {len(args.labels)} names for {len(results)} curves")
        for r, name in zip(results, args.labels):
            r["label"] = name
    curves = [prx_curve_of(r, xs) for r in results]
    path = plot_prx(curves, args.out)
    for c in curves:
        pts = "  ".join(
            f"Pr@{x:g}={y:.2f}" for x, y in zip(c["x"], c["y"]) if round(x * 10, 6) == round(x * 10)
        )
        print(f"{c['label']}: {pts}" + ("" if c["fine"] else "  (Pr@ columns only)"))
    print(f"wrote {path}")
    return 0


def _cmd_ksweep(args: argparse.Namespace) -> int:
    from entitwist.engine.plots import check_output, plot_ksweep

    check_output(args.out)
    series = ksweep_points(
        args.results, ks=args.k, protocol=args.protocol, metric=args.metric, split=args.split
    )
    path = plot_ksweep(series, args.out, metric=args.metric)
    for name, points in series.items():
        print(f"{name}: " + "  ".join(f"K={k}: {v:.2f}" for k, v in points))
    print(f"wrote {path}")
    return 0


def _cmd_stages(args: argparse.Namespace) -> int:
    from entitwist.data.io import read_image
    from entitwist.engine.plots import check_output, plot_stages

    check_output(args.out)
    if not 0 <= args.blend <= 1:
        raise ConfigError(f"--blend {args.blend} must be between 0 and 1")
    models = [(p, _load_model(p)) for p in [args.checkpoint, *args.compare]]
    image = read_image(args.image)
    entities = _entities_arg(args.entities)
    rows = []
    for path, model in models:
        _, out = run_single(model, image, args.sentence, entities, args.device)
        rows.append(
            {
                "label": f"{Path(path).name}: {describe_model(model)}",
                "maps": stage_maps(out["stages"], args.reduce),
            }
        )
    result = plot_stages(image, args.sentence, rows, args.out, blend=args.blend)
    for row in rows:
        print(
            f"{row['label']}: stages "
            + ", ".join(f"{m.shape[0]}x{m.shape[1]}" for m in row["maps"])
        )
    print(f"wrote {result}")
    return 0


def _cmd_pca(args: argparse.Namespace) -> int:
    from entitwist.data.io import read_image
    from entitwist.engine.plots import check_output, plot_pca

    check_output(args.out)
    if args.points < 3:
        raise ConfigError(f"--points {args.points} must be at least 3")
    model = _load_model(args.checkpoint)
    if model.config.fusion.dat == "none":
        raise ConfigError(
            f"model {args.checkpoint!r} has DAT off (fusion.dat='none'): no F^cube / F^sem to "
            "project; give a model with DAT"
        )
    n_stages = len(model.fusions)
    if not 1 <= args.stage <= n_stages:
        raise ConfigError(f"--stage {args.stage} is out of range; use 1..{n_stages}")
    image = read_image(args.image)
    _, out = run_single(model, image, args.sentence, _entities_arg(args.entities), args.device)
    result = dat_pca(out["stages"][args.stage - 1], max_points=args.points, seed=args.seed)
    title = f'stage {args.stage}, {describe_model(model)}: "{args.sentence}"'
    path = plot_pca(result, args.out, title=title)
    if model.config.fusion.dat == "sa":
        print("note: the SA-only variant has no semantic propagation, so F^sem = F^cube")
    for phase in ("before", "after"):
        r = result[phase]
        print(
            f"{phase} DAT ({r['what']}): centroid distance {r['distance']:.4f}, "
            f"relative to the cloud radius {r['separation']:.4f}"
        )
    print(f"wrote {path}")
    return 0
