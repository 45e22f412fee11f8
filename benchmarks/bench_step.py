"""Training-step time of the tiny demo model with and without the entity selection head.

One process builds ``entitwist_tiny_minilm`` at 128 px with ``decoder.entity_head_layers``
in ``--layers`` (0 = no head, the paper's decoder), then times full training steps (forward,
pixel loss + entity loss, backward, AdamW) on one batch of 8 with real entity maps from a
demo dataset, the variants interleaved round by round so that a change of machine speed
hits them alike. Prints ms per step per round and the median.

    python benchmarks/bench_step.py demo_output/scenes --layers 0 2 4 --rounds 3

Numbers measured with it are in ``benchmarks/results/demo.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="demo dataset folder with entities/<generator>/ label maps")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    a = p.parse_args()
    torch.set_num_threads(1)
    from entitwist.models.loss import entity_selection_loss, referring_loss
    from entitwist.train.module import EntiTwistModule
    from entitwist.train.optim import build_optimizer

    maps = sorted((Path(a.root) / "entities").rglob("*.png"))[:8]
    if len(maps) < 8:
        raise SystemExit(f"{a.root}: fewer than 8 entity maps; run `entitwist entities` first")
    entities = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(f)).astype(np.int64)) for f in maps]
    )
    size = entities.shape[-1]
    runs = {}
    for layers in a.layers:
        torch.manual_seed(0)
        module = EntiTwistModule(
            model_name="entitwist_tiny_minilm",
            model_overrides={"img_size": size, "decoder__entity_head_layers": layers},
            lr=3e-3,
        )
        for q in module.model.text.parameters():
            q.requires_grad_(False)
        module.train()
        runs[layers] = (module, build_optimizer(module.model, lr=3e-3))
    tok = runs[a.layers[0]][0].tokenizer(["the leftmost car"] * 8)
    batch = {
        "image": torch.randn(8, 3, size, size),
        "entities": entities,
        "mask": torch.rand(8, size, size) > 0.8,
        **tok,
    }

    def step(module: EntiTwistModule, opt: torch.optim.Optimizer) -> None:
        if module.model.entity_head is not None:
            logits, scores = module(batch, return_entity_scores=True)
            loss = referring_loss(logits, batch["mask"].long(), dice_weight=1.0)
            loss = loss + 3.0 * entity_selection_loss(scores, batch["entities"], batch["mask"])
        else:
            loss = referring_loss(module(batch), batch["mask"].long(), dice_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times: dict[int, list[float]] = {k: [] for k in runs}
    for _ in range(a.rounds):
        for layers, (module, opt) in runs.items():
            for _ in range(3):  # warm-up (and the text cache)
                step(module, opt)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(module, opt)
            times[layers].append(1000 * (time.perf_counter() - t0) / a.steps)
    for layers, v in times.items():
        print(
            f"entity head layers {layers}: ms per step {[round(x) for x in v]}, "
            f"median {sorted(v)[len(v) // 2]:.0f}"
        )


if __name__ == "__main__":
    main()
