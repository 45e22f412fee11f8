"""RRSIS-D (Liu et al., 2024, RMSIN): 17,402 triplets on DIOR images, test 3,481.

Official layout under ``root`` (the refer/LAVT layout)::

    rrsisd/refs(unc).p           pickled list of refs: ref_id, ann_id, image_id, split,
                                 sentences [{raw, sent, tokens, sent_id}, ...]
    rrsisd/instances.json        COCO-style: images [{id, file_name, height, width}],
                                 annotations [{id, image_id, segmentation, ...}]
    images/rrsisd/JPEGImages/<file_name>   the DIOR JPEGs

Each sentence of a ref is one expression (``sentence_key="raw"`` by default, as LAVT and
RMSIN read it; ``"sent"`` gives the lower-cased form). Segmentations are polygons (a list
of flat ``[x1, y1, x2, y2, ...]`` lists) or COCO RLE (``{"counts", "size"}``, compressed
string or uncompressed list); they are decoded with pycocotools at the annotation's
``height x width``, exactly as the refer API of the published baselines reads them.

Some JPEGs are 800x801 or 800x787 while ``instances.json`` says 800x800: with
``check_sizes=True`` (default) the images' headers are read once when the split is loaded
and one :class:`DataWarning` gives the count; the mask of such an image is resized to the
image (nearest) when read, and counted in ``dataset.repairs``.

``refs(unc).p`` is read with :class:`SafeUnpickler`, which refuses every pickled class
except plain containers and scalars (dict, list, tuple, set, str, bytes, numbers, bool), so
a tampered file cannot run code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from entitwist.data.base import (
    DEFAULT_MAX_ENTITIES,
    DataWarning,
    Record,
    ReferringDataset,
    image_key,
)
from entitwist.data.files import check_files_exist, check_root, check_split, warn_skipped
from entitwist.entities.resolve import resolve_store
from entitwist.errors import DataError

__all__ = [
    "SPLITS",
    "SafeUnpickler",
    "safe_load_pickle",
    "PolygonMask",
    "decode_segmentation",
    "load_rrsisd",
]

SPLITS = ("train", "val", "test")

_SAFE_GLOBALS = {
    (module, name)
    for module in ("builtins", "__builtin__")
    for name in (
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "unicode",
        "bytes",
        "bytearray",
        "int",
        "long",
        "float",
        "complex",
        "bool",
    )
} | {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol 2 stores bytes as encode(str, "latin1"): no side effects
}


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that only rebuilds plain containers and scalars.

    Any other global (a class or function, which is how a pickle runs code) raises
    :class:`DataError`. Python 2 strings are decoded as UTF-8.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"refusing to unpickle {module}.{name}: the refs file may only hold lists, dicts, "
            "strings and numbers; replace it with the official refs(unc).p"
        )


def safe_load_pickle(path: Path) -> Any:
    """Load a pickle file with :class:`SafeUnpickler`; one-line DataError on failure."""
    if not path.is_file():
        raise DataError(f"RRSIS-D refs file not found: {path}; check the dataset root")
    data = path.read_bytes()
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read {path}: {type(exc).__name__}: {exc}; the file is corrupt, "
            "replace it with the official refs(unc).p"
        ) from exc


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode one COCO segmentation to a uint8 ``(height, width)`` 0/1 mask with pycocotools.

    This is what the refer API of LAVT and RMSIN (``REFER.getMask``) does, so boundary pixels
    match the published evaluation: polygons (a list of flat ``[x1, y1, x2, y2, ...]`` lists)
    go through ``frPyObjects`` at the annotation's size; RLE (``{"counts", "size"}``, a
    compressed string or an uncompressed list of runs) is decoded as stored. Several polygons
    are merged (union). The refer API sums them instead and its LAVT loader keeps pixels equal
    to 1, which drops the overlap of two polygons of one object: no RRSIS-D annotation has
    overlapping parts, so the two readings agree on the dataset.
    """
    with warnings.catch_warnings():
        # pycocotools' compiled decode warns under numpy 2 about its __array__ signature.
        warnings.simplefilter("ignore", DeprecationWarning)
        return _decode(segmentation, height, width)


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation.get("size", ())]
        counts = segmentation.get("counts")
        if len(size) != 2 or counts is None:
            raise DataError(
                "an RLE segmentation needs 'size' [h, w] and 'counts'; the annotation is corrupt"
            )
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != size[0] * size[1]:
                raise DataError(
                    f"RLE counts sum to {sum(int(c) for c in counts)}, expected "
                    f"{size[0]}*{size[1]}; the annotation is corrupt"
                )
            rle = coco_mask.frPyObjects(segmentation, *size)
        else:
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        mask = coco_mask.decode(rle)
    else:
        polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), np.uint8)
        rles = coco_mask.frPyObjects(polygons, height, width)
        mask = coco_mask.decode(coco_mask.merge(rles))
    return np.ascontiguousarray(mask, dtype=np.uint8)  # (h, w) 0/1


