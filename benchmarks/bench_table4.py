"""Table IV of the paper, measured: parameters, MACs and CPU time of four variants.

Builds the default Swin-B (window 12) + BERT-base network at 480x480 with random weights
(offline) and reports, for the full model, the baseline (no SEG, no DAT), SEG only and
DAT only:

- parameters;
- multiply-accumulates counted by module hooks on ``nn.Conv1d/2d``, ``nn.Linear`` and
  ``nn.MultiheadAttention`` (what ptflops counts for these layers; the paper's FLOPs column);
- multiply-accumulates of every matmul-like operator, attention included
  (``torch.utils.flop_counter.FlopCounterMode``, FLOPs / 2);
- CPU forward time (batch 1, no grad) as a ratio to the baseline, measured interleaved
  (each round runs every variant once, in a rotating order) and summarised by the median.

The four networks share one Swin and one BERT (injected), so memory stays at one backbone.

    python benchmarks/bench_table4.py                 # the table, written to results/table4.md
    python benchmarks/bench_table4.py --small         # a tiny dry run (seconds)
    python benchmarks/bench_table4.py --only "full (SEG + DAT)" --no-macs --no-write
                                                      # the full/baseline time ratio alone
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from entitwist.models.enti_twistnet import EntiTwistNet  # noqa: E402
from entitwist.models.registry import get_config  # noqa: E402

VARIANTS = {
    "full (SEG + DAT)": {},
    "baseline": {"seg": False, "dat": "none"},
    "SEG only": {"seg": True, "dat": "none"},
    "DAT only": {"seg": False, "dat": "sp_sa"},
    # the named fast variant entitwist_swinb_bert_fast (not the paper): stage-1 keys/values
    # on a 2x coarser grid
    "full, fast (stage-1 K/V stride 2)": {"attn_kv_stride": (2, 1, 1, 1)},
}
PAPER = {  # Table IV of the paper: FLOPs (G, ptflops) and time ratio to the baseline
    "full (SEG + DAT)": (160, 1.46),
    "baseline": (154, 1.00),
    "SEG only": (None, None),
    "DAT only": (None, None),
    "full, fast (stage-1 K/V stride 2)": (None, None),
}


def hook_macs(model: nn.Module, run: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """MACs of Conv1d/Conv2d/Linear/MultiheadAttention layers, total and per top-level part."""
    per_part: dict[str, int] = {}
    handles = []

    def make(part: str) -> Callable:
        def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
            macs = 0
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                k = 1
                for s in mod.kernel_size:
                    k *= s
                macs = output.numel() * (mod.in_channels // mod.groups) * k
            elif isinstance(mod, nn.Linear):
                macs = output.numel() * mod.in_features
            elif isinstance(mod, nn.MultiheadAttention):
                q, kv = inputs[0], inputs[1]
                e = mod.embed_dim
                lq, lk = (
                    q.shape[-2] if mod.batch_first else q.shape[0],
                    kv.shape[-2] if mod.batch_first else kv.shape[0],
                )
                b = q.numel() // (lq * e)
                macs = b * (lq * e * e + 2 * lk * e * e + 2 * lq * lk * e + lq * e * e)
            per_part[part] = per_part.get(part, 0) + macs

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
            part = name.split(".")[0]
            if part == "fusions":
                part = "fusion"
            handles.append(mod.register_forward_hook(make(part)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return sum(per_part.values()), per_part


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten._scaled_dot_product_flash_attention_for_cpu, which the flop counter does
    not know: Q K^T and (softmax) V, 2 FLOPs per multiply-accumulate."""
    b, h, lq, e = query_shape
    lk, ev = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * (e + ev)


