"""Dual-phase Attention-Twisting (DAT), paper section III-D, eq. 7-10, and its ablations.

Two phases on the tri-modal cube F^cube (B, 2d, H, W):

- SP, cross-modal semantic propagation (eq. 7), :class:`SemanticPropagation`: the cube is
  resized bilinearly to a fixed s x s grid and read as a sequence of 2d *channel* tokens of
  s*s features each (ReMamber's channel scan). A bidirectional Mamba block scans along the
  channels; the result is resized back to H x W and added to the cube: F^sem. Variants
  (paper Fig. 7): ``"mamba"``, ``"self_attention"`` (channel-wise self-attention over the
  same tokens) and ``"none"`` (F^sem = F^cube).
- SA, entity-aware spatial attention twist (eq. 8-10), :class:`SpatialCrossAttention`:
  F^vis = F^sem[:, :d], F^txt = F^sem[:, d:]; multi-head attention over the H*W positions
  with Q from F^vis and K, V from F^txt, through
  ``torch.nn.functional.scaled_dot_product_attention`` (fused flash / memory-efficient
  kernels on CPU and GPU, so the (HW)^2 matrix is never materialised);
  F^out = Proj(CA + F^vis).

Orders (paper Table VI), with SP(x) the propagated cube, CA(x) the attention term computed
from x's visual half (Q) and text half (K, V), and x_vis = x[:, :d]:

- ``sp_sa`` (paper):  F^sem = SP(F^cube);                     F^out = Proj(CA(F^sem) + F^sem_vis)
- ``sa_sp``:          X = [F^cube_vis + CA(F^cube) ; F^cube_txt]; F^sem = SP(X); F^out = Proj(F^sem_vis)
- ``parallel``:       F^sem = SP(F^cube);                     F^out = Proj(F^sem_vis + CA(F^cube))
  (both paths read the cube; their outputs are summed; the visual residual F^cube_vis
  enters once, through F^sem = F^cube + propagation)
- ``sp``:             F^sem = SP(F^cube);                     F^out = Proj(F^sem_vis)
- ``sa``:             F^sem = F^cube;                         F^out = Proj(CA(F^cube) + F^cube_vis)

``spatial="mamba"`` (ReMamber-V) replaces CA(x) by :class:`SpatialMamba`: the H*W positions
(row-major) are the tokens, each the 2d channels of x layer-normed and projected to d, and
a bidirectional Mamba block scans them; its d-channel output takes CA's place above.

Proj (eq. 10, "a 1x1 convolution block") is :class:`ProjBlock`: 1x1 conv (no bias) ->
GroupNorm -> GELU. GroupNorm rather than BatchNorm, so that batch-1 inference and small
training batches behave the same.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entitwist.config import FusionConfig
from entitwist.errors import ConfigError
from entitwist.models.mamba import BiMamba

__all__ = [
    "DAT",
    "ChannelSelfAttention",
    "CrossAttention",
    "ProjBlock",
    "SemanticPropagation",
    "SpatialCrossAttention",
    "SpatialMamba",
]

_USES_SP = ("sp_sa", "sa_sp", "parallel", "sp")
_USES_SA = ("sp_sa", "sa_sp", "parallel", "sa")


class ProjBlock(nn.Module):
    """Proj of eq. 10: 1x1 conv (no bias) -> GroupNorm -> GELU; (B, d, H, W) -> same."""

    def __init__(self, dim: int, groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.norm = nn.GroupNorm(math.gcd(groups, dim), dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class ChannelSelfAttention(nn.Module):
    """Multi-head self-attention over a token sequence: (B, L, f) -> (B, L, f).

    Used by SP's ``"self_attention"`` variant with the 2d channels as tokens and their
    s*s resized values as features.
    """

    def __init__(self, features: int, heads: int) -> None:
        super().__init__()
        if features % heads:
            raise ConfigError(
                f"channel self-attention: {heads} heads do not divide {features} features"
            )
        self.heads = heads
        self.qkv = nn.Linear(features, 3 * features)
        self.out = nn.Linear(features, features)

    def forward(self, x: Tensor) -> Tensor:
        b, n, f = x.shape
        qkv = (
            self.qkv(x).view(b, n, 3, self.heads, f // self.heads).permute(2, 0, 3, 1, 4)
        )  # (3, B, h, L, f/h)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, L, f/h)
        return self.out(y.transpose(1, 2).reshape(b, n, f))


class SemanticPropagation(nn.Module):
    """SP, eq. 7: F^sem = F^cube + Up(Mixer(LN(Down(F^cube)))) along the channel axis.

    Args:
        scan_size: s; the cube is resized to s x s, giving tokens of s*s features.
        d_state: SSM state size of the Mamba block.
        mode: ``"mamba"`` (bidirectional selective scan over the 2d channel tokens),
            ``"self_attention"`` (channel-wise self-attention) or ``"none"`` (identity).
        resize: Down: ``"bilinear"`` (the paper/ReMamber reading; no antialiasing, so each
            grid cell reads about 4 positions) or ``"area"`` (the mean of each cell,
            ``adaptive_avg_pool2d``). Up is bilinear either way.
    """

    def __init__(
        self, scan_size: int = 16, d_state: int = 16, mode: str = "mamba", resize: str = "bilinear"
    ) -> None:
        super().__init__()
        if resize not in ("bilinear", "area"):
            raise ConfigError(f"fusion.scan_resize={resize!r} is unknown; use bilinear or area")
        self.scan_size = scan_size
        self.mode = mode
        self.resize = resize
        features = scan_size * scan_size
        if mode == "none":
            self.norm: nn.Module | None = None
            self.mixer: nn.Module | None = None
            return
        self.norm = nn.LayerNorm(features)
        if mode == "mamba":
            self.mixer = BiMamba(d_model=features, d_state=d_state)
        elif mode == "self_attention":
            self.mixer = ChannelSelfAttention(
                features, heads=max(1, features // 64) if features % 64 == 0 else 1
            )
        else:
            raise ConfigError(
                f"fusion.propagation={mode!r} is unknown; use mamba, self_attention or none"
            )

    def forward(self, cube: Tensor) -> Tensor:
        """(B, 2d, H, W) -> F^sem (B, 2d, H, W)."""
        if self.mixer is None:
            return cube
        b, c, h, w = cube.shape
        s = self.scan_size
        if self.resize == "area":
            x = F.adaptive_avg_pool2d(cube, (s, s))  # (B, 2d, s, s), every position counts
        else:
            x = F.interpolate(cube, size=(s, s), mode="bilinear", align_corners=False)
        x = self.mixer(self.norm(x.flatten(2)))  # type: ignore[misc]  # (B, 2d, s*s): channels are the sequence
        x = F.interpolate(x.view(b, c, s, s), size=(h, w), mode="bilinear", align_corners=False)
        return cube + x


class CrossAttention(nn.Module):
    """Multi-head cross-attention CA(Q, K, V) of eq. 9 on token sequences.

    ``q`` (B, L, d) and ``kv`` (B, S, d_kv) are layer-normed, projected by W_Q, W_K, W_V,
    attended with ``scaled_dot_product_attention`` and projected back by W_O.

    Args:
        dim: d, query and output width.
        kv_dim: width of the key/value tokens.
        heads: attention heads (must divide d).
    """

    def __init__(self, dim: int, kv_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(
                f"{heads} attention heads do not divide the stage width {dim}; pick a divisor"
            )
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.q = nn.Linear(dim, dim)  # W_Q
        self.k = nn.Linear(kv_dim, dim)  # W_K
        self.v = nn.Linear(kv_dim, dim)  # W_V
        self.out = nn.Linear(dim, dim)  # W_O

    def forward(self, q: Tensor, kv: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """q (B, L, d), kv (B, S, d_kv), key_mask (B, S) (1/True = attend) -> (B, L, d)."""
        b, n_q, d = q.shape
        n_k = kv.shape[1]
        h = self.heads
        kv = self.norm_kv(kv)
        qh = self.q(self.norm_q(q)).view(b, n_q, h, d // h).transpose(1, 2)  # (B, h, L, d/h)
        kh = self.k(kv).view(b, n_k, h, d // h).transpose(1, 2)  # (B, h, S, d/h)
        vh = self.v(kv).view(b, n_k, h, d // h).transpose(1, 2)  # (B, h, S, d/h)
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # (B, h, L, d/h)
        return self.out(y.transpose(1, 2).reshape(b, n_q, d))


class SpatialCrossAttention(nn.Module):
    """SA, eq. 8-9: CA over the H*W positions, Q from F^vis, K and V from F^txt.

    Args:
        dim: d.
        heads: attention heads.
        kv_stride: when > 1, F^txt is average-pooled by this stride (ceil) before it gives
            K and V: attention costs HW * HW / stride^2 instead of (HW)^2. 1 = the paper.
    """

    def __init__(self, dim: int, heads: int, kv_stride: int = 1) -> None:
        super().__init__()
        if kv_stride < 1:
            raise ConfigError(
                f"fusion.attn_kv_stride entry {kv_stride} must be >= 1 (1 = every position)"
            )
        self.kv_stride = kv_stride
        self.attention = CrossAttention(dim, dim, heads)

    def forward(self, vis: Tensor, txt: Tensor) -> Tensor:
        """vis, txt (B, d, H, W) -> CA (B, d, H, W)."""
        b, d, h, w = vis.shape
        if self.kv_stride > 1:
            size = (math.ceil(h / self.kv_stride), math.ceil(w / self.kv_stride))
            txt = F.adaptive_avg_pool2d(txt, size)  # (B, d, H/s, W/s)
        q = vis.flatten(2).transpose(1, 2)  # (B, HW, d)
        kv = txt.flatten(2).transpose(1, 2)  # (B, S, d)
        y = self.attention(q, kv)  # (B, HW, d)
        return y.transpose(1, 2).reshape(b, d, h, w)


class SpatialMamba(nn.Module):
    """ReMamber-V's spatial phase: a bidirectional Mamba scan over the H*W positions.

    Tokens are positions in row-major order; each token is the 2d channels of [vis; txt],
    layer-normed and projected to d. Output (B, d, H, W) takes the place of CA.
    """

    def __init__(self, dim: int, d_state: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.inp = nn.Linear(2 * dim, dim)
        self.scan = BiMamba(d_model=dim, d_state=d_state)

    def forward(self, vis: Tensor, txt: Tensor) -> Tensor:
        b, d, h, w = vis.shape
        x = torch.cat([vis, txt], dim=1).flatten(2).transpose(1, 2)  # (B, HW, 2d)
        y = self.scan(self.inp(self.norm(x)))  # (B, HW, d)
        return y.transpose(1, 2).reshape(b, d, h, w)


class DAT(nn.Module):
    """Dual-phase Attention-Twisting for one stage; the order and variants come from config.

    Args:
        dim: d; the cube has 2d channels.
        config: :class:`~entitwist.config.FusionConfig` (``dat``, ``propagation``,
            ``spatial``, ``scan_size``, ``d_state``, ``attn_heads``, ``attn_kv_stride``).
        stage_index: which entry of the per-stage tuples to use.

    ``forward(cube (B, 2d, H, W)) -> (F^out (B, d, H, W), F^sem (B, 2d, H, W))``.
    """

    def __init__(self, dim: int, config: FusionConfig, stage_index: int = 0) -> None:
        super().__init__()
        if config.dat not in _USES_SP + _USES_SA:
            raise ConfigError(
                f"DAT needs fusion.dat in {', '.join(_USES_SP + ('sa',))}, got {config.dat!r}"
            )
        self.dim = dim
        self.order = config.dat
        self.sp: Any = (  # None without SP (see self.order)
            SemanticPropagation(
                config.scan_size, config.d_state, config.propagation, config.scan_resize
            )
            if self.order in _USES_SP
            else None
        )
        self.spatial: nn.Module | None = None
        if self.order in _USES_SA:
            if config.spatial == "attention":
                self.spatial = SpatialCrossAttention(
                    dim, config.attn_heads[stage_index], config.attn_kv_stride[stage_index]
                )
            elif config.spatial == "mamba":
                self.spatial = SpatialMamba(dim, config.d_state)
            else:
                raise ConfigError(
                    f"fusion.spatial={config.spatial!r} is unknown; use attention or mamba"
                )
        self.proj = ProjBlock(dim)

    def sa(self, x: Tensor) -> Tensor:
        """The SA term (spatial cross-attention) from x's halves: (B, 2d, H, W) -> (B, d, H, W)."""
        return self.spatial(x[:, : self.dim], x[:, self.dim :])  # type: ignore[misc]  # set when SA is on

    def forward(self, cube: Tensor) -> tuple[Tensor, Tensor]:
        d = self.dim
        if self.order == "sp_sa":
            sem = self.sp(cube)
            out = self.sa(sem) + sem[:, :d]
        elif self.order == "sa_sp":
            x = torch.cat([cube[:, :d] + self.sa(cube), cube[:, d:]], dim=1)
            sem = self.sp(x)
            out = sem[:, :d]
        elif self.order == "parallel":
            sem = self.sp(cube)
            out = sem[:, :d] + self.sa(cube)
        elif self.order == "sp":
            sem = self.sp(cube)
            out = sem[:, :d]
        else:  # "sa"
            sem = cube
            out = self.sa(cube) + cube[:, :d]
        return self.proj(out), sem
