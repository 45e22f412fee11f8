"""Every YAML in configs/ parses with the CLI's own parser and changes only its row's fields."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from entitwist.models.registry import get_config
from entitwist.train.cli import EntiTwistCLI, check_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "synthetic_tiny.yaml")
DATASETS = ("rrsisd", "refsegrs", "risbench")


def parse(path: Path):
    import sys
    from unittest import mock

    with mock.patch.object(sys, "argv", ["entitwist"]):
        cli = EntiTwistCLI(args=["--config", str(path)], run=False, check=False, instantiate=False)
    return cli.config


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "hf_config":
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def model_config(cfg):
    return get_config(
        cfg.model.model_name, pretrained=False, **dict(cfg.model.model_overrides or {})
    )


def expected(name: str) -> tuple[dict, set[str], str]:
    """(model fields that must differ with their values, data fields that differ, dataset)."""
    fusion: dict = {}
    text_changes = False
    ds = "rrsisd"
    if m := re.fullmatch(r"(rrsisd|refsegrs|risbench)_(bert|clip)", name):
        ds, text_changes = m.group(1), m.group(2) == "clip"
    elif name == "table4_baseline":
        fusion = {"fusion.seg": False, "fusion.dat": "none"}
    elif name in ("table4_seg_only", "table5_nodat_sr"):
        fusion = {"fusion.dat": "none"}
    elif name == "table4_dat_only":
        fusion = {"fusion.seg": False}
    elif name == "table5_nodat_nosr":
        fusion = {"fusion.dat": "none", "fusion.self_reasoning": False}
    elif name == "table5_dat_nosr":
        fusion = {"fusion.self_reasoning": False}
    elif m := re.fullmatch(r"table6_(sp|sa|parallel|sa_sp)", name):
        fusion = {"fusion.dat": m.group(1)}
    elif name == "table6_remamber_v":
        fusion = {"fusion.spatial": "mamba"}
    elif m := re.fullmatch(r"fig6_(\w+)_k(\d+)", name):
        ds, k = m.group(1), int(m.group(2))
        fusion = {} if k == 40 else {"fusion.max_entities": k}
    elif m := re.fullmatch(r"fig7_(\w+)_(mamba|self_attention|none)", name):
        ds = m.group(1)
        fusion = {} if m.group(2) == "mamba" else {"fusion.propagation": m.group(2)}
    elif name not in ("table4_full", "table5_dat_sr", "table6_sp_sa"):
        raise AssertionError(f"config {name} is not a known paper row")
    if text_changes:
        fusion["name"] = "entitwist_swinb_clip"
    return fusion, {"dataset", "root"} if ds != "rrsisd" else set(), ds


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


def test_default_is_the_paper_recipe():
    cfg = parse(CONFIGS / "rrsisd_bert.yaml")
    assert cfg.model.lr == 5e-4 and cfg.model.weight_decay == 0.01 and cfg.model.power == 0.9
    assert cfg.trainer.max_epochs == 40 and cfg.data.batch_size == 8
    mc = model_config(cfg)
    assert mc.visual.img_size == 480 and mc.text.max_tokens == 20
    assert mc.fusion.max_entities == 40 and mc.fusion.seg and mc.fusion.dat == "sp_sa"
    assert cfg.checkpoint.monitor == "val/mIoU" and cfg.checkpoint.mode == "max"
    assert cfg.checkpoint.save_last is True


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_row_differs_from_default_only_where_the_paper_does(path, tmp_path):
    base = parse(CONFIGS / "rrsisd_bert.yaml")
    cfg = parse(path)
    base_model = flat(model_config(base).to_dict())
    model = flat(model_config(cfg).to_dict())  # validated ModelConfig, no weights built
    want_model, want_data, ds = expected(path.stem)
    diff = {k: model[k] for k in model if model[k] != base_model.get(k)}
    if path.stem.endswith("_clip"):
        assert diff.pop("name") == "entitwist_swinb_clip"
        assert {k for k in diff} <= {k for k in model if k.startswith("text.")}
        assert model["text.kind"] == "clip"
        diff = {k: v for k, v in diff.items() if not k.startswith("text.")}
        want_model = {}
    assert diff == want_model
    data_diff = {
        k
        for k in ("dataset", "root", "batch_size", "entities", "seed", "num_workers")
        if cfg.data[k] != base.data[k]
    }
    assert data_diff == want_data and cfg.data.dataset == ds
    # same recipe everywhere
    assert (cfg.model.lr, cfg.model.weight_decay, cfg.model.power) == (5e-4, 0.01, 0.9)
    assert cfg.trainer.max_epochs == 40 and cfg.trainer.precision == base.trainer.precision
    # the pre-flight check accepts it once its dataset root exists
    cfg.data.root = str(tmp_path)
    check_config(cfg)


def test_synthetic_tiny_parses_and_is_tiny(tmp_path):
    cfg = parse(CONFIGS / "synthetic_tiny.yaml")
    mc = model_config(cfg)
    assert cfg.model.model_name == "entitwist_tiny" and mc.visual.img_size == 64
    assert cfg.trainer.accelerator == "cpu"
    cfg.data.root = str(tmp_path)
    check_config(cfg)
