"""Reading the results files behind the Pr@X curve and the K sweep of ``entitwist figures``.

A results file is the JSON that ``entitwist test`` or ``entitwist evaluate`` writes
(``{"results": [rows]}`` of :mod:`entitwist.evaluation.tables`), or the per-sample CSV that
``entitwist evaluate --per-sample`` writes beside it (its ``<protocol>_IoU`` column).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.errors import InputError

__all__ = [
    "METRIC_KEYS",
    "PR_COLUMNS",
    "find_result_files",
    "load_json",
    "metric_rows",
    "pick_row",
    "read_json_or_none",
    "read_results",
]

PR_COLUMNS = ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9")
METRIC_KEYS = (*PR_COLUMNS, "oIoU", "mIoU")


def load_json(path: Path) -> Any:
    """The JSON of a results file; :class:`InputError` when it is missing or not JSON."""
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


def metric_rows(data: Any) -> list[dict[str, Any]]:
    """The ``results`` rows of a results JSON that hold at least one metric."""
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    return [r for r in rows if isinstance(r, dict) and any(k in r for k in METRIC_KEYS)]


def pick_row(rows: list[dict[str, Any]], protocol: str, path: Path) -> dict[str, Any]:
    """The first row of ``protocol``; :class:`InputError` naming ``path`` when there is none."""
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

    ``path``: a results JSON (``{"results": [rows]}`` of :mod:`entitwist.evaluation.tables`)
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
    data = load_json(path)
    row = pick_row(metric_rows(data), protocol, path)
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


def find_result_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders into the results JSONs under them (files holding metric rows)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [
                f
                for f in sorted(p.rglob("*.json"))
                if not any(part.startswith(".") for part in f.relative_to(p).parts)
                and metric_rows(read_json_or_none(f))
            ]
            if not found:
                raise InputError(
                    f"folder {str(p)!r} holds no results JSON (from `entitwist test`/`evaluate`)"
                )
            out.extend(found)
        else:
            out.append(p)
    return out


def read_json_or_none(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
