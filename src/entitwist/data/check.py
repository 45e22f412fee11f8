"""Check a downloaded benchmark against its official layout and published split sizes.

:func:`check_dataset` walks a dataset root without stopping at the first problem and
returns a :class:`CheckReport`: every missing file, every file no split names, every mask
whose size differs from its image, split files whose expression counts differ from the
published ones, and the entity stores found (with, given a model, whether one matches the
priors it needs). ``entitwist data check NAME ROOT`` prints one line a problem and exits 2
when the copy cannot be used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from entitwist.data.files import parse_phrase_file
from entitwist.data.layouts import LAYOUTS, Layout
from entitwist.errors import ConfigError, EntitwistError

__all__ = ["CheckReport", "Problem", "check_dataset"]

#: problems of these kinds make a copy unusable; the others are reported only.
FATAL = frozenset({"missing", "unreadable", "size"})


@dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` (missing, unreadable, size, count, extra, entities) and a line."""

    kind: str
    text: str

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL


@dataclass
class CheckReport:
    """What :func:`check_dataset` found."""

    name: str
    root: Path
    counts: dict[str, int] = field(default_factory=dict)  # split -> expressions found
    problems: list[Problem] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)  # one line per entity store

    @property
    def usable(self) -> bool:
        return not any(p.fatal for p in self.problems)

    def add(self, kind: str, text: str) -> None:
        self.problems.append(Problem(kind, text))

    def summary(self) -> str:
        layout = LAYOUTS[self.name]
        found = sum(self.counts.values())
        published = f" (published {layout.total:,})" if layout.total else ""
        fatal = sum(p.fatal for p in self.problems)
        verdict = "usable" if self.usable else "NOT usable"
        return (
            f"{layout.title} at {self.root}: {len(self.counts)} split(s), {found:,} expressions"
            f"{published}; {fatal} blocking problem(s), {len(self.problems) - fatal} note(s): "
            f"{verdict}"
        )


