"""The JSONL folder format: users' own data and the synthetic scenes.

Layout under ``root``::

    annotations.jsonl   one JSON object a line:
                        {"sample_id": "s1", "image": "images/a.png", "mask": "masks/s1.png",
                         "expression": "the red car", "split": "train"}
    images/...  masks/...

``image`` and ``mask`` are paths relative to ``root`` (a bare file name that is not found
there is looked up in ``images/`` and ``masks/``, the layout of exported folders such as
``rrsis-real-mini``). Mask pixels ``> mask_threshold`` (default 0) are the object. Optional
keys: ``ref_id`` (default: the mask path, so expressions of one object group into a ref),
``image_id`` (default: the image's key). ``sample_id`` defaults to ``<line number>``. Other
keys are kept in ``Record.extra``. Several lines may share an image. Splits are whatever
names the file uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from entitwist.data.base import (
    DEFAULT_MAX_ENTITIES,
    MaskFile,
    Record,
    ReferringDataset,
    image_key,
)
from entitwist.data.files import check_root, file_dataset, read_text_lines, warn_skipped
from entitwist.errors import ConfigError, DataError

__all__ = ["load_jsonl", "read_annotations", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("image", "mask", "expression", "split")


def _resolve(root: Path, rel: str, fallback_dir: str) -> Path:
    path = root / rel
    if not path.exists() and len(Path(rel).parts) == 1:
        alt = root / fallback_dir / rel
        if alt.exists():
            return alt
    return path


def read_annotations(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Parse ``annotations.jsonl`` into ``(line_number, object)``; one-line DataError on bad lines.

    Blank lines are ignored; lines whose expression is empty are skipped with one counted
    :class:`DataWarning`.
    """
    out: list[tuple[int, dict[str, Any]]] = []
    empty: list[str] = []
    for lineno, line in enumerate(read_text_lines(path, "annotation file"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{lineno} is not valid JSON ({exc.msg}); fix or remove the line"
            ) from exc
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno} is not a JSON object; write one object per line")
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            raise DataError(
                f"{path}:{lineno} lacks {', '.join(missing)}; every line needs "
                f"{', '.join(REQUIRED_KEYS)}"
            )
        if not str(obj["expression"] or "").strip():
            empty.append(f"{path.name}:{lineno}")
            continue
        out.append((lineno, obj))
    warn_skipped("annotation lines with no expression", empty, f"add the expression in {path}")
    return out


def load_jsonl(
    root: str | os.PathLike,
    split: str,
    *,
    transform: Callable[[dict], Any] | None = None,
    entities: str | os.PathLike | None = "auto",
    one_expression_per_ref: bool = False,
    max_entities: int = DEFAULT_MAX_ENTITIES,
    seed: int | torch.Generator | None = None,
    mask_threshold: float = 0,
    annotations: str = "annotations.jsonl",
) -> ReferringDataset:
    """Split ``split`` of a JSONL folder as a :class:`ReferringDataset`."""
    root = check_root("jsonl", root)
    ann_path = root / annotations
    rows = read_annotations(ann_path)
    if not rows:
        raise DataError(f"{ann_path} has no samples; add one JSON object per line")
    splits = list(dict.fromkeys(str(obj["split"]) for _, obj in rows))
    if split not in splits:
        raise ConfigError(
            f"unknown split {split!r} in {ann_path}; splits present: {', '.join(splits) or 'none'}"
        )
    records: list[Record] = []
    seen_ids: set[str] = set()
    for lineno, obj in rows:
        if str(obj["split"]) != split:
            continue
        image_path = _resolve(root, str(obj["image"]), "images")
        mask_path = _resolve(root, str(obj["mask"]), "masks")
        key = image_key(image_path, root)
        sid = str(obj.get("sample_id", lineno))
        if sid in seen_ids:
            raise DataError(
                f"{ann_path}:{lineno} repeats sample_id {sid!r}; make sample ids unique"
            )
        seen_ids.add(sid)
        extra = {
            k: v
            for k, v in obj.items()
            if k not in {*REQUIRED_KEYS, "sample_id", "ref_id", "image_id"}
        }
        records.append(
            Record(
                sample_id=sid,
                expression=str(obj["expression"]).strip(),
                image_path=image_path,
                image_key=key,
                image_id=str(obj.get("image_id", key)),
                ref_id=str(obj.get("ref_id", Path(os.path.relpath(mask_path, root)).as_posix())),
                mask=MaskFile(mask_path, mask_threshold),
                extra=extra,
            )
        )
    return file_dataset(
        records,
        name="jsonl",
        root=root,
        split=split,
        listed_in=str(ann_path),
        entities=entities,
        transform=transform,
        one_expression_per_ref=one_expression_per_ref,
        max_entities=max_entities,
        seed=seed,
    )
