"""Which files a segmentation writes: :class:`OutputPlan`, chosen from names or flags.

A name's kind comes from its suffix (:func:`classify`): ``.png`` is the mask PNG (a name
ending in ``overlay.png``: the overlay), ``.tif`` the mask GeoTIFF (``prob`` in the stem: the
probability GeoTIFF), ``.geojson`` / ``.gpkg`` the polygons; a name without a suffix is a
stem for every kind (:func:`stem_outputs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from entitwist.errors import InputError

__all__ = [
    "KINDS",
    "OutputPlan",
    "classify",
    "stem_outputs",
    "plan_outputs",
    "check_output_folder",
    "parse_kinds",
]

KINDS = ("mask_png", "mask_tif", "probability", "polygons", "overlay")

_PNG = {".png"}
_TIF = {".tif", ".tiff"}
_VEC = {".geojson", ".json", ".gpkg"}
SUFFIXES = {
    "mask_png": _PNG,
    "mask_tif": _TIF,
    "probability": _TIF,
    "polygons": _VEC,
    "overlay": _PNG,
}
_STEM_NAMES = {
    "mask_png": "_mask.png",
    "mask_tif": "_mask.tif",
    "probability": "_probability.tif",
    "polygons": ".geojson",
    "overlay": "_overlay.png",
}


@dataclass
class OutputPlan:
    """The outputs to write: ``(kind, path)`` pairs, kind one of :data:`KINDS`.

    A kind may appear more than once (``-o roofs.geojson -o roofs.gpkg``).
    """

    outputs: list[tuple[str, Path]] = field(default_factory=list)

    def targets(self) -> list[tuple[str, Path]]:
        return list(self.outputs)

    def paths(self, kind: str) -> list[Path]:
        return [p for k, p in self.outputs if k == kind]

    @property
    def geo_outputs(self) -> list[str]:
        return [k for k in ("mask_tif", "probability", "polygons") if self.paths(k)]

    def finished(self) -> bool:
        """Every output exists (a resumed batch skips the image)."""
        return bool(self.outputs) and all(p.is_file() for _, p in self.outputs)


def classify(path: Path) -> str:
    """The kind of an output name, or ``"stem"`` for a name without a suffix."""
    suffix = path.suffix.lower()
    name = path.name.lower()
    if suffix in _PNG:
        return "overlay" if name.endswith("overlay.png") else "mask_png"
    if suffix in _TIF:
        return "probability" if "prob" in path.stem.lower() else "mask_tif"
    if suffix in _VEC:
        return "polygons"
    if suffix == "":
        return "stem"
    raise InputError(
        f"output {str(path)!r} has an unsupported suffix {path.suffix!r}; use .png, .tif, "
        ".geojson, .gpkg or no suffix (all outputs)"
    )


def stem_outputs(stem: Path, kinds: Iterable[str] = KINDS) -> list[tuple[str, Path]]:
    """``stem_mask.png``, ``stem_mask.tif``, ``stem_probability.tif``, ``stem.geojson``,
    ``stem_overlay.png`` (those of ``kinds``)."""
    return [(k, stem.with_name(stem.name + _STEM_NAMES[k])) for k in KINDS if k in set(kinds)]


def parse_kinds(spec: str | None) -> list[str]:
    """``"all"`` / None -> every kind; else a comma-separated subset of :data:`KINDS`."""
    if spec is None or spec.strip().lower() in {"", "all"}:
        return list(KINDS)
    kinds = [k.strip().replace("-", "_") for k in spec.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InputError(
            f"--kinds {spec!r} names {bad[0] if bad else 'nothing'!r}; choose from "
            f"{', '.join(KINDS)} (comma-separated) or all"
        )
    return kinds


def check_output_folder(folder: Path, what: str = "output folder") -> None:
    """Raise :class:`InputError` unless ``folder`` is an existing writable folder."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {str(folder)!r} is a file; give a folder")
    if not folder.is_dir():
        raise InputError(f"{what} {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{what} {str(folder)!r} is not writable; choose another folder")


def plan_outputs(
    outputs: Sequence[str | os.PathLike],
    flags: Mapping[str, str | os.PathLike | None],
    *,
    image: str | os.PathLike,
    overwrite: bool = False,
) -> OutputPlan:
    """Resolve ``-o`` names and per-kind flags (``{"mask_png": path or None, ...}``) into an
    :class:`OutputPlan` and check every target (suffix, not twice, not the input, folder
    exists and is writable, not existing unless ``overwrite``)."""
    chosen: list[tuple[str, Path]] = []
    for out in outputs:
        path = Path(out)
        kind = classify(path)
        chosen += stem_outputs(path) if kind == "stem" else [(kind, path)]
    for kind, allowed in SUFFIXES.items():
        value = flags.get(kind)
        if value is not None:
            path = Path(value)
            if path.suffix.lower() not in allowed:
                flag = "--" + kind.replace("_", "-")
                raise InputError(
                    f"{flag} {str(value)!r} must end in {' or '.join(sorted(allowed))}"
                )
            chosen.append((kind, path))
    if not chosen:
        raise InputError(
            "no output given; add -o OUT (e.g. -o mask.tif, -o roofs.gpkg, or -o run1 for all)"
        )
    plan = OutputPlan()
    resolved_image = Path(image).resolve()
    seen: set[Path] = set()
    for kind, path in chosen:
        resolved = path.resolve()
        if resolved in seen:
            raise InputError(
                f"output {str(path)!r} is given twice; give each output its own file name"
            )
        if resolved == resolved_image:
            raise InputError(f"output {str(path)!r} is the input image; choose another file name")
        if path.is_dir():
            raise InputError(f"output {str(path)!r} is a directory; give a file name inside it")
        check_output_folder(path.parent)
        if path.exists() and not overwrite:
            raise InputError(f"output {str(path)!r} exists; pass --overwrite to replace it")
        seen.add(resolved)
        plan.outputs.append((kind, path))
    return plan