def operator_macs(run: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        run()
    return counter.get_total_flops() // 2


def build(
    small: bool, kv_stride: tuple[int, ...] | None, only: list[str] | None = None
) -> tuple[dict[str, EntiTwistNet], int]:
    """The variants (all, or the baseline and ``only``) sharing one Swin and one BERT."""
    name = "entitwist_tiny" if small else "entitwist_swinb_bert"
    base = get_config(name, pretrained=False)
    if kv_stride is not None:
        base = base.replace(attn_kv_stride=kv_stride)
    torch.manual_seed(0)
    first = EntiTwistNet(base.replace(**VARIANTS["full (SEG + DAT)"]))
    models = {"full (SEG + DAT)": first}
    for label, overrides in VARIANTS.items():
        if label in models or (only is not None and label not in only + ["baseline"]):
            continue
        cfg = base.replace(**overrides)
        models[label] = EntiTwistNet(cfg, visual=first.visual, text=first.text)
    return {k: m.eval() for k, m in models.items()}, base.visual.img_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny model, 128 px: a dry run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--kv-stride", type=int, nargs=4, default=None, help="override fusion.attn_kv_stride"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "table4.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(VARIANTS),
        default=None,
        help="time these variants and the baseline only",
    )
    parser.add_argument("--no-macs", action="store_true", help="skip the MAC counts (timing only)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    models, size = build(args.small, tuple(args.kv_stride) if args.kv_stride else None, args.only)
    if args.only is not None and "full (SEG + DAT)" not in args.only:
        del models["full (SEG + DAT)"]  # it only lent its encoders
    torch.manual_seed(0)
    image = torch.randn(1, 3, size, size)
    text = models["baseline"].tokenizer if args.small else None
    if text is not None:
        tok = text(["the storage tank at the top right"])
        ids, mask = tok["input_ids"], tok["attention_mask"]
    else:  # ids of "[CLS] the storage tank at the top right [SEP]" in bert-base-uncased, padded
        ids = torch.zeros(1, 20, dtype=torch.long)
        ids[0, :9] = torch.tensor([101, 1996, 5527, 4951, 2012, 1996, 2327, 2157, 102])
        mask = (ids != 0).long()
    entities = torch.zeros(1, size, size, dtype=torch.long)
    for k in range(40):  # 40 rectangular entities of varied sizes
        y, x = (k * 37) % size, (k * 53) % size
        entities[0, y : y + size // 8, x : x + size // 6] = k + 1

    def runner(label: str) -> Callable[[], object]:
        m = models[label]
        ent = entities if m.config.fusion.seg else None
        return lambda: m(image, ids, mask, ent)

    rows = {}
    for label, m in models.items():
        n_params = sum(p.numel() for p in m.parameters())
        if args.no_macs:
            rows[label] = {"params": n_params, "hook": 0, "parts": {}, "ops": 0}
            continue
        total, parts = hook_macs(m, runner(label))
        rows[label] = {
            "params": n_params,
            "hook": total,
            "parts": parts,
            "ops": operator_macs(runner(label)),
        }
        print(
            f"{label:18s} params {n_params / 1e6:7.2f} M  hook MACs {total / 1e9:7.2f} G  "
            f"all-op MACs {rows[label]['ops'] / 1e9:7.2f} G  "
            + "  ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(parts.items())),
            flush=True,
        )

    labels = list(models)
    times: dict[str, list[float]] = {k: [] for k in labels}
    with torch.no_grad():
        for label in labels:  # warm-up
            runner(label)()
        for r in range(args.rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                fn = runner(label)
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
            print(
                f"round {r + 1}/{args.rounds}: "
                + "  ".join(f"{k} {times[k][-1]:.2f}s" for k in labels),
                flush=True,
            )
    base_t = times["baseline"]
    for label in labels:
        per_round = [a / b for a, b in zip(times[label], base_t)]
        rows[label]["time"] = statistics.median(times[label])
        rows[label]["ratio"] = statistics.median(per_round)

    command = "python benchmarks/bench_table4.py" + (" --small" if args.small else "")
    if args.kv_stride:
        command += " --kv-stride " + " ".join(map(str, args.kv_stride))
    if args.only:
        command += " --only " + " ".join(f'"{label}"' for label in args.only)
    if args.no_macs:
        command += " --no-macs"
    cfg = models["full (SEG + DAT)"].config
    lines = [
        "# Table IV, measured" + (" (--small dry run)" if args.small else ""),
        "",
        f"Command: `{command} --rounds {args.rounds}`",
        f"Model: {cfg.name}, {size}x{size}, batch 1, random weights, CPU ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}; fusion.attn_kv_stride={tuple(cfg.fusion.attn_kv_stride)}, "
        f"decoder width {cfg.decoder.width}, head {cfg.decoder.head_width} x {cfg.decoder.head_layers}.",
        "",
        "| variant | params (M) | MACs, conv/linear hooks (G) | MACs, all operators (G) | CPU time (s, median) | time / baseline | paper G | paper ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        r = rows[label]
        pg, pr = PAPER[label]
        hook, ops = (
            ("-", "-") if args.no_macs else (f"{r['hook'] / 1e9:.2f}", f"{r['ops'] / 1e9:.2f}")
        )
        lines.append(
            f"| {label} | {r['params'] / 1e6:.2f} | {hook} | {ops} | "
            f"{r['time']:.2f} | {r['ratio']:.2f} | {pg if pg is not None else '-'} | {pr if pr is not None else '-'} |"
        )
    lines += [
        "",
        "Hook MACs by part (G): "
        + (
            "not counted (--no-macs)"
            if args.no_macs
            else "; ".join(
                f"{label}: "
                + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(rows[label]["parts"].items()))
                for label in labels
            )
        ),
        "",
        "Hook MACs count Conv1d/Conv2d/Linear (and MultiheadAttention, none used) as ptflops does; the "
        "all-operator count (torch.utils.flop_counter) adds matmuls outside those layers, chiefly the "
        "spatial attention (scaled_dot_product_attention) and Swin's window attention. Times are medians "
        "of interleaved rounds on a shared CPU: read the ratios, not the seconds.",
        "",
    ]
    text_out = "\n".join(lines)
    print(text_out)
    if not args.no_write:
        from entitwist.utils import atomic_path

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            tmp.write_text(text_out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
