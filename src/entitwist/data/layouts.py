"""The benchmarks' official on-disk layouts, described once as data.

A :class:`Layout` says where a dataset keeps its images, masks and split files, how a split
file names an image, and how many expressions each published split holds. Three things
read these records, so they cannot disagree:

- the loaders of the phrase-file datasets (RefSegRS, RISBench: :func:`load_phrase_dataset`),
- ``entitwist entities`` (which images a dataset root holds: :func:`list_images`),
- ``entitwist data check`` (:mod:`entitwist.data.check`).

Published split sizes (expressions): RRSIS-D 12,181 / 1,740 / 3,481 (17,402); RefSegRS
2,172 / 431 / 1,817 (4,420); RISBench 26,300 / 10,013 / 16,159 (52,472).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
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
from entitwist.data.files import (
    check_root,
    check_split,
    file_dataset,
    parse_phrase_file,
    unique_ids,
)
from entitwist.errors import ConfigError, DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "Layout",
    "detect_layout",
    "list_images",
    "load_phrase_dataset",
    "load_refsegrs",
    "load_risbench",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class Layout:
    """One dataset's official layout under its root folder.

    Attributes:
        name: the dataset's name in ``load_dataset`` and on the command line.
        title: how papers write it.
        image_dir: folder of the images, relative to the root.
        image_suffixes: image file endings in that folder (the first is the default).
        mask_dir: folder of the mask files (``None``: masks are annotations, as in RRSIS-D).
        mask_suffix: mask file ending; ``None`` keeps the image's file name.
        mask_threshold: mask pixels above it are the object.
        phrase_file: split file pattern with ``{split}`` (``None``: no phrase files).
        annotation_files: other files the layout needs, relative to the root.
        splits: the split names.
        split_sizes: published expressions per split.
    """

    name: str
    title: str
    image_dir: str
    image_suffixes: tuple[str, ...]
    mask_dir: str | None = None
    mask_suffix: str | None = None
    mask_threshold: float = 0
    phrase_file: str | None = None
    annotation_files: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "val", "test")
    split_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Published expressions over all splits."""
        return sum(self.split_sizes.values())

    def phrase_path(self, root: Path, split: str) -> Path:
        assert self.phrase_file is not None
        return root / self.phrase_file.format(split=split)

    def parse_key(self, key: str, image_suffix: str | None = None) -> tuple[str, str]:
        """A split file's image name -> (stem, suffix): RefSegRS writes the stem ("12"),
        RISBench the file name ("0001.png"); either form is accepted in both."""
        suffix = Path(key).suffix
        if suffix.lower() in IMAGE_SUFFIXES:
            return key[: -len(suffix)], image_suffix or suffix
        return key, image_suffix or self.image_suffixes[0]


LAYOUTS: dict[str, Layout] = {
    "refsegrs": Layout(
        name="refsegrs",
        title="RefSegRS",
        image_dir="images",
        image_suffixes=(".tif", ".tiff"),
        mask_dir="masks",
        mask_suffix=".tif",
        mask_threshold=50,  # JPEG-like noise below
        phrase_file="output_phrase_{split}.txt",
        split_sizes={"train": 2172, "val": 431, "test": 1817},
    ),
    "risbench": Layout(
        name="risbench",
        title="RISBench",
        image_dir="img_rgb",
        image_suffixes=(".png",),
        mask_dir="mask",
        mask_suffix=None,
        mask_threshold=0,
        phrase_file="output_phrase_{split}.txt",
        split_sizes={"train": 26300, "val": 10013, "test": 16159},
    ),
    "rrsisd": Layout(
        name="rrsisd",
        title="RRSIS-D",
        image_dir="images/rrsisd/JPEGImages",
        image_suffixes=(".jpg", ".jpeg"),
        annotation_files=("rrsisd/refs(unc).p", "rrsisd/instances.json"),
        split_sizes={"train": 12181, "val": 1740, "test": 3481},
    ),
    "jsonl": Layout(
        name="jsonl",
        title="JSONL folder",
        image_dir=".",
        image_suffixes=IMAGE_SUFFIXES,
        annotation_files=("annotations.jsonl",),
        splits=(),
    ),
}


