"""Where a model's entity priors come from: the one place that decides.

A model records the priors it was built for in its config (``fusion.entity_generator``,
``fusion.entity_params``, ``fusion.max_entities``; the paper's models: SAM ViT-B masks,
K = 40). :class:`EntitySpec` reads that record, and

- :func:`resolve_store` picks, for training and evaluation, the entity store under
  ``<root>/entities/`` whose ``manifest.json`` matches it (generator, every parameter the
  model records, e.g. SAM's ``model_type``, K, and the bands and stretch of
  ``config.imaging``; a manifest without them was read with the defaults). No match,
  several matches, or SEG on with no store at all is a one-line
  :class:`~entitwist.errors.DataError` naming the stores found, what the model wants and
  the ``entitwist entities`` command that builds the right store. A model without SEG (and without the entity head) needs no store.
- :func:`inference_generator` picks, for new images (``Predictor``, ``entitwist segment``,
  the app), the generator to run: the model's recorded one, or an explicit override that
  is reported.

Called without a spec (``need=None``, the dataset loaders on their own), ``"auto"`` takes
the only store there is and a tag or folder is taken as given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entitwist.entities.store import (
    DEFAULT_IMAGING,
    MANIFEST,
    EntityStore,
    imaging_record,
    manifest_imaging,
)
from entitwist.errors import CheckpointError, ConfigError, DataError, EntitwistError

__all__ = [
    "EntitySpec",
    "InferenceEntities",
    "inference_generator",
    "list_stores",
    "resolve_store",
]

#: The file name shown in commands that need a SAM checkpoint (the paper's ViT-B weights).
SAM_VIT_B_FILE = "sam_vit_b_01ec64.pth"


@dataclass(frozen=True)
class EntitySpec:
    """The entity priors a model needs.

    Attributes:
        generator: generator name (``sam``, ``felzenszwalb``, ...); ``None`` accepts any
            generator (a model whose config records none, e.g. an old checkpoint).
        max_entities: K, 1..``entitwist.entities.MAX_K``.
        params: generator parameters a store must have (only those listed are compared;
            the paper's models list ``{"model_type": "vit_b"}``).
        imaging: the bands and stretch the pictures are read with
            (:func:`~entitwist.entities.store.imaging_record`); a store read otherwise does
            not match. ``None`` accepts any imaging.
    """

    generator: str | None
    max_entities: int
    params: Mapping[str, Any] = field(default_factory=dict)
    imaging: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, config: Any) -> EntitySpec | None:
        """The spec of a :class:`~entitwist.config.ModelConfig`, or ``None`` when the model
        reads no entity maps (SEG off and no entity head)."""
        fusion = config.fusion
        head = int(getattr(config.decoder, "entity_head_layers", 0) or 0)
        if not fusion.seg and head == 0:
            return None
        imaging = getattr(config, "imaging", None)
        options = imaging.read_options() if imaging is not None else {}
        return cls(
            fusion.entity_generator,
            int(fusion.max_entities),
            dict(fusion.entity_params or {}),
            imaging_record(options.get("bands"), options.get("stretch")),
        )

    def describe(self) -> str:
        """``sam (model_type=vit_b), K=40`` (``, bands 4,3,2, stretch 2,98`` when the
        imaging is not the default)."""
        name = self.generator or "any generator"
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        text = f"{name}{f' ({params})' if params else ''}, K={self.max_entities}"
        return text + _imaging_text(self.imaging)

    def command(self, root: str | os.PathLike) -> str:
        """The ``entitwist entities`` command that builds a store this spec accepts."""
        from entitwist.entities.generators import DEFAULT_GENERATOR, GENERATORS

        name = self.generator or DEFAULT_GENERATOR
        parts = ["entitwist entities", str(root), "--generator", name]
        defaults = getattr(GENERATORS.get(name), "DEFAULTS", {})
        if name == "sam":
            parts += ["--sam-checkpoint", SAM_VIT_B_FILE]
        for key, value in sorted(self.params.items()):
            if key == "model_type" and name == "sam":
                parts += ["--model-type", str(value)]
            elif defaults.get(key, object()) != value:
                parts += ["--param", f"{key}={value}"]
        parts += ["--max-entities", str(self.max_entities)]
        for flag, value in _imaging_options(self.imaging):
            parts += [flag, value]
        return " ".join(parts)

    def mismatches(self, manifest: Mapping[str, Any]) -> list[str]:
        """What differs between a store's manifest and this spec (empty: it matches)."""
        out = []
        if self.generator is not None and manifest.get("generator") != self.generator:
            out.append(f"generator {manifest.get('generator')!r}")
        have = manifest.get("params") or {}
        for key, value in sorted(self.params.items()):
            if have.get(key) != value:
                out.append(f"{key}={have.get(key)!r}")
        if _int_or_none(manifest.get("max_entities")) != self.max_entities:
            out.append(f"K={manifest.get('max_entities')}")
        if self.imaging is not None:
            have_imaging = _store_imaging(manifest)
            wanted = imaging_record(self.imaging.get("bands"), self.imaging.get("stretch"))
            for key in ("bands", "stretch"):
                if have_imaging.get(key) != wanted[key]:
                    out.append(f"{key} {_option_text(key, have_imaging.get(key))}")
        return out


def _store_imaging(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest's imaging; one that cannot be parsed is kept as written (a mismatch)."""
    try:
        return manifest_imaging(dict(manifest))
    except EntitwistError:
        recorded = manifest.get("imaging")
        return dict(recorded) if isinstance(recorded, Mapping) else {"bands": recorded}


def _option_text(key: str, value: Any) -> str:
    """The command-line spelling of a recorded band list or stretch (``auto``: the rule)."""
    if value is None:
        return "default" if key == "bands" else "auto"
    if isinstance(value, list | tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _imaging_options(imaging: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``--bands``/``--stretch`` options that read pictures with ``imaging``."""
    if imaging is None:
        return []
    return [
        (f"--{key}", _option_text(key, imaging.get(key)))
        for key in ("bands", "stretch")
        if imaging.get(key) is not None
    ]


def _imaging_text(imaging: Mapping[str, Any] | None) -> str:
    """``, bands 4,3,2, stretch 2,98`` for non-default imaging, else empty."""
    if imaging is None or dict(imaging) == DEFAULT_IMAGING:
        return ""
    return "".join(f", {key} {_option_text(key, imaging.get(key))}" for key in ("bands", "stretch"))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _summary(manifest: Mapping[str, Any] | None) -> str:
    if manifest is None:
        return "no manifest"
    params = manifest.get("params") or {}
    extra = f", model_type={params['model_type']}" if "model_type" in params else ""
    imaging = _imaging_text(_store_imaging(manifest))
    return f"{manifest.get('generator')}{extra}, K={manifest.get('max_entities')}{imaging}"


def list_stores(root: str | os.PathLike) -> list[EntityStore]:
    """The stores (folders with ``manifest.json``) under ``<root>/entities``, sorted by tag.

    A manifest that is not JSON, or lacks generator/params/K, is a :class:`DataError`.
    """
    base = Path(root) / "entities"
    if not base.is_dir():
        return []
    return [
        EntityStore(p)
        for p in sorted(base.iterdir())
        if not p.name.startswith(".") and (p / MANIFEST).is_file()
    ]


def resolve_store(
    root: str | os.PathLike,
    entities: str | os.PathLike | None = "auto",
    need: EntitySpec | None = None,
    *,
    required: bool | None = None,
    option: str = "data.entities",
) -> Path | None:
    """The entity store folder to read, or ``None`` for no entity maps.

    Args:
        root: the dataset root; stores live in ``<root>/entities/<tag>/``.
        entities: ``"auto"`` (the store matching ``need``; without ``need``, the only store
            there), a tag under ``<root>/entities``, a folder path, or ``None``.
        need: what the model needs (:meth:`EntitySpec.of`); checked against the manifest of
            the chosen store whichever way it was chosen.
        required: a store must be found (default: ``need is not None``); with ``None``
            entities or no store that is an error, never a silent G = 0.
        option: the setting named in messages.

    Raises:
        DataError: no store, no matching store, several matching stores, a store made with
            other settings, or an unreadable manifest (one line each, with the fix).
    """
    root = Path(root)
    required = need is not None if required is None else required
    if entities is None or (isinstance(entities, str) and entities.lower() in {"none", "null"}):
        if required:
            raise DataError(
                f"the model uses entity priors ({need.describe() if need else 'SEG'}) but "
                f"{option} is none; build them with `{_command(need, root)}` and set "
                f"{_setting(option, 'auto')}, or turn SEG off"
            )
        return None
    if isinstance(entities, str) and entities == "auto":
        return _auto(root, need, required, option)
    folder = _explicit_folder(root, entities, need, option)
    if need is not None:
        manifest = EntityStore(folder).manifest
        if manifest is None:
            raise DataError(
                f"entity store {folder} has no {MANIFEST}, so its generator and K are unknown; "
                f"rebuild it with `{need.command(root)}`"
            )
        diff = need.mismatches(manifest)
        if diff:
            raise DataError(
                f"entity store {folder} ({_summary(manifest)}) does not match the model, which "
                f"wants {need.describe()} (store has {', '.join(diff)}); build the right one with "
                f"`{need.command(root)}` and set {_setting(option, 'auto')}"
            )
    return folder


def _setting(option: str, value: str) -> str:
    return f"{option} {value}" if option.startswith("-") else f"{option}: {value}"


def _command(need: EntitySpec | None, root: Path) -> str:
    return need.command(root) if need is not None else f"entitwist entities {root}"


def _explicit_folder(
    root: Path, entities: str | os.PathLike, need: EntitySpec | None, option: str
) -> Path:
    text = os.fspath(entities)
    looks_like_path = os.sep in text or "/" in text or Path(text).is_absolute()
    folder = Path(text).expanduser() if looks_like_path else root / "entities" / text
    if not folder.is_dir():
        cmd = _command(need, root) if need else f"entitwist entities {root} --generator {text}"
        raise DataError(
            f"entity store {folder} not found ({option}={text!r}); build it with `{cmd}` "
            f"or set {_setting(option, 'auto')}"
        )
    return folder


def _auto(root: Path, need: EntitySpec | None, required: bool, option: str) -> Path | None:
    stores = list_stores(root)
    base = root / "entities"
    found = ", ".join(f"{s.directory.name} ({_summary(s.manifest)})" for s in stores) or "none"
    if need is None:
        if not stores:
            if required:
                raise DataError(
                    f"no entity store under {base}; build one with `entitwist entities {root}`"
                )
            return None
        if len(stores) > 1:
            raise DataError(
                f"{base} holds several entity stores ({found}); set {option} to one tag "
                f"(e.g. {stores[0].directory.name!r})"
            )
        return stores[0].directory
    matching = [s for s in stores if s.manifest is not None and not need.mismatches(s.manifest)]
    if len(matching) == 1:
        return matching[0].directory
    if not matching:
        raise DataError(
            f"no entity store under {base} matches the model, which wants {need.describe()} "
            f"(found: {found}); build it with `{need.command(root)}`"
        )
    tags = ", ".join(s.directory.name for s in matching)
    raise DataError(
        f"several entity stores under {base} match the model ({tags}); set {option} to one "
        f"of them (e.g. {matching[0].directory.name!r})"
    )


# ---------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class InferenceEntities:
    """The generator to run on new images: name, keyword parameters, and ``note`` (a line
    to show the user when it is not the one the model was trained with, else ``None``)."""

    name: str
    params: dict[str, Any]
    note: str | None = None


def inference_generator(
    config: Any,
    override: str | None = None,
    *,
    sam_checkpoint: str | os.PathLike | None = None,
    params: Mapping[str, Any] | None = None,
    flag: str = "--sam-checkpoint",
) -> InferenceEntities:
    """Which generator computes the entity maps of a new image for this model.

    The model's recorded generator (with its recorded parameters, ``params`` on top) unless
    ``override`` names another one (reported in ``note``). ``sam_checkpoint`` selects SAM
    when no override is given. A SAM generator with no checkpoint is a
    :class:`CheckpointError` naming ``flag``. A model recording none uses
    ``felzenszwalb``.
    """
    from entitwist.entities.generators import DEFAULT_GENERATOR, GENERATORS

    fusion = getattr(config, "fusion", None)
    recorded = getattr(fusion, "entity_generator", None)
    extra = dict(params or {})
    if override is not None and override not in GENERATORS:
        raise ConfigError(
            f"unknown entity generator {override!r}; choose one of {', '.join(GENERATORS)}"
        )
    if override is None and sam_checkpoint is not None:
        override = "sam"
    name = override or recorded or DEFAULT_GENERATOR
    kwargs: dict[str, Any] = {}
    if name == recorded:
        kwargs.update(getattr(fusion, "entity_params", None) or {})
    kwargs.update(extra)
    note = None
    if recorded is not None and name != recorded:
        note = (
            f"entity maps from {name}, not {recorded} the model was trained with; "
            "expect lower accuracy"
        )
    if name == "sam":
        if sam_checkpoint is None and "checkpoint" not in kwargs:
            model_type = kwargs.get("model_type", "vit_b")
            weights = SAM_VIT_B_FILE if model_type == "vit_b" else f"sam_{model_type}.pth"
            if recorded == "sam":
                raise CheckpointError(
                    f"the model was built for SAM ({model_type}) entity maps and SAM needs a "
                    f"checkpoint: give {flag} {weights}, or choose a weight-free generator "
                    "such as felzenszwalb (lower accuracy)"
                )
            raise CheckpointError(
                f"the sam entity generator needs a checkpoint: give {flag} {weights}"
            )
        if sam_checkpoint is not None:
            if not Path(sam_checkpoint).is_file():
                raise CheckpointError(
                    f"{flag} {str(sam_checkpoint)!r} does not exist; give a sam_vit_*.pth file"
                )
            kwargs["checkpoint"] = str(sam_checkpoint)
    elif sam_checkpoint is not None:
        raise ConfigError(f"{flag} applies to SAM entities only, not to {name}")
    return InferenceEntities(name, kwargs, note)
