"""What the dataset loaders share: reading list files, checking that files and roots
exist, sample ids, skipped-line warnings, and :func:`file_dataset`, the common end of the
loaders whose masks are files (it finds the entity store and builds the
:class:`~entitwist.data.base.ReferringDataset`).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from entitwist.data.base import DataWarning, Record, ReferringDataset
from entitwist.entities.resolve import resolve_store
from entitwist.errors import DataError

__all__ = [
    "check_files_exist",
    "check_root",
    "check_split",
    "file_dataset",
    "parse_phrase_file",
    "read_text_lines",
    "unique_ids",
    "warn_skipped",
]


def read_text_lines(path: Path, what: str) -> list[str]:
    """Read a UTF-8 text file (BOM allowed) into lines; one-line DataError when it fails."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}; check the dataset root and split name")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read {path}: {exc.strerror or exc}; check that the file is readable"
        ) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "re-save the file as UTF-8"
        ) from exc
    return text.splitlines()


def check_files_exist(paths: Iterable[Path], listed_in: str, what: str) -> None:
    """Raise one DataError naming the first missing file and how many are missing."""
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{what} listed in {listed_in} not found: {missing[0]}{more}; restore the missing "
            "files or remove their lines"
        )


def warn_skipped(kind: str, places: list[str], fix: str) -> None:
    """One counted warning for lines that were skipped (naming up to five ``file:line``)."""
    if not places:
        return
    shown = ", ".join(places[:5]) + (f", ... ({len(places) - 5} more)" if len(places) > 5 else "")
    warnings.warn(f"skipped {len(places)} {kind}: {shown}; {fix}", DataWarning, stacklevel=3)


def parse_phrase_file(path: Path, what: str = "split file") -> list[tuple[int, str, str]]:
    """Parse ``<key> <sentence>`` lines (RefSegRS / RISBench ``output_phrase_*.txt``).

    Returns ``(line_number, key, sentence)`` in file order. Blank lines are ignored; a line
    with a key but no sentence is skipped with one counted :class:`DataWarning` for the file.
    """
    out: list[tuple[int, str, str]] = []
    empty: list[str] = []
    for lineno, line in enumerate(read_text_lines(path, what), start=1):
        text = line.strip()
        if not text:
            continue
        parts = text.split(None, 1)  # key, then the sentence after the first whitespace
        key, sentence = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        if not sentence:
            empty.append(f"{path.name}:{lineno}")
            continue
        out.append((lineno, key, sentence))
    warn_skipped("phrase lines with no text", empty, f"add the sentence to those lines of {path}")
    return out


def unique_ids(keys: Sequence[str]) -> list[str]:
    """Sample ids from keys: the key itself, or ``key#k`` for its k-th repeat (k >= 1)."""
    seen: Counter[str] = Counter()
    out = []
    for key in keys:
        out.append(key if seen[key] == 0 else f"{key}#{seen[key]}")
        seen[key] += 1
    return out


def check_split(name: str, split: str, splits: Sequence[str]) -> None:
    """ConfigError for a split name the dataset does not have."""
    from entitwist.errors import ConfigError

    if split not in splits:
        raise ConfigError(f"unknown split {split!r} for {name}; choose one of: {', '.join(splits)}")


def check_root(name: str, root: str | os.PathLike) -> Path:
    """The dataset root as a Path; DataError when it is not a folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"{name} dataset root not found: {path}; pass the folder that holds the dataset"
        )
    return path


def file_dataset(
    records: list[Record],
    *,
    name: str,
    root: Path,
    split: str,
    listed_in: str,
    entities: str | os.PathLike | None,
    **options: Any,
) -> ReferringDataset:
    """Check that every listed image and mask file exists, find the entity store, and build
    the dataset (the common end of the loaders whose masks are files)."""
    check_files_exist((r.image_path for r in records), listed_in, "images")
    check_files_exist((r.mask.path for r in records), listed_in, "masks")  # type: ignore[attr-defined]
    entity_dir = resolve_store(root, entities)
    tag = None if entity_dir is None else entity_dir.name
    return ReferringDataset(
        records, name=name, root=root, split=split, entity_dir=entity_dir, entity_tag=tag, **options
    )
