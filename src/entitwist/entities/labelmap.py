"""Entity label maps: masks -> one uint8 map (paper section III-B, following GPRN).

The masks are sorted by area, the ``max_entities`` (K, 40 in the paper) largest are kept,
and they are painted largest first, so each pixel ends up with the smallest kept mask that
covers it. Labels are 1..K in area order (1 = the largest mask); 0 = no kept mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from entitwist.entities.store import MAX_K
from entitwist.errors import ConfigError, InputError

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


def compute_entities_with_count(
    image: np.ndarray, generator: Any = None, max_entities: int = MAX_ENTITIES
) -> tuple[np.ndarray, int]:
    """Like :func:`compute_entities`, also returning how many masks the generator made."""
    from entitwist.entities.generators import check_image, get_generator

    k = check_max_entities(max_entities)
    image = check_image(image)
    if generator is None:
        generator = _default_generator()
    elif isinstance(generator, str):
        generator = get_generator(generator)
    fast = getattr(generator, "label_map", None)
    if fast is not None:
        return fast(image, k)
    masks = generator(image)
    return paint_label_map(masks, k, shape=image.shape[:2]), len(masks)


def compute_entities(
    image: np.ndarray, generator: Any = None, max_entities: int = MAX_ENTITIES
) -> np.ndarray:
    """Entity label map of one image.

    Args:
        image: uint8 (H, W, 3) RGB.
        generator: ``None`` (the default weight-free ``felzenszwalb``), a generator name for
            :func:`entitwist.entities.get_generator`, or a generator object.
        max_entities: K (1..255).

    Returns:
        uint8 (H, W) label map, see :func:`paint_label_map`.
    """
    return compute_entities_with_count(image, generator, max_entities)[0]


_DEFAULT: list[Any] = []


def _default_generator() -> Any:
    if not _DEFAULT:
        from entitwist.entities.generators import get_generator

        _DEFAULT.append(get_generator())
    return _DEFAULT[0]
