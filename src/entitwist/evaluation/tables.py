"""Result tables in the paper's columns, and their JSON and CSV files.

Shared by ``entitwist test`` / ``validate`` and ``entitwist evaluate``. A *result* is one
row: the metrics of one split under one protocol, with what produced it::

    {"dataset": "rrsisd", "split": "test", "protocol": "lavt", "model": "...",
     "expressions": 3481, "Pr@0.5": 77.94, ..., "oIoU": 78.16, "mIoU": 66.83}

Numbers are percentages printed with two decimals, as in the paper's tables.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entitwist.metrics import metric_names
from entitwist.utils import atomic_path

__all__ = [
    "PROTOCOL_NOTES",
    "format_table",
    "make_rows",
    "write_csv",
    "write_json",
    "write_reports",
]

PROTOCOL_NOTES = {
    "lavt": "at the network's input size against the nearest-resized mask (published protocol)",
    "original": "at each image's original size (prediction upsampled bilinearly)",
}
ID_COLUMNS = ("dataset", "split", "protocol", "model", "expressions")


def make_rows(
    results: dict[str, dict[str, float]],
    *,
    dataset: str,
    split: str,
    model: str = "",
    expressions: int | None = None,
) -> list[dict[str, Any]]:
    """One row per protocol from ``{protocol: {metric: value}}`` (the module's results)."""
    rows = []
    for protocol, values in results.items():
        row: dict[str, Any] = {
            "dataset": dataset,
            "split": split,
            "protocol": protocol,
            "model": model,
            "expressions": expressions,
        }
        row.update({k: float(values[k]) for k in metric_names() if k in values})
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """A fixed-width table: dataset, split, protocol, then Pr@0.5..Pr@0.9 oIoU mIoU (2 decimals).

    Below it, one line per protocol used says what the protocol means.
    """
    cols = metric_names()
    head = ["dataset", "split", "protocol", *cols]
    body = [
        [str(r.get("dataset", "")), str(r.get("split", "")), str(r.get("protocol", ""))]
        + [_fmt(r.get(c)) for c in cols]
        for r in rows
    ]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]
    lines = []
    if title:
        lines.append(title)
    lines.append(
        "  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))
    )
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append(
            "  ".join(
                v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(b, widths))
            )
        )
    for protocol in dict.fromkeys(str(r.get("protocol")) for r in rows):
        if protocol in PROTOCOL_NOTES:
            lines.append(f"protocol {protocol}: {PROTOCOL_NOTES[protocol]}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "nan" if value != value else f"{value:.2f}"


def write_json(path: str | os.PathLike, rows: Sequence[dict[str, Any]], **extra: Any) -> Path:
    """``{"results": rows, **extra}`` as indented JSON, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"results": list(rows), **extra}, indent=2) + "\n")
    return path


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """One line per row; columns ``dataset, split, protocol, model, expressions, Pr@0.5..mIoU``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [*ID_COLUMNS, *metric_names()]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (f"{row[k]:.4f}" if isinstance(row.get(k), float) else row.get(k, ""))
                for k in columns
            }
        )
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def write_reports(
    directory: str | os.PathLike, stem: str, rows: Sequence[dict[str, Any]], **extra: Any
) -> tuple[Path, Path]:
    """``<directory>/<stem>.json`` and ``<directory>/<stem>.csv``."""
    directory = Path(directory)
    return write_json(directory / f"{stem}.json", rows, **extra), write_csv(
        directory / f"{stem}.csv", rows
    )
