"""Selective scan (Mamba's S6 recurrence) with mamba-ssm's signature and meaning.

For every batch element ``b``, channel ``d`` and state index ``n`` the scan runs

    delta_t = softplus(delta_t + delta_bias)      (bias and softplus optional)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t
    y_t     = sum_n C_t[n] * h_t[n] + D[d] * u_t
    out_t   = y_t * silu(z_t)                     (gating optional)

with ``h_0 = 0``. ``B`` and ``C`` are each either fixed per channel ``(D, N)``, variable
``(batch, N, L)`` (shared by all channels) or grouped ``(batch, G, N, L)`` (channel ``d``
reads group ``d // (D // G)``).

:func:`selective_scan_fn` runs mamba-ssm's CUDA kernel for the CUDA inputs that kernel accepts,
when mamba-ssm and its compiled extension are installed (see ``ops/_mamba_ssm.py``); every
other input runs the project's own scan in plain PyTorch (``ops/_chunked.py``). Both compute
in float32 (float64 for float64 inputs, project scan only) inside any autocast region.
:func:`selective_scan_ref` is the plain sequential loop over ``L``: the reference twin that
the tests hold the fast path against.

The PyTorch scan works in chunks of 8-256 steps (sized to keep a chunk's tensors near 1 MiB):
the decays and inputs of a chunk are computed at once, the recurrence is one fused
multiply-add per step, and a hand-written adjoint backward recomputes the states chunk by
chunk. It steps the recurrence itself, so stiff decays are as exact as mild ones. At batch 8,
D 512, L 2048, N 16 (float32, CPU, one thread) forward + backward is several times faster
than the sequential loop and uses about a tenth of its memory (``benchmarks/bench_scan.py``
and its results file give the measured ratio).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from entitwist.ops import _mamba_ssm
from entitwist.ops._chunked import selective_scan_chunked
from entitwist.ops._common import autocast_off, check_inputs, compute_dtype

__all__ = ["cuda_kernel_available", "selective_scan_fn", "selective_scan_ref"]


def cuda_kernel_available() -> bool:
    """Whether mamba-ssm's CUDA selective scan and its compiled extension import here."""
    return _mamba_ssm.load_kernel() is not None


def _per_channel(t: Tensor, dim: int) -> Tensor:
    """Expand B or C to one value per channel and step: (batch, D, N, L) or (D, N)."""
    if t.dim() == 4:  # (batch, G, N, L) -> (batch, D, N, L)
        return t.repeat_interleave(dim // t.shape[1], dim=1)
    return t


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Plain sequential selective scan over ``L``: the reference twin of :func:`selective_scan_fn`.

    Same arguments and outputs as :func:`selective_scan_fn`. Computes in float64 when ``u``
    is float64, otherwise in float32; the output is cast back to ``u``'s dtype, the last
    state is returned in the compute dtype. Slow (one step of Python per position), clear.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    with autocast_off(u.device.type):
        return _loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _loop(
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
    dtype_in = u.dtype
    cdt = compute_dtype(u)
    batch, dim, length = u.shape
    u = u.to(cdt)  # (batch, D, L)
    delta = delta.to(cdt)  # (batch, D, L)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(cdt)  # (D, N)
    B = _per_channel(B.to(cdt), dim)
    C = _per_channel(C.to(cdt), dim)
    h = u.new_zeros(batch, dim, A.shape[1])  # (batch, D, N)
    ys = []
    for t in range(length):  # one step of the recurrence per position
        d_t = delta[:, :, t, None]  # (batch, D, 1)
        if B.dim() == 2:
            b_t = B  # (D, N)
        elif B.dim() == 3:
            b_t = B[:, None, :, t]  # (batch, 1, N)
        else:
            b_t = B[:, :, :, t]  # (batch, D, N)
        if C.dim() == 2:
            c_t = C
        elif C.dim() == 3:
            c_t = C[:, None, :, t]
        else:
            c_t = C[:, :, :, t]
        h = torch.exp(d_t * A) * h + d_t * b_t * u[:, :, t, None]
        ys.append((h * c_t).sum(-1))  # (batch, D)
    y = torch.stack(ys, dim=2)  # (batch, D, L)
    out = y if D is None else y + u * D.to(cdt)[:, None]
    if z is not None:
        out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan, a drop-in for ``mamba_ssm``'s ``selective_scan_fn``.

    Args:
        u: input, (batch, D, L).
        delta: step sizes before bias/softplus, (batch, D, L).
        A: real state matrix, (D, N); negative for a decaying state.
        B: input matrix: (D, N) fixed, (batch, N, L) variable or (batch, G, N, L) grouped.
        C: output matrix, same three forms as ``B``.
        D: skip connection, (D,), or None.
        z: gate, (batch, D, L), or None; the output is multiplied by ``silu(z)``.
        delta_bias: added to ``delta`` before the softplus, (D,), or None.
        delta_softplus: apply ``softplus`` to ``delta`` (after the bias).
        return_last_state: also return the final state.

    Returns:
        ``out`` (batch, D, L) in ``u``'s dtype, or ``(out, last_state)`` with ``last_state``
        (batch, D, N) float32 (float64 for float64 inputs), also inside an autocast region.

    Raises:
        InputError: when the shapes do not fit (before any kernel is called).
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if _mamba_ssm.is_cuda(u):
        kernel = _mamba_ssm.load_kernel()
        if kernel is not None and (
            _mamba_ssm.kernel_refusal(u, delta, A, B, C, D, z, delta_bias, return_last_state)
            is None
        ):
            return _mamba_ssm.call_kernel(
                kernel, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
            )
    return selective_scan_chunked(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
    )
