"""Selective scan (Mamba's S6 recurrence) with mamba-ssm's signature and meaning.

For every batch element ``b``, channel ``d`` and state index ``n`` the scan runs

    delta_t = softplus(delta_t + delta_bias)      (bias and softplus optional)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t
    y_t     = sum_n C_t[n] * h_t[n] + D[d] * u_t
    out_t   = y_t * silu(z_t)                     (gating optional)

with ``h_0 = 0``. ``B`` and ``C`` are each either fixed per channel ``(D, N)``, variable
``(batch, N, L)`` (shared by all channels) or grouped ``(batch, G, N, L)`` (channel ``d``
reads group ``d // (D // G)``).

:func:`selective_scan_fn` dispatches to mamba-ssm's CUDA kernel when the input is on CUDA and
``mamba_ssm`` is importable; otherwise it runs the project's own scan in plain PyTorch.
:func:`selective_scan_ref` is the plain sequential loop over ``L``: the reference twin that
the tests hold the fast path against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from entitwist.errors import InputError

try:  # optional fast path: mamba-ssm's CUDA kernel
    from mamba_ssm.ops.selective_scan_interface import (
        selective_scan_fn as _mamba_selective_scan_fn,
    )
except ImportError:  # the usual case on CPU machines
    _mamba_selective_scan_fn = None

HAS_CUDA_KERNEL: bool = _mamba_selective_scan_fn is not None

__all__ = ["HAS_CUDA_KERNEL", "selective_scan_fn", "selective_scan_ref"]


def _check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    """Raise :class:`InputError` (one line, with the fix) when the shapes do not fit."""
    if u.dim() != 3:
        raise InputError(f"selective scan: u must be (batch, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if tuple(delta.shape) != (batch, dim, length):
        raise InputError(
            f"selective scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != dim:
        raise InputError(f"selective scan: A must be (D={dim}, N), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise InputError("selective scan: complex A is not supported; pass a real (D, N) A")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            ok = tuple(t.shape) == (dim, dstate)
        elif t.dim() == 3:
            ok = tuple(t.shape) == (batch, dstate, length)
        elif t.dim() == 4:
            ok = (
                t.shape[0] == batch
                and t.shape[2] == dstate
                and t.shape[3] == length
                and t.shape[1] > 0
                and dim % t.shape[1] == 0
            )
        else:
            ok = False
        if not ok:
            raise InputError(
                f"selective scan: {name} must be (D={dim}, N={dstate}), (batch={batch}, N, "
                f"L={length}) or (batch, G, N, L) with G dividing D, got {tuple(t.shape)}"
            )
    if D is not None and tuple(D.shape) != (dim,):
        raise InputError(f"selective scan: D must be ({dim},), got shape {tuple(D.shape)}")
    if z is not None and tuple(z.shape) != (batch, dim, length):
        raise InputError(
            f"selective scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}"
        )
    if delta_bias is not None and tuple(delta_bias.shape) != (dim,):
        raise InputError(
            f"selective scan: delta_bias must be ({dim},), got shape {tuple(delta_bias.shape)}"
        )


def _compute_dtype(u: Tensor) -> torch.dtype:
    """float64 inputs are scanned in float64; everything else (half included) in float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


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
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    cdt = _compute_dtype(u)
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
    for t in range(length):
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
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)  # (batch, D, L)
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
        (batch, D, N) float32 (float64 for float64 inputs).
    """
    if u.is_cuda and _mamba_selective_scan_fn is not None:
        return _mamba_selective_scan_fn(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    return selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
    )
