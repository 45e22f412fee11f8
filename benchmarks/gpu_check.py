"""One prepared GPU check: what a few minutes on a GPU should measure.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check.json          # on the GPU machine
    PYTHONPATH=src python benchmarks/gpu_check.py --dry-run --out /tmp/x.json   # reduced sizes, any CPU

Needs torch, timm, transformers, safetensors, numpy, scikit-image and pillow (the GPU
machine has the first three; carry the others as wheels, see benchmarks/README.md) and no
network: every model is built from configuration with random weights and the shipped tiny
vocabulary.

The dry run executes every line the real run does, on the same models (the paper's Swin-B +
BERT, full and baseline, from the registry), only at a smaller input size, batch and step
count. Every model section runs under bfloat16 autocast on every device.

Sections (each prints one table row; details go to the JSON file):
  1. scan   - (benchmarks/gpu_check_scan.py) with TF32 off: the project's scan (and mamba-ssm's CUDA kernel when installed)
              against the float64 sequential reference (max relative error, forward and every
              input gradient), the project's scan also inside bfloat16 autocast; then
              forward+backward time of each against the plain sequential loop at the
              stage-4 channel-scan shape (batch 8, D 512, L 2048, N 16).
  2. train  - entitwist_swinb_bert and its baseline (no SEG, no DAT) at 480x480, batch 8,
              bf16 autocast, TF32 on: training-step time, images/s, peak memory, parameter
              counts, and the time ratio (the paper's Table IV time column).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_scan import AMP, check_scan, sync, tf32, timeit  # noqa: E402

FULL_MODEL = "entitwist_swinb_bert"
BASELINE_MODEL = "entitwist_swinb_bert_baseline"
DRY_IMG_SIZE = 32  # the dry run's input size (the real run uses the config's 480)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


# --------------------------------------------------------------------------- 2./3. Swin-B + BERT
def _model_inputs(model, batch: int, device: torch.device, size: int, k: int):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, size, size, generator=g).to(device)
    tok = model.tokenizer(["the storage tank at the top right of the image"] * batch)
    entities = torch.randint(0, k + 1, (batch, size, size), generator=g).to(device)
    target = torch.randint(0, 2, (batch, size, size), generator=g).to(device)
    return image, tok["input_ids"].to(device), tok["attention_mask"].to(device), entities, target


_MODELS: dict[str, torch.nn.Module] = {}  # built once per run (a Swin-B + BERT build is slow)


def _build(name: str, dry: bool) -> torch.nn.Module:
    """The registry's model with random weights and the shipped tiny vocabulary (offline).

    Kept on the CPU between sections: move it to the device for a section, back after.
    """
    from entitwist import create_model, list_models

    if name not in _MODELS:
        if name not in list_models():
            raise RuntimeError(f"the registry has no model {name!r}; see `entitwist models`")
        overrides: dict[str, Any] = {"text__vocab": "tiny"}
        if dry:
            overrides["visual__img_size"] = DRY_IMG_SIZE
        _MODELS[name] = create_model(name, pretrained=False, **overrides)
    return _MODELS[name]


def _release(model: torch.nn.Module, device: torch.device) -> None:
    """Gradients dropped and weights back on the CPU, so the next section's peak is its own."""
    model.zero_grad(set_to_none=True)
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _params_m(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def check_train(device: torch.device, dry: bool) -> dict[str, Any]:
    from entitwist.models.loss import referring_loss

    batch = 2 if dry else 8
    repeats = 1 if dry else 5
    rows: dict[str, Any] = {}
    for label, name in (("full", FULL_MODEL), ("baseline", BASELINE_MODEL)):
        torch.manual_seed(0)
        model = _build(name, dry).to(device).train()
        size = model.config.visual.img_size
        k = model.config.fusion.max_entities
        image, ids, mask, entities, target = _model_inputs(model, batch, device, size, k)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        losses: list[float] = []

        def step(
            model=model,
            opt=opt,
            image=image,
            ids=ids,
            mask=mask,
            entities=entities,
            target=target,
            losses=losses,
        ):
            with torch.autocast(device.type, dtype=AMP):
                logits = model(image, ids, mask, entities if model.config.fusion.seg else None)
                loss = referring_loss(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())

        _peak_reset(device)
        with tf32(True):
            t = timeit(step, device, repeats, warmup=0 if dry else 1)
        rows[label] = {
            "model": name,
            "img_size": size,
            "step_s": t,
            "images_per_s": batch / t,
            "peak_mem_gib": _peak_gib(device),
            "params_m": _params_m(model),
            "losses": losses,
        }
        del opt
        _release(model, device)
    rows["time_ratio_full_over_baseline"] = rows["full"]["step_s"] / rows["baseline"]["step_s"]
    rows["batch"] = batch
    return rows


@torch.no_grad()
def check_infer(device: torch.device, dry: bool) -> dict[str, Any]:
    model = _build(FULL_MODEL, dry).to(device).eval()
    size, k = model.config.visual.img_size, model.config.fusion.max_entities
    out: dict[str, Any] = {"model": FULL_MODEL, "img_size": size}
    for batch in (1, 2) if dry else (1, 8):
        image, ids, mask, entities, _ = _model_inputs(model, batch, device, size, k)

        def run(image=image, ids=ids, mask=mask, entities=entities):
            with torch.autocast(device.type, dtype=AMP):
                logits = model(image, ids, mask, entities)
            if not torch.isfinite(logits).all():
                raise FloatingPointError("non-finite logits under bf16 autocast")

        with tf32(True):
            t = timeit(run, device, 1 if dry else 10, warmup=0 if dry else 3)
        out[f"batch{batch}_latency_ms"] = 1000 * t
        out[f"batch{batch}_images_per_s"] = batch / t
    _release(model, device)
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
    steps = 2 if dry else 150
    batch = 4 if dry else 8
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        with torch.autocast(device.type, dtype=AMP):
            logits = model(x[idx], ids[idx], am[idx], e[idx])
            loss = referring_loss(logits.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    sync(device)
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
        errs = ", ".join(f"{k} {v:.1e}" for k, v in r["max_rel_error"].items())
        speed = ", ".join(
            f"{k} {r['fwd_bwd_s'][k] * 1e3:.1f} ms ({r['speedup'][k]:.1f}x)" for k in r["fwd_bwd_s"]
        )
        return (
            f"scan   max rel err (TF32 off): {errs} | fwd+bwd {speed} vs loop "
            f"{r['loop_fwd_bwd_s'] * 1e3:.1f} ms | cuda kernel: {r['cuda_kernel']}"
        )
    if name == "train":
        f, b = r["full"], r["baseline"]
        mem = (
            ""
            if f["peak_mem_gib"] is None
            else f" | peak {f['peak_mem_gib']:.1f} / {b['peak_mem_gib']:.1f} GiB"
        )
        return (
            f"train  {f['img_size']} px, batch {r['batch']}: full {f['step_s'] * 1e3:.0f} ms/step "
            f"({f['images_per_s']:.1f} img/s, {f['params_m']:.1f} M params), baseline "
            f"{b['step_s'] * 1e3:.0f} ms/step ({b['params_m']:.1f} M) | ratio "
            f"{r['time_ratio_full_over_baseline']:.2f}{mem}"
        )
    if name == "infer":
        return f"infer  {r['img_size']} px: " + ", ".join(
            f"{k} {v:.1f}" for k, v in r.items() if k.startswith("batch")
        )
    return (
        f"tiny   {r['steps']} steps: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} "
        f"({'falls' if r['falls'] else 'does NOT fall'}), {r['seconds']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON details go")
    parser.add_argument(
        "--dry-run", action="store_true", help="reduced sizes and steps, same models (CI, CPU)"
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated sections to run"
    )
    args = parser.parse_args(argv)
    names = args.only.split(",")
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(
            f"gpu_check: error: unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
    }
    results: dict[str, Any] = {"info": info}
    print(
        f"entitwist GPU check on {info['device']} (torch {info['torch']}"
        f"{', dry run' if args.dry_run else ''})"
    )
    failed = False
    for name in names:
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