def _size(path: Path, report: CheckReport | None) -> tuple[int, int] | None:
    """(height, width) from the file header, or None (reported, given a report) when
    unreadable."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a finding
        try:
            import rasterio  # GeoTIFFs PIL cannot open

            with rasterio.open(path) as src:
                return src.height, src.width
        except Exception:  # noqa: BLE001
            if report is not None:
                report.add(
                    "unreadable", f"unreadable: {path} ({type(exc).__name__}); download it again"
                )
            return None


def _check_pairs(
    report: CheckReport,
    pairs: dict[Path, tuple[Path | None, str]],
) -> None:
    """Each (image -> (mask or None, where listed)): both exist, sizes equal."""
    for image, (mask, where) in sorted(pairs.items()):
        if not image.is_file():
            report.add("missing", f"missing: {image} (listed in {where})")
            continue
        if mask is not None and not mask.is_file():
            report.add("missing", f"missing: {mask} (mask of {image.name}, listed in {where})")
            continue
        if mask is None:
            _size(image, report)
            continue
        a, b = _size(image, report), _size(mask, report)
        if a and b and a != b:
            report.add(
                "size",
                f"size mismatch: {mask} is {b[1]}x{b[0]} but its image is {a[1]}x{a[0]}; "
                "download both again",
            )


def _extras(report: CheckReport, folder: Path, listed: set[Path], what: str) -> None:
    if not folder.is_dir():
        return
    extra = sorted(p for p in folder.iterdir() if p.is_file() and p not in listed)
    extra = [p for p in extra if not p.name.startswith(".")]
    for p in extra:
        report.add("extra", f"extra {what}: {p} is named by no split file")


def _check_phrase_layout(layout: Layout, root: Path, report: CheckReport) -> None:
    pairs: dict[Path, tuple[Path | None, str]] = {}
    for split in layout.splits:
        phrase = layout.phrase_path(root, split)
        if not phrase.is_file():
            report.add("missing", f"missing: {phrase} (the {split} split file)")
            continue
        try:
            lines = parse_phrase_file(phrase)
        except EntitwistError as exc:
            report.add("unreadable", f"unreadable: {exc}")
            continue
        report.counts[split] = len(lines)
        for number, key, _ in lines:
            stem, suffix = layout.parse_key(key)
            image = root / layout.image_dir / f"{stem}{suffix}"
            assert layout.mask_dir is not None
            mask = root / layout.mask_dir / f"{stem}{layout.mask_suffix or suffix}"
            pairs.setdefault(image, (mask, f"{phrase.name} line {number}"))
    _check_pairs(report, pairs)
    _extras(report, root / layout.image_dir, set(pairs), "image")
    masks = {m for m, _ in pairs.values() if m is not None}
    if layout.mask_dir is not None:
        _extras(report, root / layout.mask_dir, masks, "mask")


def _check_rrsisd(layout: Layout, root: Path, report: CheckReport) -> None:
    from entitwist.data.rrsisd import safe_load_pickle

    refs_path, inst_path = (root / f for f in layout.annotation_files)
    refs: Any = None
    instances: Any = None
    for path in (refs_path, inst_path):
        if not path.is_file():
            report.add("missing", f"missing: {path} (RRSIS-D annotation file)")
    if refs_path.is_file():
        try:
            refs = safe_load_pickle(refs_path)
        except EntitwistError as exc:
            report.add("unreadable", f"unreadable: {exc}")
    if inst_path.is_file():
        try:
            instances = json.loads(inst_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            report.add("unreadable", f"unreadable: {inst_path} ({exc}); download it again")
    if not isinstance(refs, list) or not isinstance(instances, dict):
        return
    for split in layout.splits:
        report.counts[split] = sum(
            len(r.get("sentences", ())) for r in refs if r.get("split") == split
        )
    images = {int(im["id"]): im for im in instances.get("images", [])}
    used = {int(r["image_id"]) for r in refs if "image_id" in r}
    folder = root / layout.image_dir
    pairs: dict[Path, tuple[Path | None, str]] = {}
    for image_id in sorted(used):
        im = images.get(image_id)
        if im is None:
            report.add("missing", f"missing: image id {image_id} in {inst_path.name}")
            continue
        pairs[folder / im["file_name"]] = (None, inst_path.name)
    _check_pairs(report, pairs)
    # JPEGs whose size differs from instances.json are known (a few 800x801): a note only.
    off = 0
    for image_id in sorted(used):
        im = images.get(image_id)
        path = None if im is None else folder / im["file_name"]  # type: ignore[assignment]
        if im is None or path is None or not path.is_file():
            continue
        size = _size(path, None)
        if size and size != (int(im["height"]), int(im["width"])):
            off += 1
    if off:
        report.add(
            "note",
            f"{off} image(s) differ in size from {inst_path.name}; their masks are resized "
            "to the image when read (known in the official release)",
        )
    _extras(report, folder, set(pairs), "image")


def _check_jsonl(root: Path, report: CheckReport) -> None:
    ann = root / "annotations.jsonl"
    if not ann.is_file():
        report.add("missing", f"missing: {ann} (the JSONL annotation file)")
        return
    pairs: dict[Path, tuple[Path | None, str]] = {}
    for number, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            report.add("unreadable", f"unreadable: {ann} line {number} is not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict) or not all(k in row for k in ("image", "mask", "split")):
            report.add("unreadable", f"unreadable: {ann} line {number} lacks image, mask or split")
            continue
        split = str(row["split"])
        report.counts[split] = report.counts.get(split, 0) + 1
        pairs.setdefault(root / row["image"], (root / row["mask"], f"{ann.name} line {number}"))
    _check_pairs(report, pairs)


def _check_stores(root: Path, report: CheckReport, model: str | None) -> None:
    from entitwist.entities.resolve import EntitySpec, list_stores, resolve_store

    try:
        stores = list_stores(root)
    except EntitwistError as exc:
        report.add("entities", f"entity stores: {exc}")
        return
    for store in stores:
        manifest = store.manifest or {}
        n = sum(1 for _ in store.keys())
        report.stores.append(
            f"entity store {store.directory.name}: {manifest.get('generator')}, "
            f"K={manifest.get('max_entities')}, {n} label maps"
        )
    if model is None:
        if not stores:
            report.add(
                "entities",
                f"no entity store under {root / 'entities'}; build one with "
                f"`entitwist entities {root}` (add --generator sam --sam-checkpoint FILE for "
                "the paper's priors)",
            )
        return
    spec = EntitySpec.of(_model_config(model))
    if spec is None:
        report.stores.append(f"model {model} reads no entity maps: no store needed")
        return
    try:
        folder = resolve_store(root, "auto", spec, option="--entities")
    except EntitwistError as exc:
        report.add("entities", f"entities: {exc}")
        return
    report.stores.append(f"model {model} ({spec.describe()}) will read {folder}")


def _model_config(model: str) -> Any:
    """The config of a registry name or of a saved model folder."""
    from entitwist.config import ModelConfig
    from entitwist.models.registry import get_config

    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return ModelConfig.from_json(path / "config.json")
    return get_config(model, pretrained=False)


def check_dataset(name: str, root: str | os.PathLike, *, model: str | None = None) -> CheckReport:
    """Check the copy of dataset ``name`` at ``root`` (see the module docstring).

    Args:
        name: ``rrsisd``, ``refsegrs``, ``risbench`` or ``jsonl``.
        root: the dataset folder.
        model: a registry name or model folder whose entity priors the stores must match.
    """
    if name not in LAYOUTS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(LAYOUTS)}")
    layout = LAYOUTS[name]
    root = Path(root).expanduser()
    report = CheckReport(name=name, root=root)
    if not root.is_dir():
        report.add("missing", f"missing: dataset root {root}; pass the folder that holds it")
        return report
    if name == "rrsisd":
        _check_rrsisd(layout, root, report)
    elif name == "jsonl":
        _check_jsonl(root, report)
    else:
        _check_phrase_layout(layout, root, report)
    for split, published in layout.split_sizes.items():
        found = report.counts.get(split)
        if found is not None and found != published:
            report.add(
                "count",
                f"split {split} has {found:,} expressions; the published split has {published:,}",
            )
    _check_stores(root, report, model)
    return report
