"""RefSegRS (Yuan et al., 2024): 4,420 triplets on 512x512 tiles, test 1,817.

Official layout under ``root``::

    images/<stem>.tif            RGB tile
    masks/<stem>.tif             mask; pixels > 50 are the object (JPEG-like noise below)
    output_phrase_train.txt      one "<stem> <sentence>" a line
    output_phrase_val.txt
    output_phrase_test.txt

Every line is one expression; ``ref_id`` and ``image_id`` are the stem, so repeated stems
(several sentences for one mask) form one ref and sample ids become ``stem``, ``stem#1``...
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from entitwist.data.base import (
    DEFAULT_MAX_ENTITIES,
    MaskFile,
    Record,
    ReferringDataset,
    check_root,
    check_split,
    file_dataset,
    image_key,
    parse_phrase_file,
    unique_ids,
)

__all__ = ["SPLITS", "load_refsegrs"]

SPLITS = ("train", "val", "test")


def load_refsegrs(
    root: str | os.PathLike,
    split: str,
    *,
    transform: Callable[[dict], Any] | None = None,
    entities: str | os.PathLike | None = "auto",
    one_expression_per_ref: bool = False,
    max_entities: int = DEFAULT_MAX_ENTITIES,
    seed: int | torch.Generator | None = None,
    mask_threshold: float = 50,
    image_suffix: str = ".tif",
    mask_suffix: str = ".tif",
) -> ReferringDataset:
    """RefSegRS split ``split`` (train/val/test) as a :class:`ReferringDataset`."""
    root = check_root("refsegrs", root)
    check_split("refsegrs", split, SPLITS)
    phrase_file = root / f"output_phrase_{split}.txt"
    # Lines name the stem; a key written with the image suffix ("12.tif") is accepted too.
    lines = [
        (n, k[: -len(image_suffix)] if k.endswith(image_suffix) else k, t)
        for n, k, t in parse_phrase_file(phrase_file)
    ]
    ids = unique_ids([stem for _, stem, _ in lines])
    records = []
    for (_, stem, sentence), sid in zip(lines, ids):
        image_path = root / "images" / f"{stem}{image_suffix}"
        records.append(
            Record(
                sample_id=sid,
                expression=sentence,
                image_path=image_path,
                image_key=image_key(image_path, root),
                image_id=stem,
                ref_id=stem,
                mask=MaskFile(root / "masks" / f"{stem}{mask_suffix}", mask_threshold),
            )
        )
    return file_dataset(
        records,
        name="refsegrs",
        root=root,
        split=split,
        listed_in=str(phrase_file),
        entities=entities,
        transform=transform,
        one_expression_per_ref=one_expression_per_ref,
        max_entities=max_entities,
        seed=seed,
    )
