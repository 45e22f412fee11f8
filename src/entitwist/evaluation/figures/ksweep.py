"""The numbers of the K-sweep figure (Fig. 6): a metric against the number of entity masks K.

K of each results file is read from the JSON (``max_entities``), the checkpoint folder's
``config.json``, or a ``k<N>`` in the path; an explicit list overrides them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entitwist.errors import ConfigError, InputError
from entitwist.evaluation.figures.results import (
    METRIC_KEYS,
    find_result_files,
    load_json,
    metric_rows,
    pick_row,
    read_json_or_none,
)

__all__ = ["ksweep_points"]

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
            k = (read_json_or_none(cfg) or {}).get("fusion", {}).get("max_entities")
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
        data = load_json(path)
        rows = metric_rows(data)
        if split is not None:
            kept = [r for r in rows if r.get("split", split) == split]
            if rows and not kept:
                continue
            rows = kept
        row = pick_row(rows, protocol, path)
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
