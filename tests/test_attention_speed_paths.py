"""The spatial attention's fast path against attention written out: softmax(QK^T/sqrt(d))V."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from entitwist.models.dat import CrossAttention, SpatialCrossAttention


def plain_attention(mod: CrossAttention, q, kv, key_mask=None):
    """CA of eq. 9, one head at a time, with the scores and the softmax written out."""
    b, n_q, d = q.shape
    h = mod.heads
    e = d // h
    qn = F.layer_norm(q, (d,), mod.norm_q.weight, mod.norm_q.bias, mod.norm_q.eps)
    kn = F.layer_norm(kv, (kv.shape[-1],), mod.norm_kv.weight, mod.norm_kv.bias, mod.norm_kv.eps)
    Q = qn @ mod.q.weight.T + mod.q.bias
    K = kn @ mod.k.weight.T + mod.k.bias
    V = kn @ mod.v.weight.T + mod.v.bias
    heads = []
    for i in range(h):
        cols = slice(i * e, (i + 1) * e)
        scores = Q[..., cols] @ K[..., cols].transpose(1, 2) / math.sqrt(e)  # (B, L, S)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask.bool()[:, None, :], float("-inf"))
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        heads.append(weights @ V[..., cols])  # (B, L, e)
    return torch.cat(heads, -1) @ mod.out.weight.T + mod.out.bias


def randomise(mod: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


@pytest.mark.parametrize("heads", [1, 4])
def test_cross_attention_matches_written_out_attention(heads):
    torch.manual_seed(0)
    mod = CrossAttention(dim=32, kv_dim=24, heads=heads).eval()
    randomise(mod, 1)
    q = torch.randn(2, 37, 32)
    kv = torch.randn(2, 11, 24)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0  # padded words of the second sample
    with torch.no_grad():
        torch.testing.assert_close(mod(q, kv), plain_attention(mod, q, kv), atol=1e-5, rtol=0)
        got = mod(q, kv, key_mask=mask)
        torch.testing.assert_close(got, plain_attention(mod, q, kv, mask), atol=1e-5, rtol=0)
    # masked words do not count: changing them changes nothing
    kv2 = kv.clone()
    kv2[1, 7:] = torch.randn(4, 24) * 5
    with torch.no_grad():
        torch.testing.assert_close(mod(q, kv2, key_mask=mask)[1], got[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("stride", [1, 2])
def test_spatial_attention_over_every_position_matches_the_reference(stride):
    torch.manual_seed(0)
    mod = SpatialCrossAttention(dim=32, heads=4, kv_stride=stride).eval()
    randomise(mod, 2)
    vis = torch.randn(2, 32, 9, 7)
    txt = torch.randn(2, 32, 9, 7)
    q = vis.flatten(2).transpose(1, 2)  # (B, 63, 32)
    kv_map = F.adaptive_avg_pool2d(txt, (5, 4)) if stride == 2 else txt
    kv = kv_map.flatten(2).transpose(1, 2)
    with torch.no_grad():
        got = mod(vis, txt)
        want = plain_attention(mod.attention, q, kv).transpose(1, 2).reshape(2, 32, 9, 7)
    assert got.shape == (2, 32, 9, 7)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_spatial_attention_keeps_gradients():
    mod = SpatialCrossAttention(dim=16, heads=2)
    vis = torch.randn(1, 16, 4, 5, requires_grad=True)
    txt = torch.randn(1, 16, 4, 5, requires_grad=True)
    mod(vis, txt).square().sum().backward()
    assert vis.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0
    assert mod.attention.k.weight.grad.abs().sum() > 0
    assert mod.attention.v.weight.grad.abs().sum() > 0
