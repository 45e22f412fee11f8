"""The project's selective scan in PyTorch: chunked, one fused step per time step, adjoint backward.

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
# Inside a chunk of T steps everything that does not depend on the state is computed for all
# steps at once: the decays a_t = exp(delta_t A) and the inputs x_t = delta_t B_t u_t. The
# recurrence h_t = a_t h_{t-1} + x_t is then one fused multiply-add per step, written over x
# in place (``addcmul_``), and y_t = sum_n C_t h_t is one contraction for the chunk. This is
# the recurrence itself (no ratios of cumulative decays), so any decay, however stiff, is
# exact, and the chunk length only sets the working memory: chunk tensors of about 1 MiB stay
# in the CPU's cache.
#
# Backward is the adjoint scan in reverse time with the same chunks: with lam_t = dLoss/dh_t
# and c_t = C_t * dLoss/dy_t,
#   lam_t = c_t + a_{t+1} lam_{t+1}
# (one fused multiply-add per step, over c in place), where the chunk's last step adds the
# adjoint carried in from the next chunk (already multiplied by that chunk's first decay).
# Then, with p_t = lam_t a_t h_{t-1}:
#   dC_t = dy_t h_t,  dB_t = lam_t delta_t u_t,  du_t = delta_t sum_n lam_t B_t,
#   d delta_t = u_t sum_n lam_t B_t + sum_n A p_t,  dA = sum delta_t p_t.
# States are recomputed chunk by chunk from the chunk starts saved by the forward pass, so the
# memory is O(batch * D * N * (L / T + T)), never O(batch * D * L * N).
# ---------------------------------------------------------------------------------------------

_CHUNK_ELEMENTS = 1 << 18  # one (batch, T, D, N) chunk tensor: about 1 MiB in float32
_MIN_CHUNK, _MAX_CHUNK = 8, 256


def choose_chunk(batch: int, dim: int, dstate: int, length: int) -> int:
    """Chunk length T: the power of two (8..256, at most ``length``) that keeps one
    (batch, T, D, N) chunk tensor near 2**18 elements (1 MiB in float32: cache-sized)."""
    per_step = max(1, batch * dim * dstate)
    size = _MIN_CHUNK
    while size < _MAX_CHUNK and 2 * size * per_step <= _CHUNK_ELEMENTS:
        size *= 2
    return max(1, min(size, length))


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


def _chunk_states(
    h0: Tensor, delta: Tensor, u: Tensor, A: Tensor, Bc: Tensor
) -> tuple[Tensor, Tensor]:
    """States of one chunk from its start state.

    Args:
        h0: (b, G, H, N) state before the chunk.
        delta, u: (b, T, G, H).
        A: (G, H, N).
        Bc: B for the chunk, broadcastable to (b, T, G, H, N).

    Returns:
        states h_t (b, T, G, H, N) and the decays a_t = exp(delta_t A) (b, T, G, H, N).
    """
    a = torch.exp_(delta.unsqueeze(-1) * A)  # (b, T, G, H, N)
    h = (delta * u).unsqueeze(-1) * Bc  # x_t = delta_t B_t u_t, turned into h_t in place
    h[:, 0].addcmul_(a[:, 0], h0)
    for t in range(1, h.shape[1]):
        h[:, t].addcmul_(a[:, t], h[:, t - 1])
    return h, a


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
            states, _ = _chunk_states(
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
        d_c, u_c, gy_c = delta[:, t0:t1], u[:, t0:t1], gy[:, t0:t1]  # (b, T, G, H)
        Bc, Cc = _slice(B, b_varies, t0, t1), _slice(C, c_varies, t0, t1)
        states, a = _chunk_states(starts[k], d_c, u_c, A, Bc)
        lam = gy_c.unsqueeze(-1) * Cc  # c_t, turned into lam_t in place, (b, T, G, H, N)
        lam[:, -1].add_(lam_in)
        for t in range(lam.shape[1] - 2, -1, -1):
            lam[:, t].addcmul_(a[:, t + 1], lam[:, t + 1])
        lam_in = a[:, 0] * lam[:, 0]
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
        p = a  # p_t = lam_t a_t h_{t-1}, over a in place (a is not needed any more)
        p[:, 1:].mul_(states[:, :-1])
        p[:, 0].mul_(starts[k])
        p.mul_(lam)
        gA += (p * d_c.unsqueeze(-1)).sum((0, 1))
        gdelta[:, t0:t1] = torch.addcmul(p.mul_(A).sum(-1), u_c, lam_b)
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
    (default: :func:`choose_chunk`); it changes the working memory, not the result.
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
        chunk = choose_chunk(batch, dim, dstate, length)
    y, last = _ChunkedScan.apply(
        u, delta, A.reshape(G, H, dstate), Bn, Cn, b_varies, c_varies, chunk
    )  # (batch, D, L), (batch, G, H, N)
    out = y if D is None else y + u * D.to(cdt)[:, None]
    if z is not None:
        out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, last.reshape(batch, dim, dstate)) if return_last_state else out
