"""Tri-modal feature cube, paper section III-C, eq. 5-6.

- eq. 5, local correlation: ``T^cor = (F^in W0)(T^ori W1)^T / sqrt(d)``, (B, N, H, W), with
  the maps of padded words set to 0;
- the local textual embedding ``T^loc`` = one 1x1 convolution N -> d on ``T^cor``;
- eq. 6: ``F^cube = [F^in + G ; T^loc]``, (B, 2d, H, W).

``(F^in W0) . (T W1)_n = F^in . (W0 (T W1)_n)``, so eq. 5 is evaluated by moving W0 to the
text side: N x d x d multiply-adds per image instead of H x W x d x d.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from entitwist.errors import InputError

__all__ = ["TriModalCube"]


class TriModalCube(nn.Module):
    """Build F^cube from visual features, entity guidance and word embeddings.

    Args:
        dim: d, visual channels of the stage.
        text_dim: d_t, width of the word embeddings T^ori.
        n_tokens: N, the number of word slots (``text.max_tokens``); shorter inputs are
            padded with empty (masked) words.

    The 1x1 kernel of the T^loc convolution is our choice (the paper says "a single
    convolutional layer"): it keeps T^loc a per-position reading of the correlation map.
    """

    def __init__(self, dim: int, text_dim: int, n_tokens: int) -> None:
        super().__init__()
        self.dim = dim
        self.text_dim = text_dim
        self.n_tokens = n_tokens
        self.w0 = nn.Linear(dim, dim, bias=False)  # W0^cor (d x d)
        self.w1 = nn.Linear(text_dim, dim, bias=False)  # W1^cor (d_t x d)
        self.local = nn.Conv2d(n_tokens, dim, kernel_size=1)  # T^cor -> T^loc

    def correlation(self, f_in: Tensor, t_ori: Tensor, text_mask: Tensor) -> Tensor:
        """Eq. 5: T^cor (B, N, H, W); padded words (mask 0) give all-zero maps.

        Args:
            f_in: (B, d, H, W).
            t_ori: (B, N, d_t).
            text_mask: (B, N), 1 on real words, 0 on padding.
        """
        t = self.w1(t_ori)  # (B, N, d) = T^ori W1
        # (F W0) t_n = F (W0^T t_n); nn.Linear stores W0^T, so W0^T t_n = t_n @ weight.
        t = t @ self.w0.weight  # (B, N, d)
        cor = torch.einsum("bnd,bdhw->bnhw", t, f_in) / math.sqrt(self.dim)  # (B, N, H, W)
        return cor * text_mask.to(cor.dtype)[:, :, None, None]

    def forward(
        self, f_in: Tensor, t_ori: Tensor, text_mask: Tensor, g: Tensor | None = None
    ) -> Tensor:
        """Eq. 6: F^cube = [F^in + G ; T^loc].

        Args:
            f_in: F^in (B, d, H, W).
            t_ori: T^ori (B, N, d_t), N <= n_tokens.
            text_mask: (B, N).
            g: entity guidance G (B, d, H, W), or None for G = 0.

        Returns:
            F^cube (B, 2d, H, W).
        """
        t_ori, text_mask = pad_words(t_ori, text_mask, self.n_tokens)
        t_loc = self.local(self.correlation(f_in, t_ori, text_mask))  # (B, d, H, W)
        vis = f_in if g is None else f_in + g
        return torch.cat([vis, t_loc], dim=1)


def pad_words(t_ori: Tensor, text_mask: Tensor, n_tokens: int) -> tuple[Tensor, Tensor]:
    """Pad (B, N, d_t) word embeddings and their (B, N) mask with masked slots to ``n_tokens``."""
    n = t_ori.shape[1]
    if n > n_tokens:
        raise InputError(
            f"text has {n} tokens but the model takes at most {n_tokens}; truncate it with the tokenizer"
        )
    if n < n_tokens:
        t_ori = torch.cat(
            [t_ori, t_ori.new_zeros(t_ori.shape[0], n_tokens - n, t_ori.shape[2])], dim=1
        )
        text_mask = torch.cat(
            [text_mask, text_mask.new_zeros(text_mask.shape[0], n_tokens - n)], dim=1
        )
    return t_ori, text_mask
