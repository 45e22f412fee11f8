"""Steps 4 and 5 of ``entitwist demo``: score the exported model on the test split, overlays.

4. **test** (:func:`test_step`): both protocols' metrics, printed and written to
   ``<out>/results``, the mIoU by expression type when the annotations carry one, and the
   sentence-swap test: each test sentence replaced by another sentence of the same image
   about a disjoint target (:func:`swap_partners`), scored against the original ground truth;
5. **overlays** (:func:`overlays_step`): PNGs of ground truth, prediction and the
   prediction for the swapped sentence in ``<out>/overlays``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

from entitwist.demo.common import say, write_json


# ------------------------------------------------------------------------------ step 4: test
def swap_partners(records: list[Any], masks: list[Any]) -> list[int | None]:
    """For each record, the index of another record of the same image that refers to a
    disjoint target, or ``None``.

    ``records[i].extra["swap_id"]`` (written by the synthetic generator) wins when it names
    a record of the list; otherwise the first record of the same image whose mask does not
    overlap record ``i``'s mask (``masks[i]`` bool arrays, or ``None`` to skip that check).
    """
    by_id = {r.sample_id: i for i, r in enumerate(records)}
    by_image: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_image.setdefault(r.image_id, []).append(i)
    out: list[int | None] = []
    for i, r in enumerate(records):
        sid = r.extra.get("swap_id") if isinstance(r.extra, dict) else None
        if sid is not None and sid in by_id and by_id[sid] != i:
            out.append(by_id[sid])
            continue
        partner = None
        for j in by_image[r.image_id]:
            if j == i or records[j].ref_id == r.ref_id:
                continue
            if records[j].expression.strip().lower() == r.expression.strip().lower():
                continue
            if masks[i] is not None and masks[j] is not None and (masks[i] & masks[j]).any():
                continue
            partner = j
            break
        out.append(partner)
    return out


def predict_all(
    module: Any, dataset: Any, batch_size: int, desc: str, quiet: bool, workers: int = 0
) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """Logits (2, S, S) per sample, and its targets: (mask (S, S), mask_orig (H, W))."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from entitwist.data import collate_referring

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_referring,
        num_workers=workers,
    )
    preds: list[Any] = []
    targets: list[tuple[Any, Any]] = []
    module.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=quiet, leave=False):
            logits = module(batch)  # (B, 2, S, S)
            preds.extend(list(logits))
            targets.extend(zip(list(batch["mask"]), list(batch["mask_orig"])))
    return preds, targets


def _scores(preds: list[Any], targets: list[tuple[Any, Any]]) -> dict[str, dict[str, float]]:
    """Both protocols' metrics of ``preds`` against ``targets`` (see :func:`predict_all`)."""
    from entitwist.metrics import ReferringMetrics, upsample_to_original

    lavt, original = ReferringMetrics(protocol="lavt"), ReferringMetrics(protocol="original")
    for logits, (mask_s, mask_o) in zip(preds, targets):
        lavt.update(logits.argmax(0).bool()[None], mask_s.bool()[None])
        pred_o = upsample_to_original(logits[None].float(), tuple(mask_o.shape))  # (1, H, W)
        original.update(pred_o, mask_o.bool()[None])
    return {
        "lavt": {k: float(v) for k, v in lavt.compute().items()},
        "original": {k: float(v) for k, v in original.compute().items()},
    }


