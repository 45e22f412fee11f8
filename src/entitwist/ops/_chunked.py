"""The project's selective scan in PyTorch: chunked closed form, hand-written adjoint backward.

:func:`selective_scan_chunked` has :func:`entitwist.ops.selective_scan_fn`'s arguments (plus an
optional fixed chunk length). It computes in float32 (float64 for float64 inputs) whatever
autocast region it is called in, and returns ``out`` in ``u``'s dtype and the last state in
the compute dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from entitwist.ops._common import autocast_off, check_inputs, compute_dtype

__all__ = ["choose_chunk", "selective_scan_chunked"]

# ---------------------------------------------------------------------------------------------
# The project's chunked scan.
#
# Layout: time-major inside, channels split as D = G * H (G groups of H channels; G = 1
# unless B or C is grouped). Every per-chunk tensor is (batch, T, G, H, N); u and delta are
# (batch, L, G, H) and B, C, A broadcast into the chunk tensors:
#   A                 -> (G, H, N)
#   B/C fixed (D, N)  -> (G, H, N)                (``varies`` False)
#   B/C (batch, N, L) -> (batch, L, 1, 1, N)      (``varies`` True)
#   B/C grouped       -> (batch, L, G, 1, N)      (``varies`` True)
#
# Within a chunk of T steps with inclusive cumulative step sums Dc_t = delta_1 + ... + delta_t,
# the decay from step s to step t is exp(A * (Dc_t - Dc_s)) = E_t / E_s with E_t = exp(A Dc_t),
# so the states are one cumulative sum, done as a (T, T) lower-triangular matmul:
#   h_t = E_t * (h_0 + sum_{s<=t} x_s / E_s),     x_s = delta_s * B_s * u_s.
# The chunk length is chosen per call so that |A * Dc_t| <= _MAX_LOG_DECAY inside every chunk:
# E_t and 1 / E_t then stay far from float32 under/overflow and the ratio keeps its accuracy.
# A short sequential pass over the chunks carries h_0 from one chunk to the next.
#
# Backward is the adjoint scan, run in reverse time with the same chunking: with
# lam_t = dLoss/dh_t and c_t = C_t * dLoss/dy_t,
#   lam_t = c_t + exp(delta_{t+1} A) * lam_{t+1}
#         = (1 / E_t) * (sum_{s>=t} E_s c_s + E_last * lam_in)
# (an upper-triangular matmul) where lam_in is the adjoint carried in from the next chunk,
# already multiplied by that chunk's first decay. Then, with alpha_t = exp(delta_t A) and
# beta_t = x_t (so h_t = alpha_t h_{t-1} + beta_t and alpha_t h_{t-1} = h_t - x_t):
#   dC_t = dy_t h_t,  dB_t = lam_t delta_t u_t,  du_t = delta_t sum_n lam_t B_t,
#   d delta_t = u_t sum_n lam_t B_t + sum_n A lam_t (h_t - x_t),  dA = sum delta_t lam_t (h_t - x_t).
# States are recomputed chunk by chunk from the chunk starts saved by the forward pass, so the
# memory is O(batch * D * N * (L / T + T)), never O(batch * D * L * N).
# ---------------------------------------------------------------------------------------------

# exp(+-60) stays well inside float32's normal range (1e-38 .. 3e38) with room for the sums;
# measured errors against float64 stay near 1e-7 up to |A * Dc| ~ 60 (precision is not the
# limit, overflow is).
_MAX_LOG_DECAY = 60.0
_CHUNK_SIZES = (32, 16, 8, 4, 2, 1)


def choose_chunk(delta: Tensor, A: Tensor) -> int:
    """Longest chunk length whose |A * cumulative delta| stays within _MAX_LOG_DECAY.

    delta: (batch, D, L) after bias/softplus; A: (D, N).
    """
    length = delta.shape[-1]
    if length == 0 or A.shape[1] == 0:
        return 1
    rate = delta.detach().abs() * A.detach().abs().amax(-1)[:, None]  # (batch, D, L) per step
    for size in _CHUNK_SIZES:
        if size > 1 and size >= 2 * length:
            continue
        pad = (-length) % size
        sums = F.pad(rate, (0, pad)).unflatten(-1, (-1, size)).sum(-1)  # (batch, D, L/size)
        if size == 1 or float(sums.amax()) <= _MAX_LOG_DECAY:
            return size
    return 1


def _contract_n(x: Tensor, m: Tensor, varies: bool) -> Tensor:
    """sum_n x * m: x (b, T, G, H, N), m (B/C in the chunk layout) -> (b, T, G, H)."""
    if varies:  # (b, T, G, H, N) @ (b, T, G|1, N, 1): batched matrix-vector products
        return torch.matmul(x, m.transpose(-1, -2)).squeeze(-1)
    return (x * m).sum(-1)


def _contract_d(w: Tensor, x: Tensor, like: Tensor, varies: bool) -> Tensor:
    """Gradient of B or C: sum of w * x over the channels (and steps) that share a value.

    w: (b, T, G, H); x: (b, T, G, H, N); like: the B/C chunk it is the gradient of.
    """
    if varies:  # (b, T, G, 1, H) @ (b, T, G, H, N) -> (b, T, G, 1, N)
        out = torch.matmul(w.unsqueeze(-2), x)
        return out.sum(2, keepdim=True) if like.shape[2] == 1 < out.shape[2] else out
    return (x * w[..., None]).sum((0, 1))  # (G, H, N)


def _prefix_sum(x: Tensor, upper: bool) -> Tensor:
    """Cumulative sums over dim 1 of contiguous x (b, T, ...) as one batched matmul.

    ``upper=False``: inclusive prefix sums; ``upper=True``: inclusive suffix sums. A (T, T)
    triangle of ones times (T, G*H*N) per batch element: much faster on CPU than ``cumsum``
    over a non-innermost dimension, and no flips for the suffix sums.
    """
    batch, steps = x.shape[:2]
    ones = torch.ones(steps, steps, dtype=x.dtype, device=x.device)
    tri = ones.triu_() if upper else ones.tril_()
    flat = x.reshape(batch, steps, -1)  # (b, T, G*H*N), a view
    return torch.bmm(tri.expand(batch, steps, steps), flat).view_as(x)


def _chunk_states(
    h0: Tensor, delta: Tensor, u: Tensor, A: Tensor, Bc: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """States of one chunk from its start state.

    Args:
        h0: (b, G, H, N) state before the chunk.
        delta, u: (b, T, G, H).
        A: (G, H, N).
        Bc: B for the chunk, broadcastable to (b, T, G, H, N).

    Returns:
        states (b, T, G, H, N), E = exp(A * cumsum(delta)) (b, T, G, H, N), and
        x = delta * B * u (b, T, G, H, N).
    """
    x = (delta * u)[..., None] * Bc  # (b, T, G, H, N)
    steps = delta.shape[1]
    if steps == 1:  # one step: no ratio needed (and none is safe for huge steps)
        E = torch.exp(delta[..., None] * A)
        return torch.addcmul(x, E, h0[:, None]), E, x
    E = torch.exp_(delta.cumsum(1)[..., None] * A)  # (b, T, G, H, N)
    w = torch.div(x, E)
    states = _prefix_sum(w, upper=False)
    states.add_(h0[:, None]).mul_(E)
    return states, E, x


def _slice(t: Tensor, varies: bool, t0: int, t1: int) -> Tensor:
    return t[:, t0:t1] if varies else t


class _ChunkedScan(torch.autograd.Function):
    """Core scan y_t = sum_n C_t h_t on normalised inputs (see the layout comment above).

    Inputs u, delta: (b, D, L); A: (G, H, N); B, C in the chunk layout. Outputs y (b, D, L)
    and the last state (b, G, H, N).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        b_varies: bool,
        c_varies: bool,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        G, H, dstate = A.shape
        batch, _, length = u.shape
        u_t = u.transpose(1, 2).contiguous().view(batch, length, G, H)  # (b, L, G, H)
        delta_t = delta.transpose(1, 2).contiguous().view(batch, length, G, H)
        h = u.new_zeros(batch, G, H, dstate)  # (b, G, H, N)
        y = u.new_empty(batch, length, G, H)  # (b, L, G, H)
        bounds = [(t0, min(t0 + chunk, length)) for t0 in range(0, length, chunk)]
        starts = u.new_empty(len(bounds), batch, G, H, dstate)  # chunk start states
        for k, (t0, t1) in enumerate(bounds):
            starts[k] = h
            states, _, _ = _chunk_states(
                h, delta_t[:, t0:t1], u_t[:, t0:t1], A, _slice(B, b_varies, t0, t1)
            )
            y[:, t0:t1] = _contract_n(states, _slice(C, c_varies, t0, t1), c_varies)
            h = states[:, -1]
        ctx.save_for_backward(u_t, delta_t, A, B, C, starts)
        ctx.b_varies, ctx.c_varies, ctx.bounds = b_varies, c_varies, bounds  # type: ignore[attr-defined]
        y = y.reshape(batch, length, G * H).transpose(1, 2).contiguous()  # (b, D, L)
        return y, h.clone()

    @staticmethod
    def backward(ctx, gy: Tensor, glast: Tensor | None):  # type: ignore[override]
        with autocast_off(gy.device.type):  # a backward called inside autocast stays exact
            return _adjoint(ctx, gy, glast)


