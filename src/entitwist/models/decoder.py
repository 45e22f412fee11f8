"""Convolution-based decoder, paper section III-E, eq. 11-14 (ReMamber-style).

With F_0..F_3 the language-referred features of the *deepest* to the shallowest stage
(the paper counts from the top: F_0^out is stage 4, 1/32 of the input):

    F^_0 = R(M_0(F_0))                    (eq. 11)
    F^_1 = R(M_1([F^_0 ; F_1]))           (eq. 12)
    F^_2 = R(M_2([F^_1 ; F_2]))           (eq. 13)
    Y    = N([F^_2 ; F_3])                (eq. 14)

M_i is a residual block: 1x1 conv-BN-GELU, depthwise 3x3 conv-BN-GELU, 1x1 conv-BN, added
to a 1x1 projection of its input when the widths differ (identity otherwise), then GELU.
R is x2 bilinear upsampling. N, the head, runs at 1/4 of the input: ``head_layers`` 3x3
conv-BN-ReLU layers and a 1x1 conv to the 2 classes; the logits are upsampled x4
bilinearly to the input size (as LAVT does), by :class:`Decoder` when given ``out_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entitwist.config import DecoderConfig


def _conv_bn(cin: int, cout: int, k: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class DecoderBlock(nn.Module):
    """M_i: (B, cin, H, W) -> (B, cout, H, W), inverted-bottleneck residual block."""

    def __init__(self, cin: int, cout: int, expansion: int = 1) -> None:
        super().__init__()
        hidden = cout * expansion
        self.body = nn.Sequential(
            *_conv_bn(cin, hidden, 1),
            nn.GELU(),
            *_conv_bn(hidden, hidden, 3, groups=hidden),
            nn.GELU(),
            *_conv_bn(hidden, cout, 1),
        )
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(*_conv_bn(cin, cout, 1))
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class SegmentationHead(nn.Module):
    """N of eq. 14: ``layers`` x (3x3 conv-BN-ReLU), then 1x1 conv to ``num_classes``."""

    def __init__(self, cin: int, width: int, layers: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        body: list[nn.Module] = []
        for i in range(layers):
            body += [*_conv_bn(cin if i == 0 else width, width, 3), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*body)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


class Decoder(nn.Module):
    """Top-down decoder over the four stage outputs.

    Args:
        stage_dims: channels of the stage outputs, shallowest first (128, 256, 512, 1024).
        config: widths.
        num_classes: 2.

    ``forward(features, out_size=None, return_features=False)``: ``features`` are the F^out
    of the stages, shallowest first, (B, d_t, H/2^(t+2), W/2^(t+2)); returns logits
    (B, 2, H/4, W/4), or at ``out_size`` (bilinear) when given; with ``return_features``
    also the head's input, (B, :attr:`feature_dim`, H/4, W/4) (what the entity head pools).
    """

    def __init__(
        self, stage_dims: Sequence[int], config: DecoderConfig | None = None, num_classes: int = 2
    ) -> None:
        super().__init__()
        config = config or DecoderConfig()
        dims = list(stage_dims)[::-1]  # deepest first: F_0 .. F_3 in the paper's numbering
        w = config.width
        blocks = [DecoderBlock(dims[0], w, config.expansion)]
        for dim in dims[1:-1]:
            blocks.append(DecoderBlock(w + dim, w, config.expansion))
        self.blocks = nn.ModuleList(blocks)  # M_0 .. M_{n-2}
        self.feature_dim = w + dims[-1]
        self.head = SegmentationHead(
            w + dims[-1], config.head_width, config.head_layers, num_classes
        )

    def forward(
        self,
        features: Sequence[Tensor],
        out_size: tuple[int, int] | None = None,
        return_features: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        feats = list(features)[::-1]  # deepest first
        x = self.blocks[0](feats[0])  # eq. 11, before R
        for block, skip in zip(self.blocks[1:], feats[1:-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)  # R
            x = block(torch.cat([x, skip], dim=1))  # eq. 12-13
        x = F.interpolate(x, size=feats[-1].shape[-2:], mode="bilinear", align_corners=False)  # R
        x = torch.cat([x, feats[-1]], dim=1)  # (B, feature_dim, H/4, W/4)
        logits = self.head(x)  # eq. 14, (B, 2, H/4, W/4)
        if out_size is not None:
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return (logits, x) if return_features else logits