def test_step(
    args: argparse.Namespace, out: Path, root: Path, ann: str | None, store: Path, model_name: str
) -> dict[str, Any]:

    from entitwist.data import ReferringTransform, load_dataset
    from entitwist.data.base import ReferringDataset
    from entitwist.evaluation.tables import format_table, make_rows, write_reports
    from entitwist.metrics import ReferringMetrics
    from entitwist.train.module import EntiTwistModule

    model_dir = out / "model"
    module = EntiTwistModule(pretrained_dir=str(model_dir))
    model = module.model
    transform = ReferringTransform(model.config.visual.img_size, model.tokenizer)
    options = {"annotations": ann} if ann else {}
    dataset = load_dataset(
        "jsonl",
        root,
        "test",
        transform=transform,
        entities=str(store.resolve()),
        one_expression_per_ref=False,
        max_entities=model.config.fusion.max_entities,
        **options,
    )
    n = len(dataset)
    say(4, "test", f"scoring {n} test expressions with the exported model ({model_dir})")
    t0 = time.perf_counter()
    preds, targets = predict_all(module, dataset, 32, "test", args.quiet, args.workers)
    raw_masks = [t[1].bool().numpy() for t in targets]  # (H, W) each
    results = _scores(preds, targets)
    rows = make_rows(
        results,
        dataset="synthetic" if args.data is None else Path(args.data).name,
        split="test",
        model=model.config.name,
        expressions=n,
    )
    results_dir = out / "results"
    json_path, csv_path = write_reports(
        results_dir, "test_results", rows, checkpoint=str(model_dir), root=str(root)
    )
    print(format_table(rows, title=f"test split, {n} expressions, model {model_dir} (best on val)"))

    # the sentence-swap test
    partners = swap_partners(dataset.records, raw_masks)
    have = [i for i, j in enumerate(partners) if j is not None]
    swap: dict[str, Any] = {"expressions": len(have), "of": n}
    swapped_preds: dict[int, Any] = {}
    if have:
        records = [
            dataclasses.replace(
                dataset.records[i],
                expression=dataset.records[partners[i]].expression,  # type: ignore[index]
            )
            for i in have
        ]
        swapped = ReferringDataset(
            records,
            name="jsonl",
            root=dataset.root,
            split="test-swapped",
            transform=transform,
            entity_dir=dataset.entity_dir,
            entity_tag=dataset.entity_tag,
            max_entities=dataset.max_entities,
        )
        spreds, _ = predict_all(module, swapped, 32, "swap test", args.quiet, args.workers)
        swapped_preds = dict(zip(have, spreds))
        for name, subset in (("original", [preds[i] for i in have]), ("swapped", spreds)):
            metric = ReferringMetrics(protocol="lavt")
            for logits, i in zip(subset, have):
                metric.update(logits.argmax(0).bool()[None], targets[i][0].bool()[None])
            values = metric.compute()
            swap[name] = {"mIoU": float(values["mIoU"]), "oIoU": float(values["oIoU"])}
        swap["drop_mIoU"] = swap["original"]["mIoU"] - swap["swapped"]["mIoU"]
        # how often the swapped prediction lands on the partner's own target instead
        metric = ReferringMetrics(protocol="lavt")
        for i in have:
            metric.update(
                swapped_preds[i].argmax(0).bool()[None],
                targets[partners[i]][0].bool()[None],  # type: ignore[index]
            )
        swap["swapped_vs_partner_target_mIoU"] = float(metric.compute()["mIoU"])
        print(
            f"sentence-swap test ({len(have)} of {n} test expressions have a sentence of the same "
            f"image about a disjoint target): mIoU {swap['original']['mIoU']:.2f} with the right "
            f"sentence, {swap['swapped']['mIoU']:.2f} with the swapped one against the original "
            f"ground truth: a drop of {swap['drop_mIoU']:.2f} points; the swapped predictions "
            f"score {swap['swapped_vs_partner_target_mIoU']:.2f} mIoU against the swapped sentence's own target"
        )
    else:
        print(
            "sentence-swap test: no test expression has a partner sentence about a disjoint target"
        )

    per_type = scores_by_type(dataset.records, preds, targets)
    if per_type:
        print(
            "test mIoU by expression type: "
            + ", ".join(f"{k} {v['mIoU']:.1f} ({v['n']})" for k, v in per_type.items())
        )
    summary = {
        "results": rows,
        "swap_test": swap,
        "per_type": per_type,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(results_dir / "swap_test.json", swap)
    write_json(results_dir / "summary.json", summary)
    say(4, "test", f"wrote {json_path}, {csv_path} and {results_dir / 'swap_test.json'}")
    summary["_preds"] = preds
    summary["_swapped"] = swapped_preds
    summary["_partners"] = partners
    summary["_dataset"] = dataset
    summary["_targets"] = raw_masks
    return summary


def scores_by_type(
    records: list[Any], preds: list[Any], targets: list[Any]
) -> dict[str, dict[str, float]]:
    """mIoU per expression type (LAVT protocol); I and U from the metrics' counter, and
    the same rule as :class:`~entitwist.metrics.ReferringMetrics` (IoU = 0 when U = 0), so
    that the per-type averages weighted by their counts give the overall mIoU."""
    from entitwist.metrics import intersection_union

    groups: dict[str, list[float]] = {}
    for rec, logits, (mask_s, _) in zip(records, preds, targets):
        kind = rec.extra.get("expression_type") if isinstance(rec.extra, dict) else None
        if kind is None:
            continue
        inter, union = intersection_union(logits.argmax(0)[None], mask_s[None])
        i_px, u_px = int(inter[0]), int(union[0])
        groups.setdefault(str(kind), []).append(i_px / u_px if u_px else 0.0)
    return {k: {"mIoU": 100.0 * sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}


# ------------------------------------------------------------------------------ step 5: overlays
def overlays_step(args: argparse.Namespace, out: Path, summary: dict[str, Any]) -> list[Path]:
    import numpy as np
    from PIL import Image

    from entitwist.inference.overlay import render_overlay
    from entitwist.metrics import upsample_to_original
    from entitwist.utils import atomic_path

    folder = out / "overlays"
    if args.overlays == 0:
        return []
    dataset = summary["_dataset"]
    preds, swapped, partners = summary["_preds"], summary["_swapped"], summary["_partners"]
    masks = summary["_targets"]
    # one sample per image, images in file order, preferring samples with a swap partner
    chosen: list[int] = []
    seen: set[str] = set()
    for i, rec in enumerate(dataset.records):
        if rec.image_id in seen or (partners[i] is None and swapped):
            continue
        seen.add(rec.image_id)
        chosen.append(i)
        if len(chosen) >= args.overlays:
            break
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    written = []
    for rank, i in enumerate(chosen):
        rec = dataset.records[i]
        rgb = dataset.load_record(rec)["image"]  # (H, W, 3) uint8
        h, w = rgb.shape[:2]
        scale = max(1, 384 // max(h, w))
        if scale > 1:
            rgb = np.asarray(
                Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            )

        def big(mask: np.ndarray, s: int = scale) -> np.ndarray:
            return np.kron(mask.astype(np.uint8), np.ones((s, s), np.uint8)).astype(bool)

        gt = big(masks[i])
        pred = big(upsample_to_original(preds[i][None].float(), (h, w))[0].numpy())
        panels = [
            render_overlay(rgb, gt, f"ground truth: {rec.expression}", color=(40, 220, 60)),
            render_overlay(rgb, pred, f"prediction: {rec.expression}"),
        ]
        if i in swapped:
            other = dataset.records[partners[i]].expression
            spred = big(upsample_to_original(swapped[i][None].float(), (h, w))[0].numpy())
            panels.append(
                render_overlay(rgb, spred, f"swapped sentence: {other}", color=(60, 120, 255))
            )
        height = max(p.height for p in panels)
        canvas = Image.new(
            "RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height), (255, 255, 255)
        )
        x = 0
        for p in panels:
            canvas.paste(p, (x, height - p.height))
            x += p.width + 8
        safe = rec.sample_id.replace("/", "_").replace(os.sep, "_")
        target = folder / f"{rank:02d}_{safe}.png"
        with atomic_path(target) as tmp:
            canvas.save(tmp, format="PNG")
        written.append(target)
    say(
        5,
        "overlays",
        f"wrote {len(written)} PNGs (ground truth | prediction | swapped sentence) to {folder}",
    )
    return written
