"""Tests for entitwist.config: typed configs, validation, overrides, JSON round trip."""

from __future__ import annotations

import json

import pytest

from entitwist.config import DecoderConfig, FusionConfig, ModelConfig, TextConfig, VisualConfig
from entitwist.errors import ConfigError


def test_defaults_are_the_paper_setting() -> None:
    c = ModelConfig().validate()
    assert c.visual.stage_dims == (128, 256, 512, 1024)
    assert (c.visual.img_size, c.visual.window_size) == (480, 12)
    assert c.text.max_tokens == 20 and c.text.kind == "bert"
    assert (c.fusion.seg, c.fusion.dat, c.fusion.propagation) == (True, "sp_sa", "mamba")
    assert c.fusion.max_entities == 40
    assert c.fusion.attn_kv_stride == (1, 1, 1, 1)  # attention over every position
    assert c.fusion.scan_resize == "bilinear"  # the paper/ReMamber reading of the 16x16 resize
    assert c.visual.position_embedding == "none"  # Swin-B has relative position biases only


def test_json_round_trip(tmp_path) -> None:
    c = ModelConfig(
        text=TextConfig(pretrained=None, hf_config={"hidden_size": 32, "nested": {"a": [1, 2]}}),
        fusion=FusionConfig(dat="sa", attn_kv_stride=(2, 1, 1, 1)),
        decoder=DecoderConfig(width=64, head_layers=2),
    )
    path = tmp_path / "config.json"
    c.to_json(path)
    back = ModelConfig.from_json(path)
    assert back == c
    assert isinstance(back.fusion.attn_kv_stride, tuple)
    assert json.loads(path.read_text())["fusion"]["dat"] == "sa"


def test_replace_reaches_nested_fields_and_copies() -> None:
    c = ModelConfig()
    d = c.replace(seg=False, fusion__dat="parallel", img_size=256, **{"decoder.width": 64})
    assert (d.fusion.seg, d.fusion.dat, d.visual.img_size, d.decoder.width) == (
        False,
        "parallel",
        256,
        64,
    )
    assert c.fusion.seg is True and c.visual.img_size == 480  # original untouched
    assert c.replace(name="x").name == "x"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dat": "twist"}, "fusion.dat"),
        ({"propagation": "lstm"}, "propagation"),
        ({"spatial": "conv"}, "spatial"),
        ({"max_entities": 300}, "max_entities"),
        ({"attn_heads": (4, 8)}, "attn_heads"),
        ({"attn_heads": (3, 8, 16, 32)}, "divide"),
        ({"img_size": 100}, "multiple of 32"),
        ({"position_embedding": "rope"}, "position_embedding='rope' is unknown"),
        (
            {"position_embedding": "sincos", "embed_dim": 18, "attn_heads": (1, 2, 4, 8)},
            "divisible by 4",
        ),
        ({"text__kind": "gpt"}, "text.kind"),
        ({"max_tokens": 1}, "max_tokens"),
        ({"decoder__width": 0}, "decoder"),
        ({"nonsense": 1}, "nonsense"),
        ({"fusion__nonsense": 1}, "nonsense"),
        ({"pretrained": None}, "several sections"),
    ],
)
def test_bad_values_raise_one_line_config_errors(overrides, match) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        ModelConfig().replace(**overrides)
    assert "\n" not in str(info.value)


def test_from_dict_rejects_unknown_keys() -> None:
    data = ModelConfig().to_dict()
    data["visual"]["colour"] = "red"
    with pytest.raises(ConfigError, match="colour"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match="mapping"):
        ModelConfig.from_dict({"visual": 3})
    with pytest.raises(ConfigError, match="unknown model config key"):
        ModelConfig.from_dict({"extra": 1})


def test_stage_dims_follow_embed_dim() -> None:
    assert VisualConfig(embed_dim=32, depths=(1, 1, 2, 1)).stage_dims == (32, 64, 128, 256)


def test_scan_resize_and_entity_generator_are_checked() -> None:
    assert ModelConfig().replace(scan_resize="area").fusion.scan_resize == "area"
    with pytest.raises(ConfigError, match="scan_resize='nearest' is unknown"):
        ModelConfig().replace(scan_resize="nearest")
    assert ModelConfig().replace(entity_generator="sam").fusion.entity_generator == "sam"
    with pytest.raises(ConfigError, match="entity_generator='sam2' is unknown"):
        ModelConfig().replace(entity_generator="sam2")
