"""Every shipped YAML (src/entitwist/configs/) is the paper except where its header says, and the header says all.

Each file's header lists, one ``#   key: value`` line each, the fields in which it differs
from the paper's default row (rrsisd_bert.yaml). The checks: the file equals the default row
with exactly those changes, every listed model change shows in the built ModelConfig (offline,
random weights) and nothing else does, and the rows of Tables I-VI and Figs. 6-7 are the
paper: dense attention, SAM ViT-B priors, K = 40 (the K sweep: its own K), the recipe.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from entitwist.entities import EntitySpec
from entitwist.models.registry import get_config
from entitwist.train.cli import EntiTwistCLI, check_config

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "entitwist" / "configs"  # shipped
GENERATE = Path(__file__).resolve().parents[1] / "configs" / "generate.py"
PAPER = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "synthetic_tiny.yaml")
DEFAULT = CONFIGS / "rrsisd_bert.yaml"
DATASETS = ("rrsisd", "refsegrs", "risbench")
NOT_THE_PAPER = {"rrsisd_bert_fast", "ablation_scan_resize_area"}  # named, documented extras
DIFF_LINE = "# Differs from the paper's default row (rrsisd_bert.yaml) in:"


def parse(path: Path):
    import sys
    from unittest import mock

    with mock.patch.object(sys, "argv", ["entitwist"]):
        cli = EntiTwistCLI(args=["--config", str(path)], run=False, check=False, instantiate=False)
    return cli.config


def header_changes(text: str) -> dict:
    """The ``key: value`` lines under the header's "Differs ..." line."""
    lines = text.splitlines()
    start = lines.index(DIFF_LINE) + 1
    changes: dict = {}
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        body = line[4:]
        if body.startswith("nothing"):
            continue
        key, _, value = body.partition(": ")
        changes[key] = json.loads(value)
    return changes


def apply(config: dict, changes: dict) -> dict:
    import copy

    out = copy.deepcopy(config)
    for dotted, value in changes.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("hf_config", "entity_params"):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def model_config(yaml_dict: dict):
    model = yaml_dict["model"]
    return get_config(model["model_name"], pretrained=False, **model.get("model_overrides", {}))


def header_problems(text: str, name: str) -> list[str]:
    """What a config's header gets wrong about it (empty: the header tells the truth)."""
    default = yaml.safe_load(DEFAULT.read_text())
    data = yaml.safe_load(text)
    changes = header_changes(text)
    problems = []
    expected = apply(default, changes)
    expected["trainer"]["default_root_dir"] = f"runs/{name}"
    if data != expected:
        a, b = flat(data), flat(expected)
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        problems.append(f"YAML differs from the default row + header in {keys}")
    # field by field: every listed model change shows, and nothing else differs
    base_cfg, cfg = flat(model_config(default).to_dict()), flat(model_config(data).to_dict())
    diff = {k for k in cfg if cfg[k] != base_cfg.get(k)}
    explained: set[str] = set()
    for key in changes:
        if key.startswith("model.model_overrides."):
            field = key.rsplit(".", 1)[1].replace("__", ".")
            hits = {k for k in diff if k == field or k.endswith("." + field)}
            if not hits:
                problems.append(f"header lists {key} but the built model does not differ there")
            explained |= hits
        elif key == "model.model_name":  # the registered variants' own differences
            other = flat(get_config(changes[key], pretrained=False).to_dict())
            ref = flat(get_config(default["model"]["model_name"], pretrained=False).to_dict())
            explained |= {k for k in other if other[k] != ref.get(k)}
    if diff - explained:
        problems.append(f"the built model differs in {sorted(diff - explained)}, not in the header")
    # the store line names the priors the model needs
    spec = EntitySpec.of(model_config(data))
    if spec is not None and f"#   {spec.command(data['data']['root'])}" not in text:
        problems.append("the header does not name the entity store the model needs")
    return problems


def test_all_rows_present():
    names = {p.stem for p in PAPER}
    for ds in DATASETS:
        assert {f"{ds}_bert", f"{ds}_clip"} <= names
        assert {f"fig6_{ds}_k{k}" for k in (10, 20, 30, 40, 50)} <= names
        assert {f"fig7_{ds}_{p}" for p in ("mamba", "self_attention", "none")} <= names
    assert {"table4_baseline", "table4_seg_only", "table4_dat_only", "table4_full"} <= names
    assert {"table5_nodat_nosr", "table5_nodat_sr", "table5_dat_nosr", "table5_dat_sr"} <= names
    assert {
        f"table6_{r}" for r in ("sp", "sa", "parallel", "sa_sp", "sp_sa", "remamber_v")
    } <= names
    assert NOT_THE_PAPER <= names


