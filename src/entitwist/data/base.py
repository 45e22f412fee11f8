"""The dataset every loader returns: referring records grouped into refs, read lazily.

A *record* is one referring expression with the files it points to (image, mask). Records
that describe the same object share a ``ref_id`` and form a *ref*. The dataset has two
modes:

- ``one_expression_per_ref=True`` (training): ``len(ds)`` is the number of refs and
  ``ds[i]`` draws one of ref ``i``'s expressions at random each time it is indexed (the
  paper's recipe). With ``seed=None`` the draw uses torch's global generator, which a
  ``DataLoader`` seeds in every worker from its own ``generator`` (so seeding the loader
  reproduces the draws, and workers never repeat each other). With ``seed=<int>`` the draw
  is a pure function of ``(seed, epoch, i)``, independent of workers and order; call
  :meth:`ReferringDataset.set_epoch` every epoch to change it (workers hold a copy of the
  dataset: with ``persistent_workers=True`` the new epoch does not reach them, so use
  ``seed=None`` there).
- ``one_expression_per_ref=False`` (evaluation): ``len(ds)`` is the number of expressions
  and ``ds[i]`` is expression ``i``, in file order.

A sample is a dict (ARCHITECTURE.md): ``image`` uint8 ``(H, W, 3)``, ``mask`` uint8
``(H, W)`` 0/1, ``expression`` str, ``sample_id``, ``image_id``, ``ref_id``, ``image_key``
str, ``orig_size`` ``(H, W)``, and ``entities`` uint8 ``(H, W)`` when an entity store is
attached. ``transform`` (e.g. :class:`entitwist.data.transforms.ReferringTransform`) is
applied last.

Repairs: a mask whose size differs from its image is resized to the image (nearest); the
first one warns (:class:`DataWarning`) and all are counted in ``ds.repairs`` (per process:
DataLoader workers count their own). An entity map whose size differs from its image is a
:class:`DataError` (checked from the file headers when the dataset is built): the store was
made for other images. Which store a dataset reads comes from
:func:`entitwist.entities.resolve_store` (:func:`entitwist.data.files.file_dataset`).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from entitwist.errors import DataError
from entitwist.imaging import read_image, read_mask, resize_nearest

__all__ = [
    "DataWarning",
    "Record",
    "MaskFile",
    "ReferringDataset",
    "image_key",
]

DEFAULT_MAX_ENTITIES = 40


class DataWarning(UserWarning):
    """A dataset problem that was repaired (a resized mask, a skipped line); counted."""


@dataclass(frozen=True)
class MaskFile:
    """A mask stored as an image file; pixels ``> threshold`` are the object."""

    path: Path
    threshold: float = 0

    def __call__(self) -> np.ndarray:
        return read_mask(self.path, self.threshold)  # (H, W) uint8 0/1


@dataclass(frozen=True)
class Record:
    """One referring expression and where its image and mask come from.

    ``mask`` is a picklable callable returning a uint8 ``(h, w)`` 0/1 array (a
    :class:`MaskFile`, or a polygon/RLE decoder for RRSIS-D). ``image_key`` is the image path
    relative to the dataset root without suffix: the key of the entity store.
    """

    sample_id: str
    expression: str
    image_path: Path
    image_key: str
    image_id: str
    ref_id: str
    mask: Callable[[], np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def image_key(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """The entity-store key of an image: its path relative to ``root``, no suffix, ``/``."""
    rel = Path(os.path.relpath(Path(path), Path(root)))
    return rel.with_suffix("").as_posix()


def _entity_command(root: Path, tag: str | None) -> str:
    gen = f" --generator {tag}" if tag else ""
    return f"`entitwist entities {root}{gen}`"


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of an image file from its header (no pixels decoded); None when PIL cannot
    tell (multi-band TIFFs are read by other means; they are checked when loaded)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, SyntaxError, ValueError):
        return None


class _EntityReader:
    """Reads ``<dir>/<image-key>.png`` through :class:`entitwist.entities.EntityStore`."""

    def __init__(self, folder: Path) -> None:
        from entitwist.entities.store import EntityStore

        self.folder = folder
        self._store = EntityStore(folder)
        self._checked: set[str] = set()  # keys whose map matched their image's fingerprint

    def path_for(self, key: str) -> Path:
        return Path(self._store.path_for(key))

    def load(self, key: str, image_path: Path | None = None) -> np.ndarray | None:
        """(H, W) uint8, or None when not stored; with ``image_path``, a map computed from
        another version of that image is refused (:class:`DataError`). Each image is hashed
        once per reader: images are shared by expressions and read every epoch."""
        from entitwist.entities.store import image_fingerprint

        source = None
        if image_path is not None and key not in self._checked:
            source = image_fingerprint(image_path)
        labels = self._store.load(key, source=source)
        if source is not None and labels is not None:
            self._checked.add(key)
        return labels


class ReferringDataset(Dataset):
    """Referring-segmentation samples read lazily from disk (see the module docstring).

    Args:
        records: the expressions of the split, in file order.
        name: dataset name, for messages.
        root: dataset root.
        split: split name, for messages.
        transform: callable applied to the sample dict last (or ``None``).
        entity_dir: folder of entity label maps to attach (``None``: none).
        entity_tag: generator tag of that folder, for messages.
        one_expression_per_ref: training mode (one random expression per ref) when True.
        max_entities: K; a stored label map with a label above K is a DataError.
        seed: ``None``, an int, or a ``torch.Generator`` (an int is drawn from it once).
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        name: str,
        root: Path,
        split: str,
        transform: Callable[[dict], Any] | None = None,
        entity_dir: Path | None = None,
        entity_tag: str | None = None,
        one_expression_per_ref: bool = False,
        max_entities: int = DEFAULT_MAX_ENTITIES,
        seed: int | torch.Generator | None = None,
    ) -> None:
        if not records:
            raise DataError(
                f"split {split!r} of {name} dataset at {root} has no samples; check the split "
                "name and the annotation files"
            )
        from entitwist.entities.labelmap import check_max_entities

        check_max_entities(max_entities)
        self.records = list(records)
        self.name = name
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.one_expression_per_ref = bool(one_expression_per_ref)
        self.max_entities = int(max_entities)
        if isinstance(seed, torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=seed).item())
        self.seed = seed
        self.epoch = 0
        self.repairs: Counter[str] = Counter()
        # entitwist.imaging.read_image options (bands, stretch, nodata): the model's imaging
        self.read_options: dict[str, Any] = {}
        self._warned: set[str] = set()

        groups: dict[str, list[int]] = {}
        for i, rec in enumerate(self.records):
            groups.setdefault(rec.ref_id, []).append(i)
        self.ref_ids: list[str] = list(groups)
        self.refs: list[list[int]] = list(groups.values())

        self.entity_dir = entity_dir
        self.entity_tag = entity_tag
        self._entities = _EntityReader(entity_dir) if entity_dir is not None else None
        if self._entities is not None:
            self._check_entity_maps()

    # ------------------------------------------------------------------ structure
    def __len__(self) -> int:
        return len(self.refs) if self.one_expression_per_ref else len(self.records)

    @property
    def num_refs(self) -> int:
        return len(self.refs)

    @property
    def num_expressions(self) -> int:
        return len(self.records)

    def images(self) -> dict[str, Path]:
        """Unique images of the split: entity-store key -> image path (file order)."""
        return {rec.image_key: rec.image_path for rec in self.records}

    def set_epoch(self, epoch: int) -> None:
        """Change the seeded expression draw (only matters with ``seed=<int>``)."""
        self.epoch = int(epoch)

    def __repr__(self) -> str:
        mode = "one expression per ref" if self.one_expression_per_ref else "every expression"
        ent = f", entities={self.entity_tag!r}" if self.entity_dir else ""
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"expressions={len(self.records)}, refs={len(self.refs)}, {mode}{ent})"
        )

    # ------------------------------------------------------------------ reading
    def record_index(self, index: int) -> int:
        """Index into ``self.records`` of the expression that ``ds[index]`` returns now.

        In training mode this draws (see the module docstring), so call it once per access.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        if not self.one_expression_per_ref:
            return index
        members = self.refs[index]
        if len(members) == 1:
            return members[0]
        if self.seed is None:
            k = int(torch.randint(len(members), (1,)).item())
        else:
            k = int(np.random.default_rng([self.seed, self.epoch, index]).integers(len(members)))
        return members[k]

    def __getitem__(self, index: int) -> Any:
        rec = self.records[self.record_index(index)]
        sample = self.load_record(rec)
        return self.transform(sample) if self.transform is not None else sample

    def load_record(self, rec: Record) -> dict[str, Any]:
        """Read one record into the raw sample dict (no transform)."""
        image = read_image(rec.image_path, **self.read_options)  # (H, W, 3) uint8
        h, w = image.shape[:2]
        mask = rec.mask()  # (h', w') uint8 0/1
        if mask.shape != (h, w):
            mask = self._repair(mask, (h, w), "mask", rec)
        sample: dict[str, Any] = {
            "image": image,
            "mask": mask,
            "expression": rec.expression,
            "sample_id": rec.sample_id,
            "image_id": rec.image_id,
            "ref_id": rec.ref_id,
            "image_key": rec.image_key,
            "orig_size": (h, w),
        }
        if self._entities is not None:
            labels = self._entities.load(rec.image_key, rec.image_path)
            if labels is None:
                raise DataError(
                    f"no entity map for image {rec.image_key!r} in {self.entity_dir}; run "
                    f"{_entity_command(self.root, self.entity_tag)} or pass entities=None"
                )
            top = int(labels.max()) if labels.size else 0
            if top > self.max_entities:
                raise DataError(
                    f"entity map {self._entities.path_for(rec.image_key)} has label {top} > "
                    f"max_entities={self.max_entities}; recompute it with --max-entities "
                    f"{self.max_entities} or raise max_entities"
                )
            if labels.shape != (h, w):
                raise DataError(
                    f"entity map {self._entities.path_for(rec.image_key)} is "
                    f"{labels.shape[1]}x{labels.shape[0]} but its image {rec.image_path} is "
                    f"{w}x{h}: the store was made for other images; rebuild it with "
                    f"{_entity_command(self.root, self.entity_tag)}"
                )
            sample["entities"] = labels  # (H, W) uint8
        return sample

    def _repair(self, arr: np.ndarray, size: tuple[int, int], kind: str, rec: Record) -> np.ndarray:
        self.repairs[f"{kind}_resized"] += 1
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(
                f"{self.name}: {kind} of sample {rec.sample_id!r} is {arr.shape[1]}x{arr.shape[0]} "
                f"but its image is {size[1]}x{size[0]}; resized to the image (nearest). Further "
                f"cases are not warned, only counted in dataset.repairs['{kind}_resized']",
                DataWarning,
                stacklevel=3,
            )
        return resize_nearest(arr, size)

    def _check_entity_maps(self) -> None:
        """Every image of the split has a map of its own size (headers only, no pixels)."""
        assert self._entities is not None
        images = self.images()
        missing = [k for k in images if not self._entities.path_for(k).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(images)} images of {self.name} split {self.split!r} have "
                f"no entity map in {self.entity_dir} (first: {missing[0]!r}); run "
                f"{_entity_command(self.root, self.entity_tag)} or pass entities=None"
            )
        for key, path in images.items():
            size = _image_size(path)
            labels = _image_size(self._entities.path_for(key))
            if size is not None and labels is not None and size != labels:
                raise DataError(
                    f"entity map {self._entities.path_for(key)} is {labels[1]}x{labels[0]} but "
                    f"its image {path} is {size[1]}x{size[0]}: the store was made for other "
                    f"images; rebuild it with {_entity_command(self.root, self.entity_tag)}"
                )
