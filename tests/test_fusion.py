"""FusionStage: every ablation variant wired from FusionConfig (SEG -> cube -> DAT, baseline)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from entitwist.config import FusionConfig
from entitwist.errors import InputError
from entitwist.models.fusion import FusionStage
from entitwist.models.seg import entity_area_maps

D, DT, N, H, W, K = 16, 12, 6, 8, 8, 5

VARIANTS = {
    "paper": {},
    "no_self_reasoning": {"self_reasoning": False},
    "no_seg": {"seg": False},
    "sa_sp": {"dat": "sa_sp"},
    "parallel": {"dat": "parallel"},
    "sp_only": {"dat": "sp"},
    "sa_only": {"dat": "sa"},
    "channel_self_attention": {"propagation": "self_attention"},
    "no_propagation": {"propagation": "none"},
    "remamber_v": {"spatial": "mamba"},
    "kv_stride": {"attn_kv_stride": (2, 2, 2, 2)},
    "seg_only": {"dat": "none"},
    "baseline": {"dat": "none", "seg": False},
}


def _stage(**kw) -> FusionStage:
    base = FusionConfig(scan_size=4, d_state=4, attn_heads=(2, 2, 2, 2), max_entities=K)
    return FusionStage(D, DT, N, dataclasses.replace(base, **kw), stage_index=0)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(2, D, H, W, generator=g)
    t = torch.randn(2, N, DT, generator=g)
    mask = torch.ones(2, N, dtype=torch.long)
    mask[0, 4:] = 0
    mask[1, 2:] = 0
    labels = torch.randint(0, K + 1, (2, 4 * H, 4 * W), generator=g)
    return f, t, mask, labels


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_shapes_gradients_text_and_padding(name: str) -> None:
    torch.manual_seed(1)
    stage = _stage(**VARIANTS[name])
    f, t, mask, labels = _inputs()
    area = entity_area_maps(labels, K, (H, W))
    f.requires_grad_(True)
    out, extras = stage(f, t, mask, area)
    assert out.shape == (2, D, H, W) and torch.isfinite(out).all()
    if stage.dat is None:
        assert extras == {}
    else:
        assert set(extras) == {"cube", "sem"}
        assert extras["cube"].shape == extras["sem"].shape == (2, 2 * D, H, W)
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in stage.named_parameters():
        assert (
            p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0
        ), pname
    assert torch.isfinite(f.grad).all()

    with torch.no_grad():
        out = stage(f, t, mask, area)[0]
        # another sentence changes the output, unless nothing carries text to the visual half
        t_other = torch.randn_like(t)
        text_free = (
            VARIANTS[name].get("dat") == "sp" and VARIANTS[name].get("propagation") == "none"
        )
        assert text_free or not torch.allclose(stage(f, t_other, mask, area)[0], out, atol=1e-5)
        # padding words (mask 0) have no effect
        t_pad = t.clone()
        t_pad[0, 4:] = 30 * torch.randn(2, DT)
        t_pad[1, 2:] = -3.0
        torch.testing.assert_close(stage(f, t_pad, mask, area)[0], out, rtol=1e-5, atol=1e-5)
        # renumbering the entities changes nothing
        perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(K) + 1])
        out_perm = stage(f, t, mask, entity_area_maps(perm[labels], K, (H, W)))[0]
        torch.testing.assert_close(out_perm, out, rtol=1e-4, atol=1e-5)


def test_seg_switch_uses_or_ignores_entities() -> None:
    f, t, mask, labels = _inputs()
    area = entity_area_maps(labels, K, (H, W))
    with torch.no_grad():
        for kw in ({}, {"dat": "none"}):
            on = _stage(**kw).eval()
            assert not torch.allclose(on(f, t, mask, area)[0], on(f, t, mask, None)[0])
            # with SEG on, None and K = 0 both mean "no entities": G = 0
            torch.testing.assert_close(on(f, t, mask, None)[0], on(f, t, mask, area[:, :0])[0])
            off = _stage(seg=False, **kw).eval()
            assert off.seg is None
            torch.testing.assert_close(off(f, t, mask, area)[0], off(f, t, mask, None)[0])


def test_baseline_is_cross_attention_of_visual_map_to_words() -> None:
    torch.manual_seed(2)
    stage = _stage(dat="none", seg=False)
    f, t, mask, _ = _inputs()
    with torch.no_grad():
        q = f.flatten(2).transpose(1, 2)
        ca = stage.attention(q, t, key_mask=mask).transpose(1, 2).reshape(2, D, H, W)
        torch.testing.assert_close(stage(f, t, mask)[0], stage.proj(ca + f))
    assert stage.cube is None and stage.dat is None


def test_cube_contains_guidance_and_text() -> None:
    torch.manual_seed(3)
    stage = _stage()
    f, t, mask, labels = _inputs()
    area = entity_area_maps(labels, K, (H, W))
    with torch.no_grad():
        _, extras = stage(f, t, mask, area)
        torch.testing.assert_close(extras["cube"][:, :D], f + stage.seg(f, area))


def test_degenerate_entities_finite() -> None:
    stage = _stage()
    f, t, mask, _ = _inputs()
    for labels in (
        torch.zeros(2, 4 * H, 4 * W, dtype=torch.long),
        torch.ones(2, 4 * H, 4 * W, dtype=torch.long),
        torch.nn.functional.pad(
            torch.ones(2, 1, 1, dtype=torch.long), (0, 4 * W - 1, 0, 4 * H - 1)
        ),
    ):
        out, _ = stage(f, t, mask, entity_area_maps(labels, K, (H, W)))
        assert torch.isfinite(out).all()
    out, _ = stage(
        torch.ones(2, D, H, W),
        t,
        mask,
        entity_area_maps(torch.ones(2, 4 * H, 4 * W, dtype=torch.long), 1, (H, W)),
    )
    assert torch.isfinite(out).all()


def test_bad_inputs_raise_one_line_errors() -> None:
    stage = _stage()
    f, t, mask, labels = _inputs()
    area = entity_area_maps(labels, K, (H, W))
    with pytest.raises(InputError, match="no real token"):
        stage(f, t, torch.zeros_like(mask), area)
    with pytest.raises(InputError, match=r"\(B, 16, H, W\)"):
        stage(f[:, :8], t, mask, area)
    with pytest.raises(InputError, match="word embeddings"):
        stage(f, t[..., :5], mask, area)
    with pytest.raises(InputError, match="at most 6"):
        stage(f, torch.randn(2, 9, DT), torch.ones(2, 9), area)
    with pytest.raises(InputError, match="entity_area_maps"):
        stage(f, t, mask, area[..., :4, :4])
