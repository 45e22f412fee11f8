"""DAT (eq. 7-10): attention against plain-softmax twins, SP variants, every order's wiring."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from entitwist.config import FusionConfig
from entitwist.errors import ConfigError
from entitwist.models.dat import (
    DAT,
    ChannelSelfAttention,
    CrossAttention,
    SemanticPropagation,
    SpatialCrossAttention,
)
from test_mamba import bimamba_reference, double_params, randomise

D = 16


def _config(**kw) -> FusionConfig:
    base = FusionConfig(
        scan_size=4, d_state=4, attn_heads=(2, 2, 2, 2), attn_kv_stride=(1, 1, 1, 1)
    )
    return dataclasses.replace(base, **kw)


def attention_ref(q, k, v, mask=None):
    """Plain softmax attention, (B, h, L, e) x (B, h, S, e) -> (B, h, L, e)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def cross_attention_ref(ca: CrossAttention, q, kv, key_mask=None):
    b, n, d = q.shape
    h = ca.heads
    qn = F.layer_norm(q, (d,), ca.norm_q.weight, ca.norm_q.bias)
    kvn = F.layer_norm(kv, (kv.shape[-1],), ca.norm_kv.weight, ca.norm_kv.bias)

    def split(x):
        return x.view(b, x.shape[1], h, d // h).transpose(1, 2)

    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
    y = attention_ref(split(ca.q(qn)), split(ca.k(kvn)), split(ca.v(kvn)), mask)
    return ca.out(y.transpose(1, 2).reshape(b, n, d))


def test_cross_attention_matches_softmax_twin_with_mask() -> None:
    torch.manual_seed(0)
    ca = CrossAttention(D, 12, heads=4)
    q, kv = torch.randn(2, 30, D), torch.randn(2, 7, 12)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 2:] = 0
    with torch.no_grad():
        torch.testing.assert_close(
            ca(q, kv, mask), cross_attention_ref(ca, q, kv, mask), rtol=1e-4, atol=1e-5
        )
        kv2 = kv.clone()
        kv2[1, 2:] = 50.0  # masked keys have no effect
        torch.testing.assert_close(ca(q, kv2, mask), ca(q, kv, mask))


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_spatial_attention_kv_stride(stride: int) -> None:
    torch.manual_seed(1)
    sa = SpatialCrossAttention(D, heads=2, kv_stride=stride)
    vis, txt = torch.randn(1, D, 7, 6), torch.randn(1, D, 7, 6)
    pooled = F.adaptive_avg_pool2d(txt, (math.ceil(7 / stride), math.ceil(6 / stride)))
    with torch.no_grad():
        ref = cross_attention_ref(
            sa.attention, vis.flatten(2).transpose(1, 2), pooled.flatten(2).transpose(1, 2)
        )
        torch.testing.assert_close(
            sa(vis, txt), ref.transpose(1, 2).reshape(1, D, 7, 6), rtol=1e-4, atol=1e-5
        )
    if stride == 2:  # divisible sizes: the same as average pooling with that stride
        txt8 = torch.randn(1, D, 8, 8)
        torch.testing.assert_close(
            F.adaptive_avg_pool2d(txt8, (4, 4)), F.avg_pool2d(txt8, 2)
        )  # documents the equivalence used


