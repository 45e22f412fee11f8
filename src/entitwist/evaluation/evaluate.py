"""``entitwist evaluate``: score a model on a dataset split, in the paper's columns.

::

    entitwist evaluate -m runs/x/export --dataset rrsisd --root data/rrsisd --split test
    entitwist evaluate -m runs/x/checkpoints/best.ckpt --dataset jsonl --root scenes --split val \\
        --protocol original --out results/

The model is a ``save_pretrained`` folder (safetensors) or a Lightning ``.ckpt`` written by
``entitwist fit`` (read with ``weights_only=True``; a tampered pickle is refused). Every
expression of the split is scored once. The table names the split and the protocol
(``lavt``: at the network's input size against the nearest-resized mask, as published;
``original``: at each image's own size) and is also written as
``<out>/evaluate_<dataset>_<split>.json`` and ``.csv``; ``--per-sample`` adds a CSV of each
expression's I, U and IoU.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from entitwist.errors import CheckpointError, ConfigError
from entitwist.utils.cli_parser import (
    OneLineArgumentParser,
    add_device_option,
    add_model_option,
    add_quiet_option,
)

__all__ = ["build_parser", "evaluate", "evaluate_defaults", "load_model", "main"]


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """An EntiTwistNet from a ``save_pretrained`` folder or a ``.ckpt`` file."""
    path = Path(path)
    if path.is_dir():
        from entitwist.models.enti_twistnet import EntiTwistNet

        return EntiTwistNet.from_pretrained(path, map_location=map_location)
    if path.is_file():
        from entitwist.train.checkpoints import model_from_checkpoint

        return model_from_checkpoint(path, map_location=map_location)
    raise CheckpointError(
        f"{str(path)!r} does not exist; give a save_pretrained folder or a .ckpt file"
    )


@torch.no_grad()
def evaluate(
    model: Any,
    dataset: Any,
    *,
    protocols: tuple[str, ...] = ("lavt", "original"),
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    amp: bool = False,
    progress: bool = True,
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Score ``model`` on every expression of ``dataset`` (transformed samples).

    Returns ``({protocol: {metric: value}}, per_sample)`` where ``per_sample`` lists, per
    expression, ``sample_id`` and the ``I``, ``U``, ``IoU`` of each protocol. ``device``
    ``None`` or ``"auto"``: cuda when available, else cpu.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from entitwist.data import collate_referring
    from entitwist.metrics import ReferringMetrics, intersection_union, upsample_to_original

    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    model = model.to(device).eval()
    metrics = {p: ReferringMetrics(protocol=p).to(device) for p in protocols}
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_referring,
    )
    per_sample: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        image = batch["image"].to(device)  # (B, 3, S, S)
        entities = batch.get("entities")
        entities = entities.to(device) if entities is not None else None
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = model(
                image, batch["input_ids"].to(device), batch["attention_mask"].to(device), entities
            )
        logits = logits.float()  # (B, 2, S, S)
        rows = [{"sample_id": sid} for sid in batch["sample_id"]]
        if "lavt" in metrics:
            pred, target = logits.argmax(dim=1).bool(), batch["mask"].to(device).bool()  # (B, S, S)
            metrics["lavt"].update(pred, target)
            inter, union = intersection_union(pred, target)
            _record(rows, "lavt", inter, union)
        if "original" in metrics:
            for i, mask in enumerate(batch["mask_orig"]):
                mask = mask.to(device).bool()[None]  # (1, H, W)
                pred = upsample_to_original(logits[i : i + 1], tuple(mask.shape[-2:]))  # (1, H, W)
                metrics["original"].update(pred, mask)
                inter, union = intersection_union(pred, mask)
                _record(rows[i : i + 1], "original", inter, union)
        per_sample.extend(rows)
    results = {p: {k: float(v) for k, v in m.compute().items()} for p, m in metrics.items()}
    return results, per_sample


def _record(
    rows: list[dict[str, Any]], protocol: str, inter: torch.Tensor, union: torch.Tensor
) -> None:
    for row, i, u in zip(rows, inter.tolist(), union.tolist()):
        row[f"{protocol}_I"], row[f"{protocol}_U"] = i, u
        row[f"{protocol}_IoU"] = i / u if u else 0.0


def evaluate_defaults() -> dict[str, Any]:
    """The keyword defaults of :func:`evaluate` (the command's defaults too)."""
    import inspect

    params = inspect.signature(evaluate).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def build_parser() -> argparse.ArgumentParser:
    d = evaluate_defaults()
    p = OneLineArgumentParser(
        prog="entitwist evaluate",
        description="Score a model (save_pretrained folder or .ckpt) on a dataset split "
        "(Pr@0.5..0.9, oIoU, mIoU).",
    )
    add_model_option(p)
    p.add_argument(
        "--dataset", default="jsonl", help="refsegrs, rrsisd, risbench or jsonl (default jsonl)"
    )
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument(
        "--protocol",
        choices=("lavt", "original", "both"),
        default="both",
        help="comparison size (default both)",
    )
    p.add_argument("--entities", default="auto", help="'auto', a store tag or folder, or 'none'")
    p.add_argument(
        "--batch-size",
        type=int,
        default=d["batch_size"],
        help=f"batch size (default {d['batch_size']})",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=d["num_workers"],
        help=f"data loader worker processes (default {d['num_workers']})",
    )
    add_device_option(p)
    p.add_argument("--amp", action="store_true", help="mixed precision on GPU")
    p.add_argument("--out", default=None, help="output folder (default: eval/ beside the model)")
    p.add_argument(
        "--per-sample", action="store_true", help="also write each expression's I, U, IoU"
    )
    add_quiet_option(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from entitwist.data import ReferringTransform, load_dataset
    from entitwist.entities.resolve import EntitySpec, resolve_store
    from entitwist.evaluation.tables import format_table, make_rows, write_reports
    from entitwist.train.datamodule import check_data_args

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be at least 1")
    ckpt = Path(args.model)
    if not ckpt.exists():
        raise CheckpointError(
            f"{str(ckpt)!r} does not exist; give a save_pretrained folder or a .ckpt file"
        )
    check_data_args(
        dataset=args.dataset,
        root=args.root,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )

    model = load_model(ckpt)
    config = model.config
    need = EntitySpec.of(config)  # the store must match the model's generator and K
    store = (
        None
        if need is None
        else resolve_store(Path(args.root), args.entities, need, option="--entities")
    )
    entities = None if store is None else str(store)
    dataset = load_dataset(
        args.dataset,
        args.root,
        args.split,
        transform=ReferringTransform(config.visual.img_size, model.tokenizer),
        entities=entities,
        one_expression_per_ref=False,
        max_entities=config.fusion.max_entities,
    )
    protocols = ("lavt", "original") if args.protocol == "both" else (args.protocol,)
    results, per_sample = evaluate(
        model,
        dataset,
        protocols=protocols,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        amp=args.amp,
        progress=not args.quiet,
    )
    rows = make_rows(
        results, dataset=args.dataset, split=args.split, model=config.name, expressions=len(dataset)
    )
    # default: beside the model, never inside a save_pretrained folder
    out = Path(args.out) if args.out else ckpt.resolve().parent / "eval"
    stem = f"evaluate_{args.dataset}_{args.split}"
    json_path, csv_path = write_reports(out, stem, rows, checkpoint=str(ckpt), root=str(args.root))
    if args.per_sample:
        _write_per_sample(out / f"{stem}_per_sample.csv", per_sample)
    print(
        format_table(
            rows,
            title=f"{args.dataset} {args.split} split, {len(dataset)} expressions, model {ckpt}",
        )
    )
    print(f"wrote {json_path} and {csv_path}")
    return 0


def _write_per_sample(path: Path, per_sample: list[dict[str, Any]]) -> None:
    import csv
    import io

    from entitwist.utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in per_sample for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(per_sample)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