def _adjoint(ctx, gy: Tensor, glast: Tensor | None) -> tuple[Tensor | None, ...]:
    """The backward pass of :class:`_ChunkedScan` (the adjoint scan, see the comment above)."""
    u, delta, A, B, C, starts = ctx.saved_tensors  # u, delta: (b, L, G, H)
    b_varies, c_varies = ctx.b_varies, ctx.c_varies
    batch, length, G, H = u.shape
    gy = gy.transpose(1, 2).contiguous().view(batch, length, G, H)  # (b, L, G, H)
    gu = torch.empty_like(u)
    gdelta = torch.empty_like(delta)
    gA = torch.zeros_like(A)
    gB = torch.zeros_like(B)
    gC = torch.zeros_like(C)
    lam_in = torch.zeros_like(starts[0]) if glast is None else glast.to(u.dtype)
    for k in range(len(ctx.bounds) - 1, -1, -1):
        t0, t1 = ctx.bounds[k]
        steps = t1 - t0
        d_c, u_c, gy_c = delta[:, t0:t1], u[:, t0:t1], gy[:, t0:t1]  # (b, T, G, H)
        Bc, Cc = _slice(B, b_varies, t0, t1), _slice(C, c_varies, t0, t1)
        states, E, x = _chunk_states(starts[k], d_c, u_c, A, Bc)
        c = gy_c[..., None] * Cc  # (b, T, G, H, N)
        if steps == 1:
            lam = c.add_(lam_in[:, None])
        else:
            lam = _prefix_sum(c.mul_(E), upper=True)  # suffix sums over T
            lam.addcmul_(E[:, -1:], lam_in[:, None]).div_(E)
        lam_in = E[:, 0] * lam[:, 0]
        gC_c = _contract_d(gy_c, states, Cc, c_varies)
        gB_c = _contract_d(d_c * u_c, lam, Bc, b_varies)
        if c_varies:
            gC[:, t0:t1] = gC_c
        else:
            gC += gC_c
        if b_varies:
            gB[:, t0:t1] = gB_c
        else:
            gB += gB_c
        lam_b = _contract_n(lam, Bc, b_varies)  # (b, T, G, H)
        gu[:, t0:t1] = d_c * lam_b
        p = states.sub_(x).mul_(lam)  # lam_t * alpha_t * h_{t-1}, (b, T, G, H, N)
        gdelta[:, t0:t1] = torch.addcmul((p * A).sum(-1), u_c, lam_b)
        gA += (p * d_c[..., None]).sum((0, 1))
    gu = gu.reshape(batch, length, G * H).transpose(1, 2)  # (b, D, L)
    gdelta = gdelta.reshape(batch, length, G * H).transpose(1, 2)
    return gu, gdelta, gA, gB, gC, None, None, None


