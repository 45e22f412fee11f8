"""Tests for entitwist.models.decoder (eq. 11-14)."""

from __future__ import annotations

import torch
from torch import nn

from entitwist.config import DecoderConfig
from entitwist.models.decoder import Decoder, DecoderBlock, SegmentationHead


def _features(b: int = 2, dims=(8, 16, 32, 64), size: int = 64) -> list[torch.Tensor]:
    return [
        torch.randn(b, d, size // 2 ** (t + 2), size // 2 ** (t + 2), requires_grad=True)
        for t, d in enumerate(dims)
    ]


def test_shapes_and_out_size() -> None:
    torch.manual_seed(0)
    dec = Decoder((8, 16, 32, 64), DecoderConfig(width=16, head_width=8)).eval()
    feats = _features()
    assert dec(feats).shape == (2, 2, 16, 16)  # 1/4 of 64
    assert dec(feats, out_size=(64, 64)).shape == (2, 2, 64, 64)


def test_upsampled_output_is_bilinear_x4_of_quarter_logits() -> None:
    dec = Decoder((8, 16, 32, 64), DecoderConfig(width=16, head_width=8)).eval()
    feats = _features()
    with torch.no_grad():
        quarter = dec(feats)
        full = dec(feats, out_size=(64, 64))
    ref = nn.functional.interpolate(quarter, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(full, ref)


def test_every_stage_reaches_the_logits() -> None:
    torch.manual_seed(0)
    dec = Decoder((8, 16, 32, 64), DecoderConfig(width=16, head_width=8, head_layers=2))
    feats = _features()
    dec(feats, out_size=(64, 64)).square().mean().backward()
    for f in feats:
        assert f.grad is not None and f.grad.abs().sum() > 0


def test_wiring_follows_eq_11_to_14() -> None:
    dec = Decoder((128, 256, 512, 1024), DecoderConfig(width=256, head_width=128))
    # M_0 reads stage 4 alone; M_1, M_2 read [previous ; stage 3 / stage 2]; N reads [.. ; stage 1]
    assert [b.body[0].in_channels for b in dec.blocks] == [1024, 256 + 512, 256 + 256]
    assert dec.head.body[0].in_channels == 256 + 128
    assert dec.head.classifier.out_channels == 2


def test_block_residual_is_identity_when_widths_match() -> None:
    block = DecoderBlock(16, 16)
    assert isinstance(block.shortcut, nn.Identity)
    # zero the body's last BN: the block reduces to GELU(x)
    nn.init.zeros_(block.body[-1].weight)
    block.eval()
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(block(x), nn.functional.gelu(x))
    assert not isinstance(DecoderBlock(8, 16).shortcut, nn.Identity)


def test_head_layers() -> None:
    head = SegmentationHead(12, 8, layers=3)
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in head.modules()) == 3
    assert head(torch.randn(1, 12, 6, 6)).shape == (1, 2, 6, 6)


def test_odd_sizes_still_align() -> None:
    dec = Decoder((8, 16, 32, 64), DecoderConfig(width=16, head_width=8)).eval()
    feats = [torch.randn(1, d, s, s) for d, s in zip((8, 16, 32, 64), (30, 15, 8, 4))]
    assert dec(feats, out_size=(120, 120)).shape == (1, 2, 120, 120)
