"""Speed and content of the synthetic referring scenes.

Measures, interleaved round after round (the machine is shared: the median of the rounds
is reported, and ratios are steadier than absolute numbers):

- ``generate_scene`` scenes per second at 256 and 512 pixels (target: >= 20/s at 256);
- ``generate_expressions`` (8 per scene) milliseconds per scene at 256;
- ``write_dataset`` scenes per second at 256 (PNG encoding and atomic writes included);

then describes a dataset of ``--scenes`` scenes: the expression-type distribution, the
targets per scene, the objects per category and the target area as a share of the image.

    .venv/bin/python benchmarks/bench_synthetic.py --rounds 3 --scenes 200 \\
        --out benchmarks/results/synthetic.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from entitwist.data.synthetic import write_dataset
from entitwist.data.synthetic_expressions import EXPRESSION_TYPES, generate_expressions
from entitwist.data.synthetic_scene import generate_scene
from entitwist.utils import atomic_path


def _rate(fn, n: int) -> tuple[float, float]:  # noqa: ANN001
    """(calls per wall second, calls per CPU second of this process)."""
    t, c = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t), n / max(time.process_time() - c, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=20, help="scenes per timing round")
    ap.add_argument("--scenes", type=int, default=200, help="scenes for the content statistics")
    ap.add_argument("--size", type=int, default=256, help="size for the content statistics")
    ap.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = ap.parse_args()

    k = args.per_round
    scenes256 = [generate_scene(10_000 + i, 256) for i in range(k)]
    rates: dict[str, list[tuple[float, float]]] = {
        "scene256": [],
        "scene512": [],
        "expr256": [],
        "write256": [],
    }
    for r in range(args.rounds):
        base = 1000 * r
        rates["scene256"].append(_rate(lambda i, b=base: generate_scene(b + i, 256), k))
        rates["scene512"].append(_rate(lambda i, b=base: generate_scene(b + i, 512), k))
        rates["expr256"].append(
            _rate(lambda i: generate_expressions(scenes256[i], np.random.default_rng(i), 8), k)
        )
        with tempfile.TemporaryDirectory() as tmp:
            rates["write256"].append(
                _rate(
                    lambda i, d=Path(tmp): write_dataset(
                        d / str(i), 1, size=256, seed=i, progress=False
                    ),
                    k,
                )
            )
    wall = {name: statistics.median(v[0] for v in vals) for name, vals in rates.items()}
    cpu = {name: statistics.median(v[1] for v in vals) for name, vals in rates.items()}

    types: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    nouns: Counter[str] = Counter()
    per_scene, targets, shares = [], [], []
    for i in range(args.scenes):
        scene = generate_scene(i, args.size)
        cats.update(o.category for o in scene.objects)
        refs = generate_expressions(scene, np.random.default_rng(i), 8)
        types.update(r.expression_type for r in refs)
        nouns.update(r.category for r in refs)
        per_scene.append(len(refs))
        targets.append(len({r.target_ids for r in refs}))
        shares.extend(float(r.mask.mean()) for r in refs)
    total = sum(types.values())

    def per_scene_count(c: str) -> str:
        return "car + truck" if c == "vehicle" else f"{cats[c] / args.scenes:.2f}"

    lines = [
        "# Synthetic scenes: speed and content",
        "",
        f"Machine: {platform.processor() or platform.machine()}, shared 2-core CPU; "
        f"median of {args.rounds} interleaved rounds of {k} scenes.",
        "",
        "Wall rates depend on the other jobs on the machine; CPU rates (per second of this",
        "process's CPU time) are what one free core gives.",
        "",
        "| measurement | per wall second | per CPU second |",
        "|---|---|---|",
        f"| generate_scene at 256 px (target >= 20/s) | {wall['scene256']:.1f} scenes | {cpu['scene256']:.1f} scenes |",
        f"| generate_scene at 512 px | {wall['scene512']:.1f} scenes | {cpu['scene512']:.1f} scenes |",
        f"| generate_expressions (8 asked) at 256 px | {wall['expr256']:.1f} scenes | {cpu['expr256']:.1f} scenes |",
        f"| write_dataset at 256 px (1-scene datasets: PNGs, atomic writes) | {wall['write256']:.1f} scenes | "
        f"{cpu['write256']:.1f} scenes |",
        "",
        f"Content of {args.scenes} scenes at {args.size} px, 8 expressions asked per scene: "
        f"{np.mean(per_scene):.2f} expressions and {np.mean(targets):.2f} distinct targets per scene; "
        f"target area median {100 * np.median(shares):.2f}% of the image "
        f"(10th-90th percentile {100 * np.percentile(shares, 10):.2f}-{100 * np.percentile(shares, 90):.2f}%).",
        "",
        "| expression type | count | share |",
        "|---|---|---|",
        *[f"| {t} | {types[t]} | {100 * types[t] / total:.1f}% |" for t in EXPRESSION_TYPES],
        "",
        "| category | objects per scene | expressions naming it (share) |",
        "|---|---|---|",
        *[
            f"| {c} | {per_scene_count(c)} | {100 * nouns[c] / total:.1f}% |"
            for c in sorted(set(cats) | set(nouns))
        ],
        "",
        "Command: `.venv/bin/python benchmarks/bench_synthetic.py "
        f"--rounds {args.rounds} --per-round {k} --scenes {args.scenes} --size {args.size}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)


if __name__ == "__main__":
    main()
