"""Mamba blocks: the one-directional :class:`Mamba` layer and the bidirectional :class:`BiMamba`.

The layer follows mamba-ssm's ``Mamba`` (``mamba_simple.py``): ``in_proj`` to ``(x, z)``, a
depthwise causal ``conv1d`` + SiLU on ``x``, ``x_proj`` to ``(dt, B, C)``, ``dt_proj``, the
selective scan with ``A = -exp(A_log)``, the ``D`` skip and the ``silu(z)`` gate, then
``out_proj``. The scan is :func:`entitwist.ops.selective_scan_fn` (mamba-ssm's CUDA kernel when
present, the project's PyTorch scan otherwise).

:class:`BiMamba` runs one such layer on the sequence and another on the reversed sequence and
sums the two outputs. The two directions have **separate parameters** (as in Vim and
ReMamber): the forward layer reads the past, the backward layer the future, and neither has to
compromise its projections, convolution or decay rates between the two.

``A_log`` and ``D`` carry ``_no_weight_decay = True`` so that optimisers can leave them out of
weight decay (mamba-ssm's convention); they are used in float32 whatever the module's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entitwist.errors import InputError
from entitwist.ops import selective_scan_fn

__all__ = ["BiMamba", "Mamba"]


class Mamba(nn.Module):
    """One-directional Mamba layer (selective state space model), (B, L, d_model) -> same.

    Args:
        d_model: width of the input and output tokens.
        d_state: state size ``N`` of the scan.
        d_conv: kernel size of the depthwise causal convolution.
        expand: inner width ``d_inner = expand * d_model``.
        dt_rank: rank of the step-size projection; ``"auto"`` is ``ceil(d_model / 16)``.
        dt_min, dt_max: range of the initial step sizes (log-uniform).
        dt_init_floor: smallest initial step size.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        *,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        if d_model <= 0 or d_state <= 0 or d_conv <= 0 or expand <= 0:
            raise InputError(
                "Mamba: d_model, d_state, d_conv and expand must be positive integers, got "
                f"{d_model}, {d_state}, {d_conv}, {expand}"
            )
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=True,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # Step-size init (mamba-ssm): weights ~ U(-r^-1/2, r^-1/2); the bias is the inverse
        # softplus of dt ~ log-uniform in [dt_min, dt_max], so softplus(bias) starts there.
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

        # S4D-real init: A = -(1, 2, ..., N) per channel. Keep A_log and D in fp32.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))  # (d_inner, N)
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D = nn.Parameter(torch.ones(self.d_inner))  # (d_inner,)
        self.D._no_weight_decay = True  # type: ignore[attr-defined]

    def forward(self, hidden: Tensor) -> Tensor:
        """Run the layer causally (position ``t`` sees ``0..t``).

        Args:
            hidden: (B, L, d_model).

        Returns:
            (B, L, d_model).
        """
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise InputError(
                f"Mamba: expected input (batch, length, {self.d_model}), got {tuple(hidden.shape)}"
            )
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :length])  # causal: drop the right padding
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L), bias in scan
        B = B.transpose(1, 2).contiguous()  # (B, N, L)
        C = C.transpose(1, 2).contiguous()  # (B, N, L)
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        y = selective_scan_fn(
            x.contiguous(),
            dt.contiguous(),
            A,
            B,
            C,
            self.D.float(),
            z=z.contiguous(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )  # (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)


class BiMamba(nn.Module):
    """Bidirectional Mamba: a forward and a backward :class:`Mamba` layer, outputs summed.

    Position ``t`` of the output sees the whole sequence: the forward layer covers ``0..t``,
    the backward layer (run on the reversed sequence, its output reversed back) ``t..L-1``.
    The directions have separate parameters. Arguments as for :class:`Mamba`.

    Shapes: (B, L, d_model) -> (B, L, d_model).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.forward_layer = Mamba(d_model, d_state, d_conv, expand, dt_rank)
        self.backward_layer = Mamba(d_model, d_state, d_conv, expand, dt_rank)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise InputError(
                f"BiMamba: expected input (batch, length, {self.d_model}), "
                f"got {tuple(hidden.shape)}"
            )
        out_fwd = self.forward_layer(hidden)  # (B, L, d_model)
        out_bwd = self.backward_layer(hidden.flip(1)).flip(1)  # (B, L, d_model)
        return out_fwd + out_bwd