def test_default_row_is_the_paper():
    cfg = parse(DEFAULT)
    assert cfg.model.lr == 5e-4 and cfg.model.weight_decay == 0.01 and cfg.model.power == 0.9
    assert cfg.trainer.max_epochs == 40 and cfg.data.batch_size == 8
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data.entities == "auto"
    mc = get_config(cfg.model.model_name, pretrained=False, **dict(cfg.model.model_overrides))
    assert mc.visual.img_size == 480 and mc.text.max_tokens == 20 and mc.text.kind == "bert"
    assert (mc.fusion.seg, mc.fusion.dat, mc.fusion.propagation) == (True, "sp_sa", "mamba")
    assert mc.fusion.spatial == "attention" and mc.fusion.self_reasoning
    assert mc.fusion.attn_kv_stride == (1, 1, 1, 1) and mc.fusion.scan_resize == "bilinear"
    assert (mc.fusion.entity_generator, mc.fusion.entity_params) == ("sam", {"model_type": "vit_b"})
    assert mc.fusion.max_entities == 40 and mc.decoder.entity_head_layers == 0
    assert cfg.checkpoint.monitor == "val/mIoU" and cfg.checkpoint.mode == "max"
    assert cfg.checkpoint.save_last is True
    assert header_changes(DEFAULT.read_text()) == {}


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_header_tells_every_difference_from_the_default_row(path):
    assert header_problems(path.read_text(), path.stem) == []


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_rows_are_the_paper(path, tmp_path):
    cfg = parse(path)  # the CLI's own parser
    mc = get_config(cfg.model.model_name, pretrained=False, **dict(cfg.model.model_overrides))
    m = re.fullmatch(r"fig6_\w+_k(\d+)", path.stem)
    k = int(m.group(1)) if m else 40
    assert mc.fusion.max_entities == k
    spec = EntitySpec.of(mc)
    if mc.fusion.seg:
        assert (spec.generator, dict(spec.params), spec.max_entities) == (
            "sam",
            {"model_type": "vit_b"},
            k,
        )
    stride = (2, 1, 1, 1) if path.stem == "rrsisd_bert_fast" else (1, 1, 1, 1)
    assert mc.fusion.attn_kv_stride == stride
    resize = "area" if path.stem == "ablation_scan_resize_area" else "bilinear"
    assert mc.fusion.scan_resize == resize
    assert mc.visual.img_size == 480 and mc.decoder.entity_head_layers == 0
    assert (cfg.model.lr, cfg.model.weight_decay, cfg.model.power) == (5e-4, 0.01, 0.9)
    assert cfg.trainer.max_epochs == 40 and cfg.data.batch_size == 8
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data.entities == "auto"
    # the pre-flight check: with an empty root, a model that reads entity maps stops there
    cfg.data.root = str(tmp_path)
    if spec is None:
        check_config(cfg)
    else:
        from entitwist.errors import DataError

        with pytest.raises(DataError, match=f"wants sam \\(model_type=vit_b\\), K={k}"):
            check_config(cfg)


def test_a_header_that_lies_fails():
    text = (CONFIGS / "fig6_rrsisd_k50.yaml").read_text()
    assert header_problems(text, "fig6_rrsisd_k50") == []
    silent = text.replace("#   model.model_overrides.fusion__max_entities: 50\n", "#   nothing\n")
    assert any("differs from the default row" in p for p in header_problems(silent, "x_k50"))
    added = text.replace(
        "#   model.model_overrides.fusion__max_entities: 50\n",
        "#   model.model_overrides.fusion__max_entities: 50\n"
        "#   model.model_overrides.fusion__attn_kv_stride: [2, 1, 1, 1]\n",
    )
    assert any(
        "differs from the default row" in p for p in header_problems(added, "fig6_rrsisd_k50")
    )
    # a change the YAML makes and the header lists, but which builds the same model
    noop = text.replace("fusion__max_entities: 50", "fusion__max_entities: 40")
    assert any("does not differ there" in p for p in header_problems(noop, "fig6_rrsisd_k50"))
    wrong_store = text.replace("--max-entities 50", "--max-entities 40")
    assert any("entity store" in p for p in header_problems(wrong_store, "fig6_rrsisd_k50"))


def test_generate_writes_the_shipped_files(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", GENERATE)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "HERE", tmp_path)
    gen.main()
    for path in PAPER:
        assert (tmp_path / path.name).read_text() == path.read_text(), path.name


def test_the_paper_model_builds_dense():
    """The network of the default row (random weights, shallow Swin for time) attends over
    every position at every stage; the fast variant strides stage 1 only."""
    from entitwist.models.enti_twistnet import EntiTwistNet
    from entitwist.models.registry import BERT_BASE_UNCASED

    bert = {**BERT_BASE_UNCASED, "num_hidden_layers": 1}
    for name, first in (("entitwist_swinb_bert", 1), ("entitwist_swinb_bert_fast", 2)):
        cfg = get_config(name, pretrained=False, depths=(1, 1, 1, 1), text__hf_config=bert)
        strides = [m.kv_stride for m in EntiTwistNet(cfg).modules() if hasattr(m, "kv_stride")]
        assert strides == [first, 1, 1, 1], name


def test_synthetic_tiny_parses_and_is_tiny(tmp_path):
    cfg = parse(CONFIGS / "synthetic_tiny.yaml")
    mc = get_config(cfg.model.model_name, pretrained=False, **dict(cfg.model.model_overrides))
    assert cfg.model.model_name == "entitwist_tiny" and mc.visual.img_size == 64
    assert (mc.fusion.entity_generator, mc.fusion.max_entities) == ("felzenszwalb", 40)
    assert cfg.trainer.accelerator == "cpu"
    cfg.data.root = str(tmp_path)
    cfg.model.model_overrides = {**cfg.model.model_overrides, "seg": False, "entity_head_layers": 0}
    check_config(cfg)
