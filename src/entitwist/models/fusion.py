"""One fusion stage of Enti-TwistNet: SEG -> tri-modal cube -> DAT (DESIGN.md section 2).

Every ablation of the paper is a :class:`~entitwist.config.FusionConfig` value:

- ``seg`` off: G = 0 and no entity input is needed (``entity_area`` is ignored);
- ``self_reasoning`` off: SEG's priors are not refined (Table V);
- ``dat`` in ``sp_sa`` / ``sa_sp`` / ``parallel`` / ``sp`` / ``sa`` (Table VI), with
  ``propagation`` (Fig. 7) and ``spatial`` (``"mamba"`` = ReMamber-V);
- ``dat="none"``: the paper's baseline, plain cross-attention of the visual map to the
  words, ``F^out = Proj(CA(Q = F^in + G, K/V = projected words, masked) + F^in + G)``;
  with ``seg`` off this is the Table IV baseline, with ``seg`` on the "SEG only" row.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from entitwist.config import FusionConfig
from entitwist.errors import InputError
from entitwist.models.cube import TriModalCube
from entitwist.models.dat import DAT, CrossAttention, ProjBlock
from entitwist.models.seg import SEG

__all__ = ["FusionStage"]


class FusionStage(nn.Module):
    """SEG + tri-modal cube + DAT for one encoder stage.

    Args:
        dim: d, channels of the stage's visual features.
        text_dim: d_t, width of the word embeddings T^ori.
        n_tokens: N, word slots (``text.max_tokens``).
        config: the fusion configuration (all ablations).
        stage_index: 0..3, selects the per-stage entries (``attn_heads``, ``attn_kv_stride``).

    ``forward(f_in (B, d, H, W), t_ori (B, N, d_t), text_mask (B, N),
    entity_area (B, K, H, W) | None) -> (f_out (B, d, H, W), extras)``; ``extras`` holds
    ``"cube"`` (F^cube, B x 2d x H x W) and ``"sem"`` (F^sem after channel propagation)
    when DAT is on, and is empty for the baseline.
    """

    def __init__(
        self, dim: int, text_dim: int, n_tokens: int, config: FusionConfig, stage_index: int = 0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.text_dim = text_dim
        self.n_tokens = n_tokens
        self.stage_index = stage_index
        self.seg = SEG(dim, self_reasoning=config.self_reasoning) if config.seg else None
        if config.dat == "none":
            self.cube = None
            self.dat = None
            self.attention = CrossAttention(dim, text_dim, config.attn_heads[stage_index])
            self.proj = ProjBlock(dim)
        else:
            self.cube = TriModalCube(dim, text_dim, n_tokens)
            self.dat = DAT(dim, config, stage_index)
            self.attention = None  # type: ignore[assignment]
            self.proj = None  # type: ignore[assignment]

    def forward(
        self, f_in: Tensor, t_ori: Tensor, text_mask: Tensor, entity_area: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        self._check(f_in, t_ori, text_mask)
        g = self.seg(f_in, entity_area) if self.seg is not None else None  # (B, d, H, W)
        if self.dat is None:  # baseline cross-attention
            b, d, h, w = f_in.shape
            x = f_in if g is None else f_in + g  # (B, d, H, W)
            q = x.flatten(2).transpose(1, 2)  # (B, HW, d)
            ca = self.attention(q, t_ori, key_mask=text_mask)  # (B, HW, d)
            f_out = self.proj(ca.transpose(1, 2).reshape(b, d, h, w) + x)
            return f_out, {}
        cube = self.cube(f_in, t_ori, text_mask, g)  # type: ignore[misc]  # (B, 2d, H, W)
        f_out, sem = self.dat(cube)
        return f_out, {"cube": cube, "sem": sem}

    def _check(self, f_in: Tensor, t_ori: Tensor, text_mask: Tensor) -> None:
        if f_in.dim() != 4 or f_in.shape[1] != self.dim:
            raise InputError(
                f"fusion stage {self.stage_index} expects (B, {self.dim}, H, W) features, got {tuple(f_in.shape)}"
            )
        b = f_in.shape[0]
        if t_ori.dim() != 3 or t_ori.shape[0] != b or t_ori.shape[2] != self.text_dim:
            raise InputError(
                f"word embeddings must be (B={b}, N, {self.text_dim}), got {tuple(t_ori.shape)}; check the text encoder width"
            )
        if text_mask.shape != t_ori.shape[:2]:
            raise InputError(
                f"text attention mask {tuple(text_mask.shape)} does not match the words {tuple(t_ori.shape[:2])}"
            )
        if t_ori.shape[1] > self.n_tokens:
            raise InputError(
                f"text has {t_ori.shape[1]} tokens but the model takes at most {self.n_tokens}; truncate it with the tokenizer"
            )
        if b and not bool((text_mask != 0).any(dim=1).all()):
            raise InputError(
                "a sentence has no real token (attention mask all 0); give every sample a non-empty sentence"
            )
