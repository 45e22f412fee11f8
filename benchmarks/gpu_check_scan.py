"""The scan section of benchmarks/gpu_check.py, and the timing helpers every section shares.

With TF32 off, the project's scan (and mamba-ssm's CUDA kernel when installed) against the
float64 sequential reference: forward and every input gradient, the project's scan also
inside bfloat16 autocast; then forward+backward time of each against the plain sequential
loop at the stage-4 channel-scan shape (batch 8, D 512, L 2048, N 16).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

AMP = torch.bfloat16  # the autocast dtype of every section


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-30))


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on or off inside the block (CUDA only has TF32)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _scan_inputs(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int, int]):
    bsz, dim, length, n = shape
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
    return {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in t.items()}


def _scan_errors(fn: Callable[..., Any], device: torch.device, shape, amp: bool) -> dict:
    """Forward and input-gradient errors of ``fn`` on ``device`` vs the float64 loop (CPU)."""
    from entitwist.ops import selective_scan_ref

    fast_in, ref_in = (
        _scan_inputs(device, torch.float32, shape),
        _scan_inputs("cpu", torch.float64, shape),
    )
    with torch.autocast(device.type, dtype=AMP, enabled=amp):
        out = fn(**fast_in, delta_softplus=True)
    ref = selective_scan_ref(**ref_in, delta_softplus=True)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out.backward(grad.to(out.device, out.dtype))
    ref.backward(grad)
    errors = {"forward": _rel(out, ref)}
    for k in fast_in:
        errors[f"grad_{k}"] = _rel(fast_in[k].grad, ref_in[k].grad)
    return errors


def check_scan(device: torch.device, dry: bool) -> dict[str, Any]:
    from entitwist.ops import (
        cuda_kernel_available,
        selective_scan_chunked,
        selective_scan_fn,
        selective_scan_ref,
    )

    torch.manual_seed(0)
    kernel = cuda_kernel_available() and device.type == "cuda"
    impls: dict[str, Callable[..., Any]] = {"project": selective_scan_chunked}
    if kernel:  # selective_scan_fn runs mamba-ssm's kernel for these (CUDA, float32) inputs
        impls["mamba_ssm"] = selective_scan_fn
    shape = (2, 8, 37, 4) if dry else (2, 64, 300, 16)
    with tf32(False):  # precision is measured: full float32 matmuls
        errors = {name: _scan_errors(fn, device, shape, amp=False) for name, fn in impls.items()}
        errors["project_bf16_autocast"] = _scan_errors(selective_scan_chunked, device, shape, True)

        # speed at the stage-4 channel-scan shape against the plain loop
        bsz, dim, length, n = (1, 16, 64, 4) if dry else (8, 512, 2048, 16)
        u = torch.randn(bsz, dim, length, device=device, requires_grad=True)
        delta = (torch.rand(bsz, dim, length, device=device) * 0.1).requires_grad_()
        A = (-torch.rand(dim, n, device=device) - 0.5).requires_grad_()
        B = torch.randn(bsz, n, length, device=device, requires_grad=True)
        C = torch.randn(bsz, n, length, device=device, requires_grad=True)

        def step(fn: Callable[..., Any]) -> Callable[[], None]:
            def run() -> None:
                y = fn(u, delta, A, B, C)
                y.sum().backward()

            return run

        repeats = 1 if dry else 3
        times = {name: timeit(step(fn), device, repeats) for name, fn in impls.items()}
        t_loop = timeit(step(selective_scan_ref), device, 1)
    return {
        "errors": errors,
        "max_rel_error": {name: max(e.values()) for name, e in errors.items()},
        "cuda_kernel": kernel,
        "tf32": False,
        "shape": [bsz, dim, length, n],
        "fwd_bwd_s": times,
        "loop_fwd_bwd_s": t_loop,
        "speedup": {name: t_loop / t for name, t in times.items()},
    }