def test_attention_runs_fused_cpu_kernel_forward_and_backward() -> None:
    """float32 on CPU must take the flash kernel, not the math fallback that builds (HW)^2."""
    from torch.profiler import profile

    sa = SpatialCrossAttention(D, heads=2)
    ca = CrossAttention(D, 12, heads=2)
    x = torch.randn(1, D, 12, 12, requires_grad=True)
    key_mask = torch.tensor([[1, 1, 0, 0, 0]])
    with profile() as prof:
        sa(x, x).sum().backward()
        ca(torch.randn(1, 30, D), torch.randn(1, 5, 12), key_mask).sum().backward()
    names = [e.name for e in prof.events()]
    assert names.count("aten::_scaled_dot_product_flash_attention_for_cpu") == 2
    assert names.count("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == 2
    assert "aten::_scaled_dot_product_attention_math" not in names


def test_channel_self_attention_matches_twin() -> None:
    torch.manual_seed(2)
    csa = ChannelSelfAttention(16, heads=2)
    x = torch.randn(2, 10, 16)
    qkv = csa.qkv(x).view(2, 10, 3, 2, 8).permute(2, 0, 3, 1, 4)
    ref = csa.out(attention_ref(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(csa(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["mamba", "self_attention", "none"])
def test_semantic_propagation(mode: str) -> None:
    torch.manual_seed(3)
    sp = SemanticPropagation(scan_size=4, d_state=4, mode=mode)
    cube = torch.randn(1, 2 * D, 10, 6)
    sem = sp(cube)
    assert sem.shape == cube.shape and torch.isfinite(sem).all()
    if mode == "none":
        assert sem is cube
        return
    # eq. 7 as written: resize to s x s, channels as tokens, mix, resize back, residual
    x = F.interpolate(cube, size=(4, 4), mode="bilinear", align_corners=False).flatten(2)
    x = sp.mixer(sp.norm(x)).view(1, 2 * D, 4, 4)
    torch.testing.assert_close(
        sem, cube + F.interpolate(x, size=(10, 6), mode="bilinear", align_corners=False)
    )
    # propagation along channels: the text half alone changes the visual half
    cube2 = cube.clone()
    cube2[:, D:] += torch.randn_like(cube2[:, D:])  # (a constant shift would be normalised away)
    assert not torch.allclose(sp(cube2)[:, :D], sem[:, :D])


def bilinear_matrix(out: int, size: int) -> torch.Tensor:
    """(out, size) weights of 1-D bilinear resampling with half-pixel centres, no antialias:
    output i reads the input at (i + 0.5) * size / out - 0.5, clamped at the edges."""
    m = torch.zeros(out, size, dtype=torch.float64)
    for i in range(out):
        src = max((i + 0.5) * size / out - 0.5, 0.0)
        lo = min(int(math.floor(src)), size - 1)
        hi = min(lo + 1, size - 1)
        frac = src - lo
        m[i, lo] += 1 - frac
        m[i, hi] += frac
    return m


def semantic_propagation_reference(sp: SemanticPropagation, cube: torch.Tensor) -> torch.Tensor:
    """Eq. 7 step by step in float64, sharing only SP's weights: bilinear Down to s x s (as
    matrices), each of the 2d channels one token of s*s features, LayerNorm over the features,
    the reference bidirectional Mamba along the channels, bilinear Up, residual."""
    b, c, h, w = cube.shape
    s = sp.scan_size
    x = cube.double()
    down = bilinear_matrix(s, h) @ x @ bilinear_matrix(s, w).T  # (B, 2d, s, s)
    tokens = down.reshape(b, c, s * s)  # channel k is token k, features row-major
    mean = tokens.mean(-1, keepdim=True)
    var = ((tokens - mean) ** 2).mean(-1, keepdim=True)
    normed = (tokens - mean) / torch.sqrt(var + sp.norm.eps)
    normed = normed * sp.norm.weight.double() + sp.norm.bias.double()
    mixed = bimamba_reference(double_params(sp.mixer), normed)  # (B, 2d, s*s)
    up = bilinear_matrix(h, s) @ mixed.reshape(b, c, s, s) @ bilinear_matrix(w, s).T
    return x + up


def test_bilinear_matrix_is_torch_bilinear() -> None:
    """The reference's resampling agrees with torch on a case worked by hand: 2 -> 4 samples
    at -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)."""
    torch.testing.assert_close(
        bilinear_matrix(4, 2) @ torch.tensor([0.0, 8.0], dtype=torch.float64),
        torch.tensor([0.0, 2.0, 6.0, 8.0], dtype=torch.float64),
    )
    torch.testing.assert_close(  # 6 -> 3: centres at 0.5, 2.5, 4.5, halfway between pairs
        bilinear_matrix(3, 6) @ torch.arange(6.0, dtype=torch.float64),
        torch.tensor([0.5, 2.5, 4.5], dtype=torch.float64),
    )


@pytest.mark.parametrize("shape", [(10, 6), (3, 5), (4, 4)])
def test_semantic_propagation_matches_eq7_reference(shape: tuple[int, int]) -> None:
    torch.manual_seed(7)
    sp = SemanticPropagation(scan_size=4, d_state=4, mode="mamba")
    randomise(sp, 3)  # LayerNorm affine and the Mamba weights off their init
    cube = torch.randn(2, 2 * D, *shape)
    with torch.no_grad():
        torch.testing.assert_close(
            sp(cube).double(), semantic_propagation_reference(sp, cube), rtol=1e-4, atol=1e-5
        )
    # the channel order is the scan order: reversing the channels changes the result
    # beyond reversing it (the two directions have their own weights)
    with torch.no_grad():
        flipped = sp(cube.flip(1)).flip(1)
    assert (flipped - sp(cube).detach()).abs().max() > 1e-3


def test_semantic_propagation_area_resize_reads_every_position() -> None:
    torch.manual_seed(4)
    area = SemanticPropagation(scan_size=4, d_state=4, mode="self_attention", resize="area")
    cube = torch.randn(1, 2 * D, 12, 8)
    # reference: the mean of each 3 x 2 cell, by reshaping (12 x 8 -> 4 x 4 cells)
    down = cube.view(1, 2 * D, 4, 3, 4, 2).mean(dim=(3, 5)).flatten(2)
    x = area.mixer(area.norm(down)).view(1, 2 * D, 4, 4)
    up = F.interpolate(x, size=(12, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(area(cube), cube + up)
    # bilinear sampling misses positions: a change at one of them leaves its output alone
    bilinear = SemanticPropagation(scan_size=4, d_state=4, mode="self_attention")
    bilinear.load_state_dict(area.state_dict())
    poked = cube.clone()
    poked[:, :, 0, 0] += 10.0  # (0, 0) is outside every bilinear sample of a 3 x 2 cell
    torch.testing.assert_close(bilinear(poked) - poked, bilinear(cube) - cube)
    assert not torch.allclose(area(poked) - poked, area(cube) - cube)
    with pytest.raises(ConfigError, match="scan_resize"):
        SemanticPropagation(resize="nearest")


def test_semantic_propagation_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="propagation"):
        SemanticPropagation(mode="lstm")


ORDERS = ["sp_sa", "sa_sp", "parallel", "sp", "sa"]


@pytest.mark.parametrize("order", ORDERS)
def test_dat_orders_follow_their_definitions(order: str) -> None:
    torch.manual_seed(4)
    dat = DAT(D, _config(dat=order))
    cube = torch.randn(2, 2 * D, 6, 5)
    out, sem = dat(cube)
    assert out.shape == (2, D, 6, 5) and sem.shape == cube.shape

    def ca(x):
        return dat.spatial(x[:, :D], x[:, D:])

    if order == "sp_sa":
        ref_sem = dat.sp(cube)
        ref = dat.proj(ca(ref_sem) + ref_sem[:, :D])
    elif order == "sa_sp":
        ref_sem = dat.sp(torch.cat([cube[:, :D] + ca(cube), cube[:, D:]], 1))
        ref = dat.proj(ref_sem[:, :D])
    elif order == "parallel":
        ref_sem = dat.sp(cube)
        ref = dat.proj(ref_sem[:, :D] + ca(cube))
    elif order == "sp":
        ref_sem = dat.sp(cube)
        ref = dat.proj(ref_sem[:, :D])
        assert dat.spatial is None
    else:
        ref_sem = cube
        ref = dat.proj(ca(cube) + cube[:, :D])
        assert dat.sp is None
    torch.testing.assert_close(sem, ref_sem)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize(
    "kw",
    [
        {"dat": "sp_sa"},
        {"dat": "sp_sa", "propagation": "self_attention"},
        {"dat": "sp_sa", "spatial": "mamba"},
        {"dat": "parallel", "spatial": "mamba"},
        {"dat": "sa_sp", "attn_kv_stride": (2, 1, 1, 1)},
    ],
)
def test_dat_gradients_reach_every_parameter(kw: dict) -> None:
    torch.manual_seed(5)
    dat = DAT(D, _config(**kw))
    cube = torch.randn(2, 2 * D, 6, 6, requires_grad=True)
    out, _ = dat(cube)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for name, p in dat.named_parameters():
        assert (
            p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0
        ), name
    assert torch.isfinite(cube.grad).all()


def test_spatial_mamba_sees_whole_map() -> None:
    torch.manual_seed(6)
    dat = DAT(D, _config(dat="sa", spatial="mamba"))
    cube = torch.randn(1, 2 * D, 5, 5)
    with torch.no_grad():
        a = dat.spatial(cube[:, :D], cube[:, D:])
        cube2 = cube.clone()
        cube2[:, :, 4, 4] += 5 * torch.randn(2 * D)  # the last position (row-major) ...
        b = dat.spatial(cube2[:, :D], cube2[:, D:])
        cube3 = cube.clone()
        cube3[:, :, 0, 0] += 5 * torch.randn(2 * D)  # ... and the first
        c = dat.spatial(cube3[:, :D], cube3[:, D:])
    assert a.shape == (1, D, 5, 5)
    # each reaches the other end: backward scan and forward scan (decayed, but not zero)
    assert float((a - b)[:, :, 0, 0].abs().max()) > 1e-7
    assert float((a - c)[:, :, 4, 4].abs().max()) > 1e-7


def test_dat_rejects_baseline_order_and_bad_stride() -> None:
    with pytest.raises(ConfigError):
        DAT(D, _config(dat="none"))
    with pytest.raises(ConfigError, match="attn_kv_stride"):
        DAT(D, _config(attn_kv_stride=(0, 1, 1, 1)))
    with pytest.raises(ConfigError, match="heads"):
        DAT(D, _config(attn_heads=(3, 1, 1, 1)))