def load_phrase_dataset(
    layout: Layout,
    root: str | os.PathLike,
    split: str,
    *,
    transform: Callable[[dict], Any] | None = None,
    entities: str | os.PathLike | None = "auto",
    one_expression_per_ref: bool = False,
    max_entities: int = DEFAULT_MAX_ENTITIES,
    seed: int | torch.Generator | None = None,
    mask_threshold: float | None = None,
    image_suffix: str | None = None,
    mask_suffix: str | None = None,
) -> ReferringDataset:
    """Split ``split`` of a phrase-file dataset (``layout``) as a :class:`ReferringDataset`.

    Every line ``<image> <sentence>`` of the split file is one expression; lines naming the
    same image form one ref (``ref_id`` = ``image_id`` = the image's stem) and their sample
    ids become ``stem``, ``stem#1``, ... ``mask_threshold``, ``image_suffix`` and
    ``mask_suffix`` override the layout's defaults.
    """
    root = check_root(layout.name, root)
    check_split(layout.name, split, layout.splits)
    assert layout.mask_dir is not None
    phrase_file = layout.phrase_path(root, split)
    threshold = layout.mask_threshold if mask_threshold is None else mask_threshold
    lines = [
        (*layout.parse_key(key, image_suffix), sentence)
        for _, key, sentence in parse_phrase_file(phrase_file)
    ]
    records = []
    for (stem, suffix, sentence), sid in zip(lines, unique_ids([ln[0] for ln in lines])):
        image_path = root / layout.image_dir / f"{stem}{suffix}"
        m_suffix = mask_suffix or layout.mask_suffix or suffix
        records.append(
            Record(
                sample_id=sid,
                expression=sentence,
                image_path=image_path,
                image_key=image_key(image_path, root),
                image_id=stem,
                ref_id=stem,
                mask=MaskFile(root / layout.mask_dir / f"{stem}{m_suffix}", threshold),
            )
        )
    return file_dataset(
        records,
        name=layout.name,
        root=root,
        split=split,
        listed_in=str(phrase_file),
        entities=entities,
        transform=transform,
        one_expression_per_ref=one_expression_per_ref,
        max_entities=max_entities,
        seed=seed,
    )


def _bound(layout: Layout, doc: str) -> Callable[..., ReferringDataset]:
    loader = functools.partial(load_phrase_dataset, layout)
    loader.__doc__ = doc  # type: ignore[attr-defined]
    return loader


load_refsegrs = _bound(
    LAYOUTS["refsegrs"],
    """RefSegRS (Yuan et al., 2024): ``images/<stem>.tif``, ``masks/<stem>.tif`` (> 50),
    ``output_phrase_<split>.txt`` lines ``<stem> <sentence>``; as :func:`load_phrase_dataset`.""",
)
load_risbench = _bound(
    LAYOUTS["risbench"],
    """RISBench (Dong et al., 2024): ``img_rgb/<file>.png``, ``mask/<file>.png`` (> 0),
    ``output_phrase_<split>.txt`` lines ``<file.png> <sentence>``; as
    :func:`load_phrase_dataset`.""",
)


# --- which images a dataset root holds ------------------------------------------------------


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root``: a :data:`LAYOUTS` name, or ``"folder"`` (any images)."""
    if (root / "annotations.jsonl").is_file():
        return "jsonl"
    for name in ("rrsisd", "risbench", "refsegrs"):
        layout = LAYOUTS[name]
        folder = root / layout.image_dir
        if folder.is_dir() and any(folder.glob(f"*{layout.image_suffixes[0]}")):
            return name
    return "folder"


def _images_in(layout: Layout, root: Path) -> list[Path]:
    folder = root / layout.image_dir
    if not folder.is_dir():
        raise DataError(f"{layout.title} image folder {folder} not found; check ROOT and --dataset")
    found = {
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in layout.image_suffixes and not p.name.startswith(".")
    }
    return sorted(found)


def _jsonl_images(root: Path) -> list[Path]:
    ann = root / "annotations.jsonl"
    if not ann.is_file():
        raise DataError(f"{ann} not found; a JSONL dataset root holds annotations.jsonl")
    seen: dict[str, Path] = {}
    try:
        lines = ann.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{ann} is not UTF-8 text; re-save it as UTF-8") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{ann} line {number} is not JSON ({exc.msg}); fix that line") from exc
        image = row.get("image") if isinstance(row, dict) else None
        if not isinstance(image, str) or not image:
            raise DataError(f"{ann} line {number} has no 'image' field; add the image path")
        if image in seen:
            continue
        path = root / image
        if not path.exists() and (root / "images" / image).exists():
            path = root / "images" / image  # bare file names inside images/
        seen[image] = path
    return sorted(set(seen.values()))


def _folder_images(root: Path, exclude: list[Path]) -> list[Path]:
    excluded = [p.resolve() for p in exclude]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and not any((here / d).resolve() == e for e in excluded)
            and not (here == root and d == "entities")
        )
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                out.append(here / name)
    return sorted(out)


LAYOUT_CHOICES = ("auto", *LAYOUTS, "folder")


def list_images(
    root: str | os.PathLike, dataset: str = "auto", exclude: list[Path] | tuple[Path, ...] = ()
) -> list[Path]:
    """Image files of a dataset root, sorted, each listed once.

    The image folder of the layout (:data:`LAYOUTS`); JSONL: the distinct ``image`` fields of
    ``annotations.jsonl`` (relative to ROOT, or to ROOT/images for bare names); ``folder``:
    every image under ROOT except hidden files, ``ROOT/entities`` and ``exclude``.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset root {root} does not exist; check the path")
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder")
    if dataset not in LAYOUT_CHOICES:
        raise ConfigError(
            f"unknown --dataset {dataset!r}; choose one of {', '.join(LAYOUT_CHOICES)}"
        )
    if dataset == "auto":
        dataset = detect_layout(root)
    if dataset == "jsonl":
        images = _jsonl_images(root)
    elif dataset == "folder":
        images = _folder_images(root, list(exclude))
    else:
        images = _images_in(LAYOUTS[dataset], root)
    if not images:
        raise DataError(
            f"no images found under {root} as a {dataset} dataset; check ROOT and --dataset"
        )
    return images
