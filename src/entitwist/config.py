"""Typed model configuration, saved inside every checkpoint.

A :class:`ModelConfig` describes a network completely: building a model from the same
config gives the same architecture, with no network access (the text encoder's
transformers config travels inside :class:`TextConfig`). Named variants in
:mod:`entitwist.models.registry` are just ``ModelConfig`` values; every ablation of the paper is a
field here, never a copied module.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entitwist.errors import ConfigError

DAT_ORDERS = ("sp_sa", "sa_sp", "parallel", "sp", "sa", "none")
PROPAGATIONS = ("mamba", "self_attention", "none")
SPATIALS = ("attention", "mamba")
TEXT_KINDS = ("bert", "clip")
POSITION_EMBEDDINGS = ("none", "sincos")
SCAN_RESIZES = ("bilinear", "area")


@dataclass
class VisualConfig:
    """Swin visual encoder (timm).

    Attributes:
        name: timm architecture name the weights belong to.
        img_size: network input size (square); 480 in the paper.
        embed_dim, depths, num_heads, window_size: Swin shape (Swin-B: 128, 2-2-18-2,
            4-8-16-32, 12). Stage widths are ``embed_dim * 2**t``.
        pretrained: ``None`` (random init), a local weight file (``.safetensors``, ``.pth``,
            ``.bin``; loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``), or
            ``"hub"`` to let timm fetch ``name``'s default weights.
        drop_path_rate: stochastic depth.
        position_embedding: ``"none"`` (the paper: Swin-B has only relative position
            biases) or ``"sincos"``: a fixed 2-D sine-cosine code of each patch's position
            added after the patch embedding (no weights; see
            :func:`entitwist.models.visual.sincos_position_embedding`). A Swin trained from
            scratch, like the tiny demo models, is otherwise translation-equivariant and
            cannot tell "left" from "right"; pretrained Swin-B learnt such cues.
    """

    name: str = "swin_base_patch4_window12_384"
    img_size: int = 480
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    pretrained: str | None = None
    drop_path_rate: float = 0.3
    position_embedding: str = "none"

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**t for t in range(len(self.depths)))


@dataclass
class TextConfig:
    """Text encoder (transformers).

    Attributes:
        kind: ``"bert"`` (any BERT-family encoder, MiniLM included) or ``"clip"`` (CLIP text tower).
        pretrained: hub id or local directory of weights and tokenizer; ``None`` builds a
            randomly initialised encoder from ``hf_config`` (tests, tiny variants).
        hf_config: the transformers config as a dict. Filled in from ``pretrained`` when a
            model is built, and stored in checkpoints so that loading needs no network.
        vocab: tokenizer vocabulary source when ``pretrained`` is None: ``"tiny"`` (the
            small vocabulary shipped in ``entitwist/assets``) or a path to a ``vocab.txt``.
        max_tokens: N, tokens per sentence including [CLS]/[SEP] (20 in the paper).
    """

    kind: str = "bert"
    pretrained: str | None = "bert-base-uncased"
    hf_config: dict[str, Any] | None = None
    vocab: str | None = None
    max_tokens: int = 20


@dataclass
class FusionConfig:
    """SEG + tri-modal cube + DAT, and the paper's ablations (Tables IV-VI, Fig. 6-7).

    Attributes:
        seg: SAM-inspired entity guidance on (G from entities) or off (G = 0).
        self_reasoning: the affinity refinement of eq. 2-3 (off: p^ = p).
        dat: ``"sp_sa"`` (paper), ``"sa_sp"``, ``"parallel"`` (sum), ``"sp"`` only,
            ``"sa"`` only, or ``"none"``: the baseline's plain multi-stage cross-attention
            (Q = F^in (+ G when seg), K/V = projected words, masked; Proj(CA + F^in)).
        propagation: channel propagation inside SP: ``"mamba"`` (paper), ``"self_attention"``
            (channel-wise self-attention, Fig. 7) or ``"none"`` (Fig. 7 "no design").
        spatial: ``"attention"`` (entity-aware cross-attention, paper) or ``"mamba"``
            (ReMamber-V: a spatial Mamba scan instead of SA).
        max_entities: K, the most entities per image (40 in the paper; 1..255,
            ``entitwist.entities.MAX_K``). The entity store a model trains on must have
            been made with the same K (``entitwist.entities.resolve_store``).
        scan_size: s, the side of the fixed grid the channel scan reads (16).
        scan_resize: how the cube is brought to s x s before the channel scan:
            ``"bilinear"`` (the paper's and ReMamber's reading, default; without
            antialiasing it samples only about 4 positions per grid cell, about 7% of the
            120x120 stage-1 positions at 480 px) or ``"area"`` (the mean over each cell,
            every position counts; an ablation). The way back to H x W is bilinear in both.
        d_state: SSM state size N of the Mamba blocks.
        attn_heads: attention heads per stage.
        attn_kv_stride: per-stage spatial stride applied to K/V of the spatial attention
            (1 = every position). Default (1, 1, 1, 1), the paper: attention over every
            position at every stage. The named fast variant ``entitwist_swinb_bert_fast``
            uses (2, 1, 1, 1): at stage 1 (120x120 at 480 px) keys/values come from a 60x60
            grid, which cuts the 14,400 x 14,400 attention four-fold (configs/README.md).
        entity_generator, entity_params: the entity generator (a name of
            ``entitwist.entities.list_generators()``) and the parameters of it the model
            was built for (the paper's models: ``"sam"``, ``{"model_type": "vit_b"}``).
            Training and evaluation only read a store whose manifest has this generator,
            these parameters and K (``entitwist.entities.resolve_store``); the predictor,
            the ``segment`` command and the app run this generator on new images.
            ``None``: not recorded (any generator's store of K is accepted, and the first
            training run records the one it used; inference falls back to
            ``felzenszwalb``).
    """

    seg: bool = True
    self_reasoning: bool = True
    dat: str = "sp_sa"
    propagation: str = "mamba"
    spatial: str = "attention"
    max_entities: int = 40
    scan_size: int = 16
    scan_resize: str = "bilinear"
    d_state: int = 16
    attn_heads: tuple[int, ...] = (4, 8, 16, 32)
    attn_kv_stride: tuple[int, ...] = (1, 1, 1, 1)
    entity_generator: str | None = None
    entity_params: dict[str, Any] | None = None


@dataclass
class DecoderConfig:
    """Convolutional decoder of eq. 11-14 (ReMamber-style).

    The defaults give a LAVT-sized head (two 512-wide 3x3 convs at 1/4 resolution, about
    68 GMAC at 480x480), which brings the full model to the paper's ~160 GMAC (Table IV).

    Attributes:
        width: channels of the decoder blocks M_0..M_2 (1x1 -> depthwise 3x3 -> 1x1).
        head_width: channels of the 3x3 conv-BN-ReLU layers of the head N at 1/4 resolution.
        head_layers: how many such 3x3 layers N stacks before its 1x1 classifier.
        expansion: hidden width of the M blocks as a multiple of ``width``.
        entity_head_layers: transformer layers of the entity selection head
            (:mod:`entitwist.models.entity_head`, an extension beyond the paper that scores
            whole entities against the sentence); 0 = off, the paper.
        entity_head_dim, entity_head_heads: width and attention heads of that head.
    """

    width: int = 384
    head_width: int = 512
    head_layers: int = 2
    expansion: int = 1
    entity_head_layers: int = 0
    entity_head_dim: int = 64
    entity_head_heads: int = 4


@dataclass
class ImagingConfig:
    """How image files become the network's uint8 RGB (:mod:`entitwist.imaging`), recorded
    with the model so that ``Predictor``, ``entitwist segment`` and the app read imagery as
    the training data was read.

    Attributes:
        bands: 1-based band numbers for R, G, B (or one band, copied); None: the band rule
            (bands 1, 2, 3, or band 1 x 3).
        stretch: None: the stretch rule (uint8 as is, other types per-band 2-98 %);
            ``"none"``: values as they are; ``(low, high)``: those percentiles.
    """

    bands: tuple[int, ...] | None = None
    stretch: tuple[float, float] | str | None = None

    def read_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`entitwist.imaging.read_image` (bands, stretch)."""
        bands = None if self.bands is None else ",".join(str(int(b)) for b in self.bands)
        stretch = self.stretch
        if isinstance(stretch, (tuple, list)):
            stretch = tuple(float(v) for v in stretch)  # type: ignore[assignment]  # checked by read_image
        return {"bands": bands, "stretch": stretch}


@dataclass
class ModelConfig:
    """Everything needed to rebuild an Enti-TwistNet."""

    name: str = "entitwist_swinb_bert"
    visual: VisualConfig = field(default_factory=VisualConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    imaging: ImagingConfig = field(default_factory=ImagingConfig)
    num_classes: int = 2

    # ------------------------------------------------------------------ validation
    def validate(self) -> ModelConfig:
        """Raise :class:`ConfigError` (one line, with the fix) on an impossible value."""
        f = self.fusion
        if f.dat not in DAT_ORDERS:
            raise ConfigError(
                f"fusion.dat={f.dat!r} is unknown; use one of {', '.join(DAT_ORDERS)}"
            )
        if f.propagation not in PROPAGATIONS:
            raise ConfigError(
                f"fusion.propagation={f.propagation!r} is unknown; use one of {', '.join(PROPAGATIONS)}"
            )
        if f.spatial not in SPATIALS:
            raise ConfigError(
                f"fusion.spatial={f.spatial!r} is unknown; use one of {', '.join(SPATIALS)}"
            )
        from entitwist.entities import GENERATORS
        from entitwist.entities.labelmap import check_max_entities

        check_max_entities(f.max_entities, "fusion.max_entities")
        if f.entity_generator is not None and f.entity_generator not in GENERATORS:
            raise ConfigError(
                f"fusion.entity_generator={f.entity_generator!r} is unknown; use one of "
                f"{', '.join(GENERATORS)} or None"
            )
        if f.scan_resize not in SCAN_RESIZES:
            raise ConfigError(
                f"fusion.scan_resize={f.scan_resize!r} is unknown; use one of {', '.join(SCAN_RESIZES)}"
            )
        if f.entity_params is not None and not isinstance(f.entity_params, dict):
            raise ConfigError(
                f"fusion.entity_params must be a dict of generator parameters, got "
                f"{type(f.entity_params).__name__}"
            )
        if f.scan_size < 1:
            raise ConfigError(f"fusion.scan_size={f.scan_size} must be a positive integer")
        n_stages = len(self.visual.depths)
        for name in ("attn_heads", "attn_kv_stride"):
            value = getattr(f, name)
            if len(value) != n_stages:
                raise ConfigError(
                    f"fusion.{name} has {len(value)} entries; give one per stage ({n_stages})"
                )
        for t, (dim, heads) in enumerate(zip(self.visual.stage_dims, f.attn_heads)):
            if dim % heads:
                raise ConfigError(
                    f"fusion.attn_heads[{t}]={heads} does not divide the stage width {dim}; pick a divisor"
                )
        if self.text.kind not in TEXT_KINDS:
            raise ConfigError(
                f"text.kind={self.text.kind!r} is unknown; use one of {', '.join(TEXT_KINDS)}"
            )
        if self.text.max_tokens < 2:
            raise ConfigError(
                f"text.max_tokens={self.text.max_tokens} must be at least 2 ([CLS] and [SEP])"
            )
        if self.visual.position_embedding not in POSITION_EMBEDDINGS:
            raise ConfigError(
                f"visual.position_embedding={self.visual.position_embedding!r} is unknown; use "
                f"one of {', '.join(POSITION_EMBEDDINGS)}"
            )
        if self.visual.position_embedding == "sincos" and self.visual.embed_dim % 4:
            raise ConfigError(
                f"visual.position_embedding='sincos' needs visual.embed_dim divisible by 4, got "
                f"{self.visual.embed_dim}"
            )
        if self.visual.img_size % 32:
            raise ConfigError(f"visual.img_size={self.visual.img_size} must be a multiple of 32")
        d = self.decoder
        if d.width < 1 or d.head_width < 1 or d.head_layers < 1 or d.expansion < 1:
            raise ConfigError(
                "decoder width, head_width, head_layers and expansion must be positive integers"
            )
        if d.entity_head_layers < 0:
            raise ConfigError(
                f"decoder.entity_head_layers={d.entity_head_layers} must be 0 (off) or more"
            )
        if d.entity_head_layers and (
            d.entity_head_dim < 1
            or d.entity_head_heads < 1
            or d.entity_head_dim % d.entity_head_heads
        ):
            raise ConfigError(
                f"decoder.entity_head_heads={d.entity_head_heads} must be positive and divide "
                f"decoder.entity_head_dim={d.entity_head_dim}"
            )
        if self.num_classes != 2:
            raise ConfigError("num_classes must be 2 (background, referred object)")
        self._validate_imaging()
        return self

    def _validate_imaging(self) -> None:
        from entitwist.errors import InputError
        from entitwist.imaging import parse_bands, parse_stretch

        options = self.imaging.read_options()
        try:
            if options["bands"] is not None:
                parse_bands(options["bands"], 255)
            parse_stretch(options["stretch"])
        except InputError as exc:
            raise ConfigError(f"imaging: {exc}") from None

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict (as written by :meth:`to_dict`); unknown keys are an error."""
        data = dict(data)
        sections = {
            "visual": VisualConfig,
            "text": TextConfig,
            "fusion": FusionConfig,
            "decoder": DecoderConfig,
            "imaging": ImagingConfig,
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                kwargs[key] = _build(sections[key], value, key)
            elif key in {"name", "num_classes"}:
                kwargs[key] = value
            else:
                raise ConfigError(
                    f"unknown model config key {key!r}; expected one of name, num_classes, {', '.join(sections)}"
                )
        return cls(**kwargs).validate()

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **overrides: Any) -> ModelConfig:
        """Copy with overrides; dotted or section keys (``fusion__seg=False`` or
        ``seg=False``) reach nested fields. Unknown keys raise :class:`ConfigError`."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_override(data, key, value)
        return ModelConfig.from_dict(data)


def _build(cls: type, value: Any, section: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"model config section {section!r} must be a mapping, got {type(value).__name__}"
        )
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(value) - set(names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))} in {section}; expected some of {', '.join(names)}"
        )
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return cls(**fixed)


def _set_override(data: dict[str, Any], key: str, value: Any) -> None:
    if "__" in key or "." in key:
        section, _, leaf = key.replace(".", "__").partition("__")
        if section not in data or not isinstance(data[section], dict) or leaf not in data[section]:
            raise ConfigError(f"unknown model option {key!r}")
        data[section][leaf] = value
        return
    if key in data and not isinstance(data[key], dict):
        data[key] = value
        return
    owners = [s for s, sub in data.items() if isinstance(sub, dict) and key in sub]
    if len(owners) != 1:
        where = "several sections" if owners else "no section"
        raise ConfigError(f"model option {key!r} matches {where}; write it as <section>__{key}")
    data[owners[0]][key] = value
