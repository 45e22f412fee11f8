"""Entity label maps: masks -> one uint8 map (paper section III-B, following GPRN).

The masks are sorted by area, the ``max_entities`` (K, 40 in the paper) largest are kept,
and they are painted largest first, so each pixel ends up with the smallest kept mask that
covers it. Labels are 1..K in area order (1 = the largest mask); 0 = no kept mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from entitwist.errors import ConfigError, InputError

#: The largest K: labels are stored as uint8 PNGs, so K is 1..MAX_K.
MAX_K = 255
#: The paper's K (section IV-B).
MAX_ENTITIES = 40


def check_max_entities(max_entities: Any, what: str = "max_entities") -> int:
    """Validate K: an integer 1..MAX_K (labels are stored as uint8)."""
    if isinstance(max_entities, bool) or not isinstance(max_entities, int | np.integer):
        raise ConfigError(f"{what} must be an integer 1..{MAX_K}, got {max_entities!r}")
    if not 1 <= int(max_entities) <= MAX_K:
        raise ConfigError(
            f"{what}={max_entities} is out of range: label maps are uint8, use 1..{MAX_K} "
            "(the paper uses 40)"
        )
    return int(max_entities)


def paint_label_map(
    masks: Sequence[np.ndarray],
    max_entities: int = MAX_ENTITIES,
    *,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Paint masks into one label map.

    Args:
        masks: bool (H, W) arrays, all of one size, in any order. Empty masks are dropped.
        max_entities: K, how many of the largest masks to keep (1..255).
        shape: (H, W) of the map when ``masks`` may be empty.

    Returns:
        uint8 (H, W): 0 where no kept mask covers the pixel, else the label of the smallest
        kept mask covering it; labels 1..K number the kept masks by decreasing area (ties
        keep the input order). A kept mask wholly covered by smaller ones leaves its label
        unused.
    """
    k = check_max_entities(max_entities)
    arrays = [np.asarray(m) for m in masks]
    if not arrays:
        if shape is None:
            raise InputError("paint_label_map got no masks and no shape; pass shape=(H, W)")
        return np.zeros(tuple(shape), dtype=np.uint8)
    size = arrays[0].shape
    if len(size) != 2:
        raise InputError(f"entity masks must be 2-D (H, W), got shape {size}")
    if shape is not None and tuple(shape) != size:
        raise InputError(f"entity masks are {size} but shape={tuple(shape)} was asked for")
    for i, m in enumerate(arrays):
        if m.shape != size:
            raise InputError(f"entity mask {i} is {m.shape}, the first is {size}: sizes must match")
    arrays = [m if m.dtype == bool else m != 0 for m in arrays]
    areas = np.array([int(m.sum()) for m in arrays], dtype=np.int64)  # (M,)
    order = np.argsort(-areas, kind="stable")  # largest first, ties in input order
    order = order[areas[order] > 0][:k]
    labels = np.zeros(size, dtype=np.uint8)  # (H, W)
    for rank, idx in enumerate(order, start=1):  # largest first: smaller masks overwrite
        labels[arrays[idx]] = rank
    return labels


def entity_count(labels: np.ndarray) -> int:
    """Number of distinct non-zero labels present in a uint8 label map."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=256)  # (256,)
    return int((counts[1:] > 0).sum())
