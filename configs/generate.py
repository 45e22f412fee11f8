"""Write one YAML per paper result and ablation row (run: python configs/generate.py).

Every file is the paper's default row (RRSIS-D, Swin-B + BERT, SEG with SAM ViT-B entity
priors, K = 40, DAT with dense attention, the paper's recipe) with only the fields of its
row changed. Its header lists those fields, one ``#   key: value`` line each (values in
JSON), and the entity store the row needs; tests/test_configs.py parses the header and
checks it against the YAML and the ModelConfig it builds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

# the YAMLs ship inside the package (entitwist configs list; entitwist fit --config NAME)
HERE = Path(__file__).resolve().parents[1] / "src" / "entitwist" / "configs"
DATASETS = {"rrsisd": "data/rrsisd", "refsegrs": "data/refsegrs", "risbench": "data/risbench"}

BASE = {
    "seed_everything": 0,
    "model": {
        "model_name": "entitwist_swinb_bert",
        "model_overrides": {
            # ImageNet-22K Swin-B through timm (set a local weight file here when offline)
            "visual__name": "swin_base_patch4_window12_384.ms_in22k",
            "visual__pretrained": "hub",
        },
        "lr": 0.0005,
        "weight_decay": 0.01,
        "power": 0.9,
        "pretrained": True,
    },
    "data": {
        "dataset": "rrsisd",
        "root": DATASETS["rrsisd"],
        "train_split": "train",
        "val_split": "val",
        "test_split": "test",
        "batch_size": 8,
        "num_workers": 4,
        "entities": "auto",
        "seed": 0,
    },
    "trainer": {
        "max_epochs": 40,
        "precision": "bf16-mixed",
        "default_root_dir": "runs/rrsisd_bert",
    },
}

# name -> (caption, changes as dotted keys)
ROWS: dict[str, tuple[str, dict]] = {}


def row(name: str, caption: str, **changes) -> None:
    ROWS[name] = (caption, changes)


for ds in DATASETS:
    table = {"rrsisd": "I", "refsegrs": "II", "risbench": "III"}[ds]
    for text in ("bert", "clip"):
        ch = {} if ds == "rrsisd" else {"data.dataset": ds, "data.root": DATASETS[ds]}
        if text == "clip":
            ch["model.model_name"] = "entitwist_swinb_clip"
        default = " (the paper's default row)" if not ch else ""
        row(f"{ds}_{text}", f"Table {table}: Enti-TwistNet ({text.upper()}) on {ds}{default}", **ch)

SEG_OFF = {"model.model_overrides.fusion__seg": False}
DAT_OFF = {"model.model_overrides.fusion__dat": "none"}
SR_OFF = {"model.model_overrides.fusion__self_reasoning": False}
row(
    "table4_baseline",
    "Table IV row 1: baseline, no SEG, no DAT (multi-stage cross-attention)",
    **SEG_OFF,
    **DAT_OFF,
)
row("table4_seg_only", "Table IV row 2: SEG only (DAT replaced by cross-attention)", **DAT_OFF)
row("table4_dat_only", "Table IV row 3: DAT only (no SEG)", **SEG_OFF)
row("table4_full", "Table IV row 4: SEG + DAT (the full model)")
row("table5_nodat_nosr", "Table V: w/o DAT, w/o self-reasoning", **DAT_OFF, **SR_OFF)
row("table5_nodat_sr", "Table V: w/o DAT, w/ self-reasoning", **DAT_OFF)
row("table5_dat_nosr", "Table V: w/ DAT, w/o self-reasoning", **SR_OFF)
row("table5_dat_sr", "Table V: w/ DAT, w/ self-reasoning (the full model)")
for order in ("sp", "sa", "parallel", "sa_sp"):
    row(
        f"table6_{order}",
        f"Table VI: DAT order {order}",
        **{"model.model_overrides.fusion__dat": order},
    )
row("table6_sp_sa", "Table VI: DAT order sp_sa (the full model)")
row(
    "table6_remamber_v",
    "Table VI: ReMamber-V (spatial Mamba scan instead of SA)",
    **{"model.model_overrides.fusion__spatial": "mamba"},
)
row(
    "rrsisd_bert_fast",
    "Fast variant (not the paper): stage-1 attention keys/values on a 2x coarser grid "
    "(cost and effect: configs/README.md, Table IV)",
    **{"model.model_name": "entitwist_swinb_bert_fast"},
)
row(
    "ablation_scan_resize_area",
    "Ablation (not in the paper): area pooling instead of bilinear sampling before the "
    "channel scan (every stage-1 position counts)",
    **{"model.model_overrides.fusion__scan_resize": "area"},
)
for ds in DATASETS:
    base_ds = {} if ds == "rrsisd" else {"data.dataset": ds, "data.root": DATASETS[ds]}
    for k in (10, 20, 30, 40, 50):
        ch = dict(base_ds)
        if k != 40:
            ch["model.model_overrides.fusion__max_entities"] = k
        row(
            f"fig6_{ds}_k{k}",
            f"Fig. 6: K = {k} entity masks on {ds} (needs an entity store made with K={k})",
            **ch,
        )
    for prop in ("mamba", "self_attention", "none"):
        ch = dict(base_ds)
        if prop != "mamba":
            ch["model.model_overrides.fusion__propagation"] = prop
        row(f"fig7_{ds}_{prop}", f"Fig. 7: channel propagation {prop} on {ds}", **ch)


def apply(config: dict, changes: dict) -> dict:
    out = copy.deepcopy(config)
    for dotted, value in changes.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


DEFAULT_ROW = "rrsisd_bert"
HEADER_DIFF = "# Differs from the paper's default row (rrsisd_bert.yaml) in:"


def entity_lines(config: dict) -> list[str]:
    """Header lines naming the entity store the row's model needs (built offline)."""
    from entitwist.entities import EntitySpec
    from entitwist.models.registry import get_config

    model = config["model"]
    spec = EntitySpec.of(
        get_config(model["model_name"], pretrained=False, **model["model_overrides"])
    )
    if spec is None:
        return ["# Entity priors: none (no SEG): no entity store is read"]
    return [
        f"# Entity priors: {spec.describe()}; build the store with:",
        f"#   {spec.command(config['data']['root'])}",
    ]


def header(name: str, caption: str, changes: dict, config: dict) -> str:
    lines = [f"# {caption}", HEADER_DIFF]
    if changes:
        lines += [f"#   {k}: {json.dumps(v)}" for k, v in changes.items()]
    else:
        lines.append("#   nothing (this is the paper's default row)")
    lines += entity_lines(config)
    lines += [
        f"# Run: entitwist fit --config {name} ; then entitwist test --config "
        f"{name} --ckpt_path runs/{name}/.../checkpoints/best-*.ckpt",
        "# Generated by configs/generate.py; edit there.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    for name, (caption, changes) in ROWS.items():
        config = apply(BASE, changes)
        config["trainer"]["default_root_dir"] = f"runs/{name}"
        text = yaml.safe_dump(config, sort_keys=False)
        (HERE / f"{name}.yaml").write_text(header(name, caption, changes, config) + text)
    print(f"wrote {len(ROWS)} configs")


if __name__ == "__main__":
    main()
