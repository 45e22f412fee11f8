"""RISBench (Dong et al., 2024): 52,472 triplets at 512x512, test 16,159.

Official layout under ``root``::

    img_rgb/<file>.png           RGB image
    mask/<file>.png              mask; pixels > 0 are the object
    output_phrase_train.txt      one "<file.png> <sentence>" a line
    output_phrase_val.txt
    output_phrase_test.txt

``ref_id`` is the mask file's stem (repeated file names form one ref); ``image_id`` is the
image file's stem.
"""

from __future__ import annotations

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
    check_root,
    check_split,
    file_dataset,
    image_key,
    parse_phrase_file,
    unique_ids,
)

__all__ = ["SPLITS", "load_risbench"]

SPLITS = ("train", "val", "test")


def load_risbench(
    root: str | os.PathLike,
    split: str,
    *,
    transform: Callable[[dict], Any] | None = None,
    entities: str | os.PathLike | None = "auto",
    one_expression_per_ref: bool = False,
    max_entities: int = DEFAULT_MAX_ENTITIES,
    seed: int | torch.Generator | None = None,
    mask_threshold: float = 0,
) -> ReferringDataset:
    """RISBench split ``split`` (train/val/test) as a :class:`ReferringDataset`."""
    root = check_root("risbench", root)
    check_split("risbench", split, SPLITS)
    phrase_file = root / f"output_phrase_{split}.txt"
    # Lines name the file with its suffix ("<file.png> <sentence>"); a bare stem gets ".png".
    lines = [
        (n, k if Path(k).suffix else f"{k}.png", t) for n, k, t in parse_phrase_file(phrase_file)
    ]
    stems = [Path(name).stem for _, name, _ in lines]
    records = []
    for (_, name, sentence), stem, sid in zip(lines, stems, unique_ids(stems)):
        image_path = root / "img_rgb" / name
        records.append(
            Record(
                sample_id=sid,
                expression=sentence,
                image_path=image_path,
                image_key=image_key(image_path, root),
                image_id=stem,
                ref_id=stem,
                mask=MaskFile(root / "mask" / name, mask_threshold),
            )
        )
    return file_dataset(
        records,
        name="risbench",
        root=root,
        split=split,
        listed_in=str(phrase_file),
        entities=entities,
        transform=transform,
        one_expression_per_ref=one_expression_per_ref,
        max_entities=max_entities,
        seed=seed,
    )
