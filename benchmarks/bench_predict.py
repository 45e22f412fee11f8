"""Predictor speed and agreement: fp32 eager (``precision="32"``) against another precision.

Builds a model of the registry with random weights (offline; the paper model
``entitwist_swinb_bert`` by default, dense stage-1 attention), wraps it in two
:class:`~entitwist.inference.Predictor` objects sharing its weights, one with
``precision="32"`` and one with ``--precision`` (``auto`` by default), and times
``predict_probability`` on one picture of the network's input size (a fixed entity map, so
the entity generator is not timed) in interleaved rounds (each round runs both, in a
rotating order). Reports the median time of each, the median per-round speed-up and the
largest difference of the foreground probabilities over all rounds and sentences.

    python benchmarks/bench_predict.py                         # results/predict.md
    python benchmarks/bench_predict.py --model entitwist_tiny --rounds 3 --no-write
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from entitwist.inference.predictor import Predictor  # noqa: E402
from entitwist.models.enti_twistnet import EntiTwistNet  # noqa: E402
from entitwist.models.registry import get_config  # noqa: E402
from entitwist.models.tokenizer import build_tokenizer  # noqa: E402

SENTENCES = ["the storage tank at the top right", "the long road in the middle"]


def scene(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 (S, S, 3) picture of coloured rectangles on a textured ground and its label map."""
    rng = np.random.default_rng(seed)
    image = (rng.random((size, size, 3)) * 60 + 80).astype(np.uint8)
    labels = np.zeros((size, size), np.int64)
    for k in range(40):  # 40 rectangles of varied sizes
        y, x = (k * 37) % size, (k * 53) % size
        image[y : y + size // 8, x : x + size // 6] = rng.integers(0, 255, 3, dtype=np.uint8)
        labels[y : y + size // 8, x : x + size // 6] = k + 1
    return image, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="entitwist_swinb_bert", help="registry name")
    parser.add_argument("--precision", default="auto", help="the precision compared with 32")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "predict.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = get_config(args.model, pretrained=False)
    torch.manual_seed(0)
    model = EntiTwistNet(cfg).eval()
    if cfg.text.vocab is None:  # a pretrained tokenizer is not at hand offline: the tiny one
        model.tokenizer = build_tokenizer(dataclasses.replace(cfg.text, vocab="tiny"))
    size = cfg.visual.img_size
    image, labels = scene(size)
    entities = labels if cfg.fusion.seg else None
    predictors = {
        "32": Predictor(model, device="cpu", precision="32"),
        args.precision: Predictor(model, device="cpu", precision=args.precision),
    }
    fast = args.precision
    resolved = predictors[fast].precision
    labels_run = list(predictors)
    times: dict[str, list[float]] = {k: [] for k in labels_run}
    probs: dict[str, np.ndarray] = {}
    max_diff = 0.0
    for name in labels_run:  # warm-up (and, for compile, the compilation)
        t0 = time.perf_counter()
        probs[name] = predictors[name].predict_probability(image, SENTENCES, entities)
        print(f"warm-up {name}: {time.perf_counter() - t0:.2f}s", flush=True)
    for r in range(args.rounds):
        order = labels_run[r % 2 :] + labels_run[: r % 2]
        for name in order:
            t0 = time.perf_counter()
            probs[name] = predictors[name].predict_probability(image, SENTENCES, entities)
            times[name].append(time.perf_counter() - t0)
        max_diff = max(max_diff, float(np.abs(probs["32"] - probs[fast]).max()))
        print(
            f"round {r + 1}/{args.rounds}: "
            + "  ".join(f"{k} {times[k][-1]:.2f}s" for k in labels_run)
            + f"  max |dp| {max_diff:.4f}",
            flush=True,
        )
    speedups = [a / b for a, b in zip(times["32"], times[fast])]
    mask_agree = float(((probs["32"] >= 0.5) == (probs[fast] >= 0.5)).mean())
    command = f"python benchmarks/bench_predict.py --model {args.model} --precision {fast} --rounds {args.rounds}"
    lines = [
        "# Predictor: fp32 eager against " + (f"{fast} ({resolved})" if fast != resolved else fast),
        "",
        f"Command: `{command}`",
        f"Model: {cfg.name}, random weights, {size}x{size} picture, {len(SENTENCES)} sentences in "
        f"one batch, fixed entity map; fusion.attn_kv_stride={tuple(cfg.fusion.attn_kv_stride)}; "
        f"CPU ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}), "
        f"torch {torch.__version__}.",
        "",
        "| precision | predict_probability (s, median) | speed-up over 32 (median of rounds) |",
        "|---|---:|---:|",
        f"| 32 | {statistics.median(times['32']):.2f} | 1.00 |",
        f"| {resolved} | {statistics.median(times[fast]):.2f} | {statistics.median(speedups):.2f} |",
        "",
        f"Largest |probability difference| to fp32 over all rounds and pixels: {max_diff:.4f}; "
        f"masks (p >= 0.5) agree on {100 * mask_agree:.2f}% of the pixels.",
        "Times are medians of interleaved rounds on a shared CPU: read the ratio, not the seconds.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        from entitwist.utils import atomic_path

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            tmp.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
