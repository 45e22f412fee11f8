"""The entity store: one uint8 label-map PNG per image plus a manifest.

Layout::

    <dataset root>/entities/<tag>/manifest.json
    <dataset root>/entities/<tag>/<image key>.png

The *image key* is the image's path relative to the dataset root without its suffix
(``images/scene_0001``); keys with folders make folders. Maps are at the image's own size,
0 = no entity, 1..K. Keyed by image, not by expression (datasets reuse images).

The *tag* is the generator name (``felzenszwalb``, ``sam``, ...) when its output-changing
parameters and K are the defaults, else ``<name>-<8 hex>``, the first 8 hex digits of the
SHA-256 of the canonical JSON of ``{"params": ..., "max_entities": K}`` (plus ``"imaging"``
when the images were not read with the default bands and stretch). So stores made with
other settings sit side by side instead of mixing.

``manifest.json`` records the generator name, its parameters, the checkpoint SHA-256, K, the
imaging settings the images were read with (``{"bands": [4, 3, 2] or null, "stretch": null,
"none" or [low, high]}``; a manifest without them was read with the defaults), the entitwist
version and the creation time. Opening a store for a generator whose name, parameters,
checkpoint hash, K or imaging differ from the manifest raises :class:`DataError`.

Each map records, in a PNG text chunk (``entitwist:source``), the fingerprint of the image
file it was computed from (:func:`image_fingerprint`: a BLAKE2b digest of the file's bytes).
A map whose image has changed since is not taken for it: :meth:`EntityStore.load` with the
image's fingerprint raises :class:`DataError` naming both files, and
:meth:`EntityStore.has` reports it missing, so ``entitwist entities`` recomputes it. Maps
written before fingerprints were recorded carry none and are taken as they are.

Every file is written atomically (a hidden ``.<name>.<random>.tmp.png`` beside the target,
renamed on success), so a killed run never leaves a truncated ``<key>.png``;
:meth:`EntityStore.remove_stale_temporaries` deletes leftovers of killed runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from entitwist.entities.labelmap import MAX_ENTITIES, MAX_K
from entitwist.errors import DataError, InputError
from entitwist.utils import atomic_path, atomic_write_bytes

MANIFEST = "manifest.json"
SOURCE_KEY = "entitwist:source"  # PNG text chunk: the fingerprint of the map's image
FORMAT = "entitwist-entities/1"
_COMPARED = ("generator", "params", "checkpoint_sha256", "max_entities")
#: The imaging of a manifest that records none: the band and stretch rules.
DEFAULT_IMAGING: dict[str, Any] = {"bands": None, "stretch": None}


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def imaging_record(bands: Any = None, stretch: Any = None) -> dict[str, Any]:
    """The manifest's ``imaging`` entry for ``read_image`` options (``bands`` as ``"4,3,2"``
    or a sequence, ``stretch`` as ``"2,98"``, ``(2, 98)``, ``"none"``, ``"auto"`` or None):
    ``{"bands": [4, 3, 2] or None, "stretch": None, "none" or [low, high]}``.

    Raises :class:`InputError` for malformed bands or stretch.
    """
    from entitwist.imaging.rules import parse_bands, parse_stretch, stretch_to_json

    return {
        "bands": None if bands is None else [int(b) for b in parse_bands(bands, 255)],
        "stretch": stretch_to_json(parse_stretch(stretch)),
    }


def manifest_imaging(manifest: dict[str, Any]) -> dict[str, Any]:
    """The imaging a store's images were read with (the defaults for a manifest without it)."""
    recorded = manifest.get("imaging")
    if not isinstance(recorded, dict):
        return dict(DEFAULT_IMAGING)
    return imaging_record(recorded.get("bands"), recorded.get("stretch"))


def store_tag(
    generator: Any, max_entities: int = MAX_ENTITIES, imaging: dict[str, Any] | None = None
) -> str:
    """Folder name of a generator's store under ``<root>/entities/`` (see the module doc)."""
    defaults = getattr(generator, "DEFAULTS", None)
    other_imaging = imaging is not None and _canonical(imaging) != DEFAULT_IMAGING
    if generator.params == defaults and max_entities == MAX_ENTITIES and not other_imaging:
        return generator.name
    settings: dict[str, Any] = {"params": generator.params, "max_entities": max_entities}
    if other_imaging:
        settings["imaging"] = imaging
    blob = json.dumps(settings, sort_keys=True)
    return f"{generator.name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def default_store_dir(
    root: str | os.PathLike,
    generator: Any,
    max_entities: int = 40,
    out: str | None = None,
    imaging: dict[str, Any] | None = None,
) -> Path:
    """``<out or root/entities>/<tag>``: where ``entitwist entities`` writes by default."""
    base = Path(out) if out is not None else Path(root) / "entities"
    return base / store_tag(generator, max_entities, imaging)