def _normalise_bc(t: Tensor, G: int, H: int, cdt: torch.dtype) -> tuple[Tensor, bool]:
    """B or C in the chunk layout (see above) and whether it varies along L."""
    t = t.to(cdt)
    if t.dim() == 2:  # (D, N) -> (G, H, N)
        return t.reshape(G, H, t.shape[-1]), False
    if t.dim() == 3:  # (b, N, L) -> (b, L, 1, 1, N)
        return t.transpose(1, 2)[:, :, None, None].contiguous(), True
    t = t.repeat_interleave(G // t.shape[1], dim=1)  # (b, G, N, L)
    return t.permute(0, 3, 1, 2)[:, :, :, None].contiguous(), True  # (b, L, G, 1, N)


def selective_scan_chunked(
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
    chunk: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The project's scan in plain PyTorch (chunked, hand-written backward), on any device.

    Arguments and outputs as :func:`entitwist.ops.selective_scan_fn`, which runs this scan
    for every input mamba-ssm's CUDA kernel does not take. ``chunk`` fixes the chunk length
    (default: chosen per call, see :func:`choose_chunk`).
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    with autocast_off(u.device.type):  # fp32 math even inside an autocast region
        return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk)


def _scan(
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
    chunk: int | None,
) -> Tensor | tuple[Tensor, Tensor]:
    dtype_in = u.dtype
    cdt = compute_dtype(u)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    u = u.to(cdt)  # (batch, D, L)
    delta = delta.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(cdt)
    G = 1
    for t in (B, C):
        if t.dim() == 4:
            G = math.lcm(G, t.shape[1])
    H = dim // G
    Bn, b_varies = _normalise_bc(B, G, H, cdt)
    Cn, c_varies = _normalise_bc(C, G, H, cdt)
    if chunk is None:
        chunk = choose_chunk(delta, A)
    y, last = _ChunkedScan.apply(
        u, delta, A.reshape(G, H, dstate), Bn, Cn, b_varies, c_varies, chunk
    )  # (batch, D, L), (batch, G, H, N)
    out = y if D is None else y + u * D.to(cdt)[:, None]
    if z is not None:
        out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, last.reshape(batch, dim, dstate)) if return_last_state else out