@dataclass(frozen=True)
class PolygonMask:
    """Picklable mask source: a COCO segmentation (polygons or RLE) at ``height x width``."""

    segmentation: Any
    height: int
    width: int

    def __call__(self) -> np.ndarray:
        return decode_segmentation(self.segmentation, self.height, self.width)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"RRSIS-D annotation file not found: {path}; check the dataset root")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 (offset {exc.start}); re-save it as UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno} is not valid JSON ({exc.msg}); replace the file"
        ) from exc


def load_rrsisd(
    root: str | os.PathLike,
    split: str,
    *,
    transform: Callable[[dict], Any] | None = None,
    entities: str | os.PathLike | None = "auto",
    one_expression_per_ref: bool = False,
    max_entities: int = DEFAULT_MAX_ENTITIES,
    seed: int | torch.Generator | None = None,
    sentence_key: str = "raw",
    check_sizes: bool = True,
    refs_file: str = "rrsisd/refs(unc).p",
    instances_file: str = "rrsisd/instances.json",
    image_dir: str = "images/rrsisd/JPEGImages",
) -> ReferringDataset:
    """RRSIS-D split ``split`` (train/val/test) as a :class:`ReferringDataset`."""
    root = check_root("rrsisd", root)
    check_split("rrsisd", split, SPLITS)
    refs_path = root / refs_file
    refs = safe_load_pickle(refs_path)
    if not isinstance(refs, list):
        raise DataError(
            f"{refs_path} holds a {type(refs).__name__}, expected a list of refs; replace it"
        )
    inst_path = root / instances_file
    instances = _read_json(inst_path)
    try:
        images = {int(im["id"]): im for im in instances["images"]}
        anns = {int(a["id"]): a for a in instances["annotations"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{inst_path} lacks COCO 'images'/'annotations' entries ({exc}); replace it"
        ) from exc

    records: list[Record] = []
    empty: list[str] = []
    for ref in refs:
        try:
            if ref["split"] != split:
                continue
            ref_id, ann_id, img_id = ref["ref_id"], int(ref["ann_id"]), int(ref["image_id"])
            sentences = ref["sentences"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"a ref in {refs_path} lacks {exc}; replace the refs file") from exc
        if img_id not in images:
            raise DataError(
                f"ref {ref_id}: image_id {img_id} is not in {inst_path}; the files do not match"
            )
        if ann_id not in anns:
            raise DataError(
                f"ref {ref_id}: ann_id {ann_id} is not in {inst_path}; the files do not match"
            )
        im = images[img_id]
        image_path = root / image_dir / im["file_name"]
        mask = PolygonMask(anns[ann_id]["segmentation"], int(im["height"]), int(im["width"]))
        for k, sent in enumerate(sentences):
            text = str(sent.get(sentence_key) or sent.get("sent") or "").strip()
            sid = str(sent.get("sent_id", f"{ref_id}_{k}"))
            if not text:
                empty.append(f"ref {ref_id} sentence {sid}")
                continue
            records.append(
                Record(
                    sample_id=sid,
                    expression=text,
                    image_path=image_path,
                    image_key=image_key(image_path, root),
                    image_id=str(img_id),
                    ref_id=str(ref_id),
                    mask=mask,
                )
            )
    warn_skipped("RRSIS-D sentences with no text", empty, f"fix them in {refs_path}")
    check_files_exist((r.image_path for r in records), str(inst_path), "images")
    if check_sizes:
        _warn_size_mismatches(records, inst_path)
    entity_dir = resolve_store(root, entities)
    tag = None if entity_dir is None else entity_dir.name
    ds = ReferringDataset(
        records,
        name="rrsisd",
        root=root,
        split=split,
        transform=transform,
        entity_dir=entity_dir,
        entity_tag=tag,
        one_expression_per_ref=one_expression_per_ref,
        max_entities=max_entities,
        seed=seed,
    )
    if check_sizes:
        ds._warned.add("mask")  # already summarised; later resizes are only counted
    return ds


def _warn_size_mismatches(records: Sequence[Record], inst_path: Path) -> int:
    """Read each image header once; one DataWarning with the number of size mismatches."""
    seen: dict[Path, tuple[int, int]] = {}
    for rec in records:
        if rec.image_path in seen:
            continue
        try:
            with Image.open(rec.image_path) as im:
                w, h = im.size
        except Exception as exc:
            raise DataError(
                f"cannot read {rec.image_path}: {exc}; the file is corrupt or not an image, replace it"
            ) from exc
        mask = rec.mask
        assert isinstance(mask, PolygonMask)
        if (h, w) != (mask.height, mask.width):
            seen[rec.image_path] = (h, w)
        else:
            seen[rec.image_path] = (0, 0)
    bad = [(p, hw) for p, hw in seen.items() if hw != (0, 0)]
    if bad:
        p, (h, w) = bad[0]
        warnings.warn(
            f"rrsisd: {len(bad)} of {len(seen)} images differ in size from {inst_path.name} "
            f"(e.g. {p.name} is {w}x{h}); their masks are resized to the image (nearest)",
            DataWarning,
            stacklevel=3,
        )
    return len(bad)
