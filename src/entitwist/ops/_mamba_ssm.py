"""mamba-ssm's CUDA selective scan: when it is really there, and which inputs it accepts.

mamba-ssm's ``selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
return_last_state)`` hands its tensors to the compiled extension ``selective_scan_cuda.fwd``
(``csrc/selective_scan/selective_scan.cpp``), which accepts

- ``u``: float32, float16 or bfloat16; ``delta`` and ``z`` in ``u``'s dtype;
- ``A``: real float32 ``(D, N)`` with ``N <= 256``;
- ``B``, ``C``: fixed ``(D, N)`` in float32, or variable in ``u``'s dtype, ``(batch, N, L)``
  (read as one group) or ``(batch, G, N, L)``; ``G`` is taken from ``B`` (1 when ``B`` is
  fixed) and a variable ``C`` must have the same ``G``;
- ``D``, ``delta_bias``: float32 ``(D,)``;
- every tensor on the CUDA device, last dimension contiguous.

Anything else raises inside the extension or, for B and C grouped differently, reads the wrong
group. Its backward also ignores gradients that reach the returned last state. So
:func:`kernel_refusal` names why the kernel cannot take a call, and the caller runs the
project's scan for those. Recent mamba-ssm builds import their Python interface without the
compiled extension (and fail only at the first call); :func:`load_kernel` therefore imports
``selective_scan_cuda`` itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["call_kernel", "is_cuda", "kernel_refusal", "load_kernel"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_DSTATE = 256


@functools.cache
def load_kernel() -> Callable[..., Any] | None:
    """mamba-ssm's ``selective_scan_fn`` when it and its compiled extension import, else None."""
    try:
        import selective_scan_cuda  # the compiled extension the interface calls
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # absent, or a build that does not load here (ABI, CUDA, symbols)
        return None
    if not callable(getattr(selective_scan_cuda, "fwd", None)):
        return None
    return selective_scan_fn


def is_cuda(t: Tensor) -> bool:
    """Whether ``t`` lives on a CUDA device (one place to ask, so tests can stand in a GPU)."""
    return t.is_cuda


def kernel_refusal(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    return_last_state: bool,
) -> str | None:
    """Why mamba-ssm's kernel cannot take these (shape-checked) inputs; None when it can."""
    given = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if not all(is_cuda(t) and t.device == u.device for t in given):
        return "not every tensor is on u's CUDA device"
    if u.dtype not in KERNEL_DTYPES:
        return f"u is {u.dtype}; the kernel takes float32, float16 or bfloat16"
    if delta.dtype != u.dtype or (z is not None and z.dtype != u.dtype):
        return "delta and z must have u's dtype"
    if A.dtype != torch.float32:
        return f"A is {A.dtype}; the kernel takes float32"
    if A.shape[1] > MAX_DSTATE:
        return f"N = {A.shape[1]} exceeds the kernel's {MAX_DSTATE}"
    for name, t in (("B", B), ("C", C)):
        want = torch.float32 if t.dim() == 2 else u.dtype
        if t.dtype != want:
            return f"{name} is {t.dtype}; the kernel takes {want} for this form"
    for name, opt in (("D", D), ("delta_bias", delta_bias)):
        if opt is not None and opt.dtype != torch.float32:
            return f"{name} is {opt.dtype}; the kernel takes float32"
    groups = B.shape[1] if B.dim() == 4 else 1
    if C.dim() >= 3 and (C.shape[1] if C.dim() == 4 else 1) != groups:
        return "C's groups differ from B's (a fixed B counts as one group)"
    if return_last_state and torch.is_grad_enabled() and any(t.requires_grad for t in given):
        return "the kernel's backward ignores the gradient of the last state"
    return None


def call_kernel(
    kernel: Callable[..., Any],
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    """Call mamba-ssm's ``selective_scan_fn`` positionally, every tensor contiguous."""

    def dense(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.contiguous()

    return kernel(
        u.contiguous(),
        delta.contiguous(),
        A.contiguous(),
        B.contiguous(),
        C.contiguous(),
        dense(D),
        dense(z),
        dense(delta_bias),
        bool(delta_softplus),
        bool(return_last_state),
    )
