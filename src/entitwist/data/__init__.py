"""Datasets of referring remote-sensing segmentation, transforms and collation.

>>> from entitwist.data import load_dataset
>>> ds = load_dataset("jsonl", "scenes/", split="train")   # doctest: +SKIP
>>> ds[0]["image"].shape, ds[0]["expression"]               # doctest: +SKIP

Names: ``refsegrs``, ``rrsisd``, ``risbench``, ``jsonl`` (see each module for its on-disk
layout). Readers for single files are in :mod:`entitwist.imaging`.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entitwist.data.base import DataWarning, Record, ReferringDataset, image_key
from entitwist.data.transforms import ReferringTransform, collate_referring
from entitwist.errors import ConfigError
from entitwist.imaging import read_image, read_label_map, read_mask

__all__ = [
    "DATASETS",
    "load_dataset",
    "list_datasets",
    "ReferringDataset",
    "Record",
    "DataWarning",
    "ReferringTransform",
    "collate_referring",
    "read_image",
    "read_mask",
    "read_label_map",
    "image_key",
]

# name -> (module, loader function)
DATASETS: dict[str, tuple[str, str]] = {
    "refsegrs": ("entitwist.data.layouts", "load_refsegrs"),
    "rrsisd": ("entitwist.data.rrsisd", "load_rrsisd"),
    "risbench": ("entitwist.data.layouts", "load_risbench"),
    "jsonl": ("entitwist.data.jsonl", "load_jsonl"),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def _loader(name: str) -> Callable[..., ReferringDataset]:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    module, func = DATASETS[name]
    return getattr(importlib.import_module(module), func)


def load_dataset(
    name: str,
    root: str | os.PathLike,
    split: str,
    *,
    transform: Callable[[dict], Any] | None = None,
    entities: str | os.PathLike | None = "auto",
    one_expression_per_ref: bool | None = None,
    **options: Any,
) -> ReferringDataset:
    """Load split ``split`` of dataset ``name`` stored at ``root``.

    Args:
        name: ``refsegrs``, ``rrsisd``, ``risbench`` or ``jsonl``.
        root: the dataset folder, in the dataset's official layout.
        split: ``train`` / ``val`` / ``test`` (JSONL: the names its file uses).
        transform: applied to each sample dict (e.g. ``ReferringTransform(480, tokenizer)``).
        entities: ``"auto"`` attaches ``<root>/entities/<tag>/<image-key>.png`` when one
            store exists; a tag (``"felzenszwalb"``) or a folder path requires that store;
            ``None`` never attaches.
        one_expression_per_ref: ``True`` draws one random expression per ref each time it
            is indexed (training); ``False`` yields every expression; ``None`` means
            ``split == "train"``.
        **options: ``max_entities`` (K, default 40), ``seed`` (int or torch.Generator: a
            worker-independent draw), and per-dataset options (``mask_threshold``,
            ``sentence_key``, ``check_sizes``, ...; see each ``load_<name>``).

    Returns:
        a :class:`ReferringDataset` of dict samples.
    """
    loader = _loader(name)
    allowed = [
        p
        for p in inspect.signature(loader).parameters
        if p not in {"root", "split", "transform", "entities", "one_expression_per_ref"}
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; valid: {', '.join(allowed)}"
        )
    if one_expression_per_ref is None:
        one_expression_per_ref = split == "train"
    return loader(
        Path(root),
        split,
        transform=transform,
        entities=entities,
        one_expression_per_ref=one_expression_per_ref,
        **options,
    )
