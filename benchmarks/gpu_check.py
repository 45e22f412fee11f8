"""One prepared GPU check: what the lent minutes on a GPU should measure.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check.json          # on the GPU machine
    PYTHONPATH=src python benchmarks/gpu_check.py --dry-run --out /tmp/x.json   # tiny sizes, any CPU

Needs torch, timm, transformers, safetensors, numpy, scikit-image and pillow (the GPU
machine has the first three; carry the others as wheels, see benchmarks/README.md) and no
network: every model is built from configuration with random weights.

Sections (each prints one table row; details go to the JSON file):
  1. scan   - entitwist.ops.selective_scan_fn on the device against the float64 sequential
              reference (max relative error, forward and input gradients), and its
              forward+backward time against the plain sequential loop at the stage-4
              channel-scan shape (batch 8, D 512, L 2048, N 16).
  2. train  - the default Swin-B + BERT model at 480x480, batch 8, bf16 autocast: training
              step time, images/s and peak memory, full model and baseline (no SEG, no DAT),
              and their ratio (the paper's Table IV time column).
  3. infer  - inference latency at batch 1 and 8 (full model, bf16 autocast).
  4. tiny   - a short training run of the tiny model on synthetic scenes: first and last
              loss, to show the loss falls on the device as on CPU.
A section that fails records its error and the script goes on; the exit status is non-zero
if any section failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-30))


# --------------------------------------------------------------------------- 1. scan
def check_scan(device: torch.device, dry: bool) -> dict[str, Any]:
    from entitwist.ops import cuda_kernel_available, selective_scan_fn, selective_scan_ref

    torch.manual_seed(0)
    bsz, dim, length, n = (2, 8, 37, 4) if dry else (2, 64, 300, 16)

    def inputs(dtype):
        g = torch.Generator().manual_seed(1)
        t = {
            "u": torch.randn(bsz, dim, length, generator=g),
            "delta": torch.rand(bsz, dim, length, generator=g) * 0.5,
            "A": -torch.rand(dim, n, generator=g) - 0.5,
            "B": torch.randn(bsz, n, length, generator=g),
            "C": torch.randn(bsz, n, length, generator=g),
            "D": torch.randn(dim, generator=g),
            "z": torch.randn(bsz, dim, length, generator=g),
            "delta_bias": torch.randn(dim, generator=g) * 0.1,
        }
        return {
            k: v.to(
                device=device if dtype == torch.float32 else "cpu", dtype=dtype
            ).requires_grad_()
            for k, v in t.items()
        }

    fast_in, ref_in = inputs(torch.float32), inputs(torch.float64)
    out = selective_scan_fn(**fast_in, delta_softplus=True)
    ref = selective_scan_ref(**ref_in, delta_softplus=True)
    grad = torch.randn_like(ref)
    out.backward(grad.to(out.device, out.dtype))
    ref.backward(grad)
    errors = {"forward": _rel(out, ref)}
    for k in fast_in:
        errors[f"grad_{k}"] = _rel(fast_in[k].grad, ref_in[k].grad)

    # speed at the stage-4 channel-scan shape against the plain loop
    bsz, dim, length, n = (1, 16, 64, 4) if dry else (8, 512, 2048, 16)
    u = torch.randn(bsz, dim, length, device=device, requires_grad=True)
    delta = (torch.rand(bsz, dim, length, device=device) * 0.1).requires_grad_()
    A = (-torch.rand(dim, n, device=device) - 0.5).requires_grad_()
    B = torch.randn(bsz, n, length, device=device, requires_grad=True)
    C = torch.randn(bsz, n, length, device=device, requires_grad=True)

    def step(fn):
        def run():
            y = fn(u, delta, A, B, C)
            y.sum().backward()

        return run

    repeats = 1 if dry else 3
    t_fast = _timeit(step(selective_scan_fn), device, repeats)
    t_loop = _timeit(step(selective_scan_ref), device, 1)
    return {
        "errors": errors,
        "max_rel_error": max(errors.values()),
        "cuda_kernel": cuda_kernel_available() and device.type == "cuda",
        "shape": [bsz, dim, length, n],
        "fast_fwd_bwd_s": t_fast,
        "loop_fwd_bwd_s": t_loop,
        "speedup": t_loop / t_fast,
    }


# --------------------------------------------------------------------------- 2./3. Swin-B + BERT
def _model_inputs(model, batch: int, device: torch.device, size: int, k: int):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, size, size, generator=g).to(device)
    tok = model.tokenizer(["the storage tank at the top right of the image"] * batch)
    entities = torch.randint(0, k + 1, (batch, size, size), generator=g).to(device)
    target = torch.randint(0, 2, (batch, size, size), generator=g).to(device)
    return image, tok["input_ids"].to(device), tok["attention_mask"].to(device), entities, target


def _build(name: str, dry: bool, **overrides):
    from entitwist import create_model

    if dry:
        return create_model("entitwist_tiny", **overrides)
    return create_model(name, text__pretrained=None, visual__pretrained=None, **overrides)


def check_train(device: torch.device, dry: bool) -> dict[str, Any]:
    from entitwist.models.loss import referring_loss

    batch = 2 if dry else 8
    repeats = 1 if dry else 5
    amp = device.type == "cuda"
    rows: dict[str, Any] = {}
    for label, overrides in (("full", {}), ("baseline", {"seg": False, "dat": "none"})):
        model = _build("entitwist_swinb_bert", dry, **overrides).to(device).train()
        size = model.config.visual.img_size
        k = model.config.fusion.max_entities
        image, ids, mask, entities, target = _model_inputs(model, batch, device, size, k)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(
            model=model, opt=opt, image=image, ids=ids, mask=mask, entities=entities, target=target
        ):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(image, ids, mask, entities if model.config.fusion.seg else None)
                loss = referring_loss(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        _peak_reset(device)
        t = _timeit(step, device, repeats)
        rows[label] = {
            "step_s": t,
            "images_per_s": batch / t,
            "peak_mem_gib": _peak_gib(device),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        }
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows["time_ratio_full_over_baseline"] = rows["full"]["step_s"] / rows["baseline"]["step_s"]
    rows["batch"] = batch
    return rows


@torch.no_grad()
def check_infer(device: torch.device, dry: bool) -> dict[str, Any]:
    model = _build("entitwist_swinb_bert", dry).to(device).eval()
    size, k = model.config.visual.img_size, model.config.fusion.max_entities
    amp = device.type == "cuda"
    out: dict[str, Any] = {}
    for batch in (1, 8) if not dry else (1, 2):
        image, ids, mask, entities, _ = _model_inputs(model, batch, device, size, k)

        def run(image=image, ids=ids, mask=mask, entities=entities):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                model(image, ids, mask, entities)

        t = _timeit(run, device, 1 if dry else 10, warmup=1 if dry else 3)
        out[f"batch{batch}_latency_ms"] = 1000 * t
        out[f"batch{batch}_images_per_s"] = batch / t
    return out


# --------------------------------------------------------------------------- 4. tiny training
def check_tiny(device: torch.device, dry: bool) -> dict[str, Any]:
    import numpy as np

    from entitwist import create_model
    from entitwist.data.synthetic_expressions import generate_expressions
    from entitwist.data.synthetic_scene import generate_scene
    from entitwist.entities import compute_entities
    from entitwist.models.loss import referring_loss

    torch.manual_seed(0)
    model = create_model("entitwist_tiny").to(device).train()
    size = model.config.visual.img_size
    k = model.config.fusion.max_entities
    rng = np.random.default_rng(0)
    images, masks, sentences, ents = [], [], [], []
    for seed in range(2 if dry else 32):
        scene = generate_scene(seed, size=size)
        labels = compute_entities(scene.image, max_entities=k)
        for ref in generate_expressions(scene, rng)[:4]:
            images.append(scene.image)
            masks.append(ref.mask)
            sentences.append(ref.expression)
            ents.append(labels)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = ((torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255 - mean) / std).to(
        device
    )
    y = torch.from_numpy(np.stack(masks).astype(np.int64)).clamp(max=1).to(device)
    e = torch.from_numpy(np.stack(ents).astype(np.int64)).to(device)
    tok = model.tokenizer(sentences)
    ids, am = tok["input_ids"].to(device), tok["attention_mask"].to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    steps = 3 if dry else 150
    batch = 8
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        logits = model(x[idx], ids[idx], am[idx], e[idx])
        loss = referring_loss(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _sync(device)
    head = statistics.mean(losses[: max(1, steps // 10)])
    tail = statistics.mean(losses[-max(1, steps // 10) :])
    return {
        "steps": steps,
        "samples": len(x),
        "first_loss": head,
        "last_loss": tail,
        "falls": tail < head,
        "seconds": time.perf_counter() - start,
    }


SECTIONS = {"scan": check_scan, "train": check_train, "infer": check_infer, "tiny": check_tiny}


def _summary_line(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{name:<6} FAILED: {r['error']}"
    if name == "scan":
        return (
            f"scan   max rel err {r['max_rel_error']:.1e} | fwd+bwd {r['fast_fwd_bwd_s'] * 1e3:.1f} ms vs loop "
            f"{r['loop_fwd_bwd_s'] * 1e3:.1f} ms ({r['speedup']:.1f}x) | cuda kernel: {r['cuda_kernel']}"
        )
    if name == "train":
        f, b = r["full"], r["baseline"]
        mem = (
            ""
            if f["peak_mem_gib"] is None
            else f" | peak {f['peak_mem_gib']:.1f} / {b['peak_mem_gib']:.1f} GiB"
        )
        return (
            f"train  batch {r['batch']}: full {f['step_s'] * 1e3:.0f} ms/step ({f['images_per_s']:.1f} img/s), "
            f"baseline {b['step_s'] * 1e3:.0f} ms/step | ratio {r['time_ratio_full_over_baseline']:.2f}{mem}"
        )
    if name == "infer":
        return "infer  " + ", ".join(f"{k} {v:.1f}" for k, v in r.items())
    return f"tiny   {r['steps']} steps: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} ({'falls' if r['falls'] else 'does NOT fall'}), {r['seconds']:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON details go")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes (CI, CPU)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated sections to run"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
    }
    results: dict[str, Any] = {"info": info}
    print(
        f"entitwist GPU check on {info['device']} (torch {info['torch']}{', dry run' if args.dry_run else ''})"
    )
    failed = False
    for name in args.only.split(","):
        if name not in SECTIONS:
            print(
                f"gpu_check: error: unknown section {name!r}; choose from {', '.join(SECTIONS)}",
                file=sys.stderr,
            )
            return 2
        start = time.perf_counter()
        try:
            r = SECTIONS[name](device, args.dry_run)
        except Exception as exc:  # a failing section is recorded; the others still run
            failed = True
            r = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        r["section_seconds"] = time.perf_counter() - start
        results[name] = r
        print(_summary_line(name, r), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"details: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