def image_fingerprint(path: str | os.PathLike) -> str:
    """``"blake2b:<32 hex>"``: a digest of the image file's bytes (its content, not its name
    or time), recorded with each entity map so a changed image is never paired with a map
    computed from its earlier version.

    Raises:
        DataError: the file cannot be read.
    """
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(
            f"cannot read image {path} ({exc.strerror or exc}); check the path"
        ) from exc
    return "blake2b:" + digest.hexdigest()


def image_key(root: str | os.PathLike, image_path: str | os.PathLike) -> str:
    """Key of an image: its path relative to ``root``, POSIX separators, suffix removed."""
    try:
        rel = Path(os.path.abspath(image_path)).relative_to(os.path.abspath(root))
    except ValueError as exc:
        raise DataError(
            f"image {image_path} is outside the dataset root {root}; entity maps are keyed by "
            "the path inside the root, move the image into it"
        ) from exc
    rel_posix = PurePosixPath(*rel.parts)
    return str(rel_posix.with_suffix("")) if rel_posix.suffix else str(rel_posix)


class EntityStore:
    """A folder of entity label maps plus ``manifest.json``.

    Args:
        directory: the store folder (``<root>/entities/<tag>``).
        generator: when given, the store is created for it (folder and manifest) or, if it
            exists, checked against it: another generator, parameters, checkpoint or K raise
            :class:`DataError`. When ``None`` the store is opened as it is (reading, or
            saving without a manifest).
        max_entities: K recorded in / checked against the manifest (with ``generator``).
        imaging: the imaging the images are read with (:func:`imaging_record`; None: the
            defaults), recorded in / checked against the manifest (with ``generator``).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        generator: Any = None,
        max_entities: int = 40,
        imaging: dict[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise DataError(
                f"entity store path {self.directory} is a file, not a folder; choose another --out"
            )
        self.manifest: dict[str, Any] | None = self._read_manifest()
        if generator is not None:
            self._bind(generator, max_entities, imaging)

    # -- manifest -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    @property
    def max_entities(self) -> int | None:
        """K from the manifest, or ``None`` when there is no manifest."""
        return None if self.manifest is None else int(self.manifest["max_entities"])

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.manifest_path
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"entity store manifest {path} is unreadable ({type(exc).__name__}); "
                "delete the store folder and recompute it"
            ) from exc
        if not isinstance(data, dict) or any(k not in data for k in _COMPARED):
            raise DataError(
                f"entity store manifest {path} lacks {', '.join(_COMPARED)}; delete the store "
                "folder and recompute it"
            )
        return data

    @staticmethod
    def describe(
        generator: Any, max_entities: int, imaging: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The manifest entries that identify a generator setting and the imaging."""
        return _canonical(
            {
                "generator": generator.name,
                "params": generator.params,
                "checkpoint_sha256": generator.checkpoint_sha256,
                "max_entities": int(max_entities),
                "imaging": DEFAULT_IMAGING if imaging is None else imaging,
            }
        )

    def _bind(self, generator: Any, max_entities: int, imaging: dict[str, Any] | None) -> None:
        from entitwist import __version__

        wanted = self.describe(generator, max_entities, imaging)
        if self.manifest is not None:
            have = {k: _canonical(self.manifest[k]) for k in _COMPARED}
            have["imaging"] = manifest_imaging(self.manifest)
            diff = [k for k in wanted if have[k] != wanted[k]]
            if diff:
                detail = "; ".join(f"{k}: store {have[k]!r} vs asked {wanted[k]!r}" for k in diff)
                raise DataError(
                    f"entity store {self.directory} was made with other settings ({detail}); "
                    "use another --out or delete that folder, stores are never mixed"
                )
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"cannot create entity store folder {self.directory} ({exc.strerror or exc}); "
                "choose a writable --out"
            ) from exc
        if not os.access(self.directory, os.W_OK):
            raise DataError(
                f"entity store folder {self.directory} is not writable; choose a writable --out"
            )
        manifest = {
            "format": FORMAT,
            **wanted,
            "entitwist_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        try:
            atomic_write_bytes(self.manifest_path, text.encode("utf-8"))
        except OSError as exc:
            raise DataError(
                f"cannot write {self.manifest_path} ({exc.strerror or exc}); choose a writable --out"
            ) from exc
        self.manifest = manifest

    # -- maps ---------------------------------------------------------------------------
    def path_for(self, image_key: str) -> Path:
        """``<store>/<image_key>.png``; the key must be relative without ``..``."""
        if not isinstance(image_key, str) or not image_key.strip():
            raise InputError(f"entity image key must be a non-empty string, got {image_key!r}")
        key = PurePosixPath(image_key.replace("\\", "/"))
        if key.is_absolute() or ".." in key.parts or any(p.startswith(".") for p in key.parts):
            raise InputError(
                f"entity image key {image_key!r} must be a relative path without '..' or "
                "hidden parts (e.g. images/scene_0001)"
            )
        return self.directory.joinpath(*key.parts[:-1], key.parts[-1] + ".png")

    def has(self, image_key: str, source: str | None = None) -> bool:
        """True when a finished map exists for ``image_key`` and, when ``source`` (the image's
        :func:`image_fingerprint`) is given, was computed from that image (a map that
        records no fingerprint counts as computed from it)."""
        path = self.path_for(image_key)
        if not path.is_file():
            return False
        if source is None:
            return True
        recorded = self.source_of(image_key)
        return recorded is None or recorded == source

    def source_of(self, image_key: str) -> str | None:
        """The image fingerprint recorded with the map of ``image_key`` (None: no map, a map
        without one, or an unreadable file, which :meth:`load` reports)."""
        from PIL import Image

        try:
            with Image.open(self.path_for(image_key)) as im:
                value = im.info.get(SOURCE_KEY)
        except (OSError, SyntaxError, ValueError):
            return None
        return value if isinstance(value, str) else None

    def load(self, image_key: str, source: str | None = None) -> np.ndarray | None:
        """The uint8 (H, W) label map of ``image_key``, or ``None`` when none is stored.

        Args:
            image_key: the image's key.
            source: the image's :func:`image_fingerprint`; when given, a map recorded for
                another version of the image is refused.

        Raises:
            DataError: the PNG is corrupt, not single-channel 8-bit, holds labels > K, or
                was computed from another version of the image.
        """
        from PIL import Image

        path = self.path_for(image_key)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                labels = np.asarray(im)
                recorded = im.info.get(SOURCE_KEY)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                f"entity map {path} is corrupt ({type(exc).__name__}); delete it and rerun "
                "entitwist entities"
            ) from exc
        if mode != "L" or labels.ndim != 2:
            raise DataError(
                f"entity map {path} is mode {mode}, expected 8-bit single channel (L); delete "
                "it and rerun entitwist entities"
            )
        if source is not None and isinstance(recorded, str) and recorded != source:
            raise DataError(
                f"entity map {path} was computed from another version of image "
                f"{image_key!r} (the image changed since); rerun entitwist entities on the "
                "dataset, which recomputes changed images"
            )
        k = self.max_entities
        if k is not None and labels.size and int(labels.max()) > k:
            raise DataError(
                f"entity map {path} has label {int(labels.max())} > K={k} of its manifest; "
                "delete the store and recompute it"
            )
        return labels.astype(np.uint8, copy=False)

    def save(self, image_key: str, labels: np.ndarray, source: str | None = None) -> Path:
        """Write ``labels`` (H, W), integer values 0..K, as ``<key>.png`` atomically, with
        ``source`` (the image's :func:`image_fingerprint`) recorded in the PNG."""
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        arr = np.asarray(labels)
        if arr.ndim != 2 or arr.dtype.kind not in "ui" or arr.size == 0:
            raise InputError(
                f"an entity label map is an integer (H, W) array, got {arr.dtype} {arr.shape}"
            )
        top = int(arr.max())
        k = self.max_entities
        limit = MAX_K if k is None else k
        if int(arr.min()) < 0 or top > limit:
            raise InputError(
                f"entity label map for {image_key!r} has labels {int(arr.min())}..{top}, "
                f"allowed 0..{limit} (K)"
            )
        path = self.path_for(image_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            info = PngInfo()
            if source is not None:
                info.add_text(SOURCE_KEY, source)
            Image.fromarray(arr.astype(np.uint8), mode="L").save(tmp, format="PNG", pnginfo=info)
        return path

    def keys(self) -> Iterator[str]:
        """Keys of the stored maps (temporary files of unfinished writes are skipped)."""
        for path in sorted(self.directory.rglob("*.png")):
            rel = path.relative_to(self.directory)
            if any(p.startswith(".") for p in rel.parts):
                continue
            yield str(PurePosixPath(*rel.parts).with_suffix(""))

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def remove_stale_temporaries(self, older_than_s: float = 60.0) -> int:
        """Delete ``.<name>.*.tmp*`` files left by killed writers; return how many.

        Only files older than ``older_than_s`` seconds go, so that shards writing to the
        same store at the same time keep their in-flight files.
        """
        import time

        if not self.directory.is_dir():
            return 0
        count = 0
        now = time.time()
        for path in self.directory.rglob(".*.tmp*"):
            try:
                if path.is_file() and now - path.stat().st_mtime >= older_than_s:
                    path.unlink()
                    count += 1
            except FileNotFoundError:  # finished or removed meanwhile
                continue
        return count

    def __repr__(self) -> str:
        return f"EntityStore({str(self.directory)!r})"
