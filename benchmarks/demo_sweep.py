"""Compare demo training recipes quickly: a plain loop over cached tensors, val mIoU curve.

The demo (``entitwist demo``) trains through Lightning, reading PNGs each step. To compare
recipes in a few minutes each, this script loads a demo dataset folder once into memory
(images, token ids, entity maps, masks), then runs the same model, loss, optimiser groups
and warm-up + poly schedule as ``EntiTwistModule`` in a plain loop, printing the
validation mIoU (and its split by expression type) every ``--eval-every`` steps. Numbers
at equal steps are comparable between runs; wall times are only comparable within one
run on an idle machine. ``benchmarks/results/demo.md`` lists the runs made with it.

    # a dataset first (or reuse <out>/scenes of a demo run), with its entity maps:
    entitwist synth /tmp/s --scenes 1000 --size 128 --object-scale 2.5 --density 0.3
    entitwist entities /tmp/s --dataset jsonl --generator felzenszwalb
    python benchmarks/demo_sweep.py /tmp/s --steps 1500 --lr 3e-3 --dice-weight 1 \\
        --warmup-steps 100 --grad-clip 1
    python benchmarks/demo_sweep.py /tmp/s --overrides '{"decoder__width": 32}' ...
    python benchmarks/demo_sweep.py /tmp/s --overfit 32 --steps 300   # can it memorise?
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="JSONL dataset folder with entities/<generator>/ maps")
    p.add_argument("--model", default="entitwist_tiny_minilm")
    p.add_argument("--overrides", default="{}", help="ModelConfig overrides as JSON")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="0 = off")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--overfit", type=int, default=0, help="train and score on the first N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="run")
    p.add_argument(
        "--entity-loss-weight",
        type=float,
        default=None,
        help="weight of the entity head's selection loss (default: EntiTwistModule's)",
    )
    p.add_argument("--save", help="write the trained model here (save_pretrained)")
    return p.parse_args()


def _stack(dataset, types: dict[str, str]) -> dict:
    """Every sample of ``dataset`` as stacked tensors (plus its expression types)."""
    items = [dataset[i] for i in range(len(dataset))]
    out = {
        k: torch.stack([torch.as_tensor(x[k]) for x in items])
        for k in ("image", "input_ids", "attention_mask", "entities", "mask")
    }
    out["type"] = [types.get(x["sample_id"], "?") for x in items]
    return out


def main() -> None:
    a = _args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from entitwist.metrics import intersection_union
    from entitwist.models.loss import entity_selection_loss, referring_loss
    from entitwist.train.datamodule import ReferringDataModule
    from entitwist.train.module import EntiTwistModule
    from entitwist.train.optim import build_optimizer, poly_factor

    overrides = {"img_size": a.size, **json.loads(a.overrides)}
    extra = {} if a.entity_loss_weight is None else {"entity_loss_weight": a.entity_loss_weight}
    module = EntiTwistModule(model_name=a.model, model_overrides=overrides, lr=a.lr, **extra)
    model = module.model
    if model.config.text.pretrained is not None:  # as the demo: a pretrained encoder is frozen
        for q in model.text.parameters():
            q.requires_grad_(False)
    root = Path(a.root)
    stores = sorted(d for d in (root / "entities").iterdir() if d.is_dir())
    data = ReferringDataModule.for_module(
        module, dataset="jsonl", root=str(root), batch_size=a.batch_size,
        entities=str(stores[0].resolve()), seed=a.seed,
    )  # fmt: skip
    lines = (root / "annotations.jsonl").read_text().splitlines()
    types = {r["sample_id"]: r.get("expression_type", "?") for r in map(json.loads, lines)}
    t0 = time.perf_counter()
    train = _stack(data.dataset("train"), types)
    val = _stack(data.dataset("val"), types)
    if a.overfit:
        train = {k: v[: a.overfit] for k, v in train.items()}
        val = train
    print(f"loaded {len(train['type'])} train / {len(val['type'])} val samples in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip

    params = [q for q in model.parameters() if q.requires_grad]
    opt = build_optimizer(model, lr=a.lr)

    def evaluate() -> tuple[float, dict[str, float]]:
        module.eval()
        ious: list[float] = []
        with torch.no_grad():
            for i in range(0, len(val["type"]), 32):
                batch = {k: v[i : i + 32] for k, v in val.items() if k != "type"}
                inter, union = intersection_union(module(batch).argmax(1), batch["mask"])
                ious += (inter / union.clamp(min=1)).tolist()
        module.train()
        by: dict[str, list[float]] = {}
        for t, v in zip(val["type"], ious):
            by.setdefault(t, []).append(v)
        per = {t: round(100 * sum(v) / len(v), 1) for t, v in sorted(by.items())}
        return 100 * sum(ious) / len(ious), per

    gen = torch.Generator().manual_seed(a.seed)
    n = len(train["type"])
    order, pos, losses = torch.randperm(n, generator=gen), 0, []
    module.train()
    t0 = time.perf_counter()
    for step in range(a.steps):
        if pos + a.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + a.batch_size]
        pos += a.batch_size
        for group in opt.param_groups:
            group["lr"] = a.lr * poly_factor(step, a.steps, 0.9, a.warmup_steps)
        batch = {k: v[idx] for k, v in train.items() if k != "type"}
        head = model.entity_head is not None and module.entity_loss_weight > 0
        logits, scores = module(batch, return_entity_scores=True) if head else (module(batch), None)
        loss = referring_loss(logits, batch["mask"].long(), dice_weight=a.dice_weight)
        if scores is not None:
            loss = loss + module.entity_loss_weight * entity_selection_loss(
                scores, batch["entities"], batch["mask"]
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, a.grad_clip)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            miou, per = evaluate()
            recent = losses[-50:]
            print(f"[{a.tag}] step {step + 1} {time.perf_counter() - t0:.0f} s "
                  f"loss {sum(recent) / len(recent):.3f} val mIoU {miou:.2f} {per}",
                  flush=True)  # fmt: skip
    if a.save:
        model.save_pretrained(a.save)


if __name__ == "__main__":
    main()
