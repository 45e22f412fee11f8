"""Time one FusionStage per Swin-B stage shape (B=1, 480x480 input), variants interleaved.

    .venv/bin/python benchmarks/bench_fusion.py                      # table to stdout
    .venv/bin/python benchmarks/bench_fusion.py --out benchmarks/results/fusion.md --reps 5
    .venv/bin/python benchmarks/bench_fusion.py --threads 1 --clock cpu   # steadier when the machine is shared

Stage shapes: d = 128, 256, 512, 1024 at 120^2, 60^2, 30^2, 15^2; words (1, 20, 768) with
8 real tokens; K = 40 entities from a 480x480 label map (random rectangles). Random weights,
float32, inference mode, the machine's default thread count. Each repetition runs every
variant at every stage once (interleaved), so load from other processes hits all alike;
the table gives medians. Also a breakdown of the paper's stage into SEG / cube / SP / SA /
Proj, and the attention's share at each ``attn_kv_stride``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from entitwist.config import FusionConfig
from entitwist.models.fusion import FusionStage
from entitwist.models.seg import entity_area_maps

DIMS = (128, 256, 512, 1024)
SIZES = (120, 60, 30, 15)
TEXT_DIM, N_TOKENS, K = 768, 20, 40

VARIANTS: dict[str, dict] = {
    "baseline (dat=none, seg off)": {"dat": "none", "seg": False},
    "SEG only (dat=none)": {"dat": "none"},
    "sp_sa, kv stride 1 (paper)": {"attn_kv_stride": (1, 1, 1, 1)},
}
EXTRA_VARIANTS: dict[str, dict] = {
    "sp_sa, config default": {},
    "remamber_v (spatial mamba)": {"spatial": "mamba", "attn_kv_stride": (1, 1, 1, 1)},
}
KV_STRIDES = (1, 2, 4)


def _label_map(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(1, 480, 480, dtype=torch.long)
    for k in range(K, 0, -1):  # larger first, later (smaller) ones paint over
        h, w = (int(v) for v in torch.randint(8, 200, (2,), generator=g))
        y, x = (
            int(torch.randint(0, 480 - h, (1,), generator=g)),
            int(torch.randint(0, 480 - w, (1,), generator=g)),
        )
        labels[0, y : y + h, x : x + w] = k
    return labels


CLOCK = time.perf_counter


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(seconds, result) of ``fn(*args)`` on the chosen clock."""
    t0 = CLOCK()
    result = fn(*args)
    return CLOCK() - t0, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--stages", default="0,1,2,3", help="comma-separated stage indices")
    parser.add_argument(
        "--all", action="store_true", help="also the config default and ReMamber-V (slow)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine, "
        "use with --threads 1)",
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = [int(s) for s in args.stages.split(",")]
    variants = {**VARIANTS, **(EXTRA_VARIANTS if args.all else {})}
    torch.manual_seed(0)
    labels = _label_map()
    t_ori = torch.randn(1, N_TOKENS, TEXT_DIM)
    mask = torch.zeros(1, N_TOKENS, dtype=torch.long)
    mask[:, :8] = 1

    inputs, modules = {}, {}
    for t in stages:
        f = torch.randn(1, DIMS[t], SIZES[t], SIZES[t])
        inputs[t] = (f, entity_area_maps(labels, K, (SIZES[t], SIZES[t])))
        for name, kw in variants.items():
            cfg = dataclasses.replace(FusionConfig(), **kw)
            modules[name, t] = FusionStage(DIMS[t], TEXT_DIM, N_TOKENS, cfg, stage_index=t).eval()
        for stride in KV_STRIDES[1:]:  # the same attention weights, K/V pooled
            cfg = dataclasses.replace(FusionConfig(), attn_kv_stride=(stride,) * 4)
            alt = FusionStage(DIMS[t], TEXT_DIM, N_TOKENS, cfg, stage_index=t).eval()
            alt.load_state_dict(modules["sp_sa, kv stride 1 (paper)", t].state_dict())
            modules[f"SA stride {stride}", t] = alt
    full = [key for key in modules if not key[0].startswith("SA stride")]
    times: dict[tuple[str, int], list[float]] = {key: [] for key in full}
    parts: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for key in full:  # warm-up
            f, area = inputs[key[1]]
            modules[key](f, t_ori, mask, area)
        for _ in range(args.reps):
            for key in full:
                mod = modules[key]
                f, area = inputs[key[1]]
                times[key].append(_timed(mod, f, t_ori, mask, area)[0])
            for t in stages:  # breakdown of the paper's stage
                mod = modules["sp_sa, kv stride 1 (paper)", t]
                f, area = inputs[t]

                def record(part: str, seconds_result: tuple[float, Any], t: int = t) -> Any:
                    parts.setdefault((part, t), []).append(seconds_result[0])
                    return seconds_result[1]

                g = record("SEG", _timed(mod.seg, f, area))
                cube = record("cube", _timed(mod.cube, f, t_ori, mask, g))
                sem = record("SP", _timed(mod.dat.sp, cube))
                ca = record("SA (stride 1)", _timed(mod.dat.sa, sem))
                for stride in KV_STRIDES[1:]:
                    record(
                        f"SA (stride {stride})",
                        _timed(modules[f"SA stride {stride}", t].dat.sa, sem),
                    )
                record("Proj", _timed(mod.dat.proj, ca + sem[:, : DIMS[t]]))

    def ms(values: list[float]) -> str:
        return f"{1000 * statistics.median(values):.1f}"

    header = (
        "| variant | "
        + " | ".join(f"stage {t + 1} ({DIMS[t]}x{SIZES[t]}²)" for t in stages)
        + " | sum |"
    )
    rule = "|---" * (len(stages) + 2) + "|"
    lines = [
        f"Fusion stage forward, B=1, float32, CPU ({torch.get_num_threads()} threads, {args.clock} clock), "
        f"median of {args.reps} interleaved reps, milliseconds.",
        "",
        header,
        rule,
    ]
    base = sum(statistics.median(times["baseline (dat=none, seg off)", t]) for t in stages)
    for name in variants:
        row = [ms(times[name, t]) for t in stages]
        total = sum(statistics.median(times[name, t]) for t in stages)
        lines.append(
            f"| {name} | "
            + " | ".join(row)
            + f" | {1000 * total:.1f} (+{1000 * (total - base):.0f}) |"
        )
    lines += [
        "",
        "Breakdown of the paper's stage (sp_sa), ms; SA at each attn_kv_stride (same weights):",
        "",
        header,
        rule,
    ]
    for part in ("SEG", "cube", "SP", *(f"SA (stride {s})" for s in KV_STRIDES), "Proj"):
        total = sum(statistics.median(parts[part, t]) for t in stages)
        lines.append(
            f"| {part} | "
            + " | ".join(ms(parts[part, t]) for t in stages)
            + f" | {1000 * total:.1f} |"
        )
    lines += [
        "",
        "Attention matmuls (QK^T and AV) of SA, GMAC, by attn_kv_stride:",
        "",
        header,
        rule,
    ]
    for stride in KV_STRIDES:
        macs = [
            2 * SIZES[t] ** 2 * math.ceil(SIZES[t] / stride) ** 2 * DIMS[t] / 1e9 for t in stages
        ]
        lines.append(
            f"| SA (stride {stride}) | "
            + " | ".join(f"{m:.2f}" for m in macs)
            + f" | {sum(macs):.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        from entitwist.utils import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
