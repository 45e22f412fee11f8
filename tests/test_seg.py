"""SEG (eq. 1-4) and entity_area_maps: values against looped reference twins, degenerate inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from entitwist.errors import InputError
from entitwist.models.seg import SEG, EntityAreaCache, entity_area_maps, self_reasoning_affinity


# ---------------------------------------------------------------- reference twins (loops)
def area_ref(labels: torch.Tensor, k: int, size: tuple[int, int]) -> torch.Tensor:
    """Per-cell fraction of pixels with label j, by explicit loops over cells and entities."""
    b, h0, w0 = labels.shape
    h, w = size
    out = torch.zeros(b, k, h, w)
    for i in range(b):
        for y in range(h):
            y0, y1 = (y * h0) // h, -((-(y + 1) * h0) // h)  # adaptive pooling cell bounds
            for x in range(w):
                x0, x1 = (x * w0) // w, -((-(x + 1) * w0) // w)
                cell = labels[i, y0:y1, x0:x1]
                for j in range(k):
                    out[i, j, y, x] = (cell == j + 1).float().mean()
    return out


def seg_ref(seg: SEG, f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eq. 1-4 with Python loops over images, entities and positions (float64)."""
    b, d, h, w = f.shape
    k = m.shape[1]
    f, m = f.double(), m.double()
    out = torch.zeros(b, d, h, w, dtype=torch.float64)
    for i in range(b):
        present = [j for j in range(k) if m[i, j].sum() > 0]
        p = {}
        for j in present:  # eq. 1
            p[j] = (m[i, j][None] * f[i]).sum((1, 2)) / m[i, j].sum()
        p_hat = {}
        for a in present:
            if seg.reason is None:
                p_hat[a] = p[a]
                continue
            cos = {c: F.cosine_similarity(p[a], p[c], dim=0, eps=1e-12) for c in present}
            s = sum(cos.values())
            s = s if abs(s) >= seg.eps else (seg.eps if s >= 0 else -seg.eps)  # guard of eq. 2
            wt = seg.reason.weight.double()
            agg = (
                sum((cos[c] / s) * (wt @ p[c]) for c in present) + seg.reason.bias.double()
            )  # eq. 3
            p_hat[a] = p[a] + torch.relu(agg)
        for y in range(h):  # eq. 4
            for x in range(w):
                for j in present:
                    out[i, :, y, x] += m[i, j, y, x] * p_hat[j]
    return out


# ---------------------------------------------------------------- entity_area_maps
def test_area_maps_match_loops_divisible_and_not() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (2, 16, 16))
    for size in [(4, 4), (8, 2), (16, 16), (1, 1), (5, 3)]:
        got = entity_area_maps(labels, 4, size)
        assert got.shape == (2, 4, *size) and got.dtype == torch.float32
        torch.testing.assert_close(got, area_ref(labels, 4, size))


def test_area_maps_sum_to_covered_fraction() -> None:
    torch.manual_seed(1)
    labels = torch.randint(0, 7, (3, 32, 24))
    area = entity_area_maps(labels, 6, (8, 6))
    covered = F.avg_pool2d((labels > 0).float()[:, None], 4)[:, 0]
    torch.testing.assert_close(area.sum(1), covered)
    assert float(area.min()) >= 0 and float(area.max()) <= 1


def test_area_maps_one_pixel_survives_stride_32() -> None:
    labels = torch.zeros(1, 480, 480, dtype=torch.long)
    labels[0, 100, 200] = 1
    area = entity_area_maps(labels, 40, (15, 15))
    assert area.shape == (1, 40, 15, 15)
    assert float(area[0, 0].sum()) == pytest.approx(1 / 1024)
    assert float(area[0, 0, 100 // 32, 200 // 32]) == pytest.approx(1 / 1024)
    assert float(area[0, 1:].abs().sum()) == 0


def test_area_cache_equals_direct_maps_and_counts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import entitwist.models.seg as seg_mod

    torch.manual_seed(4)
    labels = torch.randint(0, 9, (2, 128, 128))
    calls: list[tuple[int, int]] = []
    counted = seg_mod.entity_area_maps

    def spy(lab: torch.Tensor, k: int, size: tuple[int, int]) -> torch.Tensor:
        calls.append(tuple(size))
        return counted(lab, k, size)

    monkeypatch.setattr(seg_mod, "entity_area_maps", spy)
    cache = EntityAreaCache(labels, 8)
    # the network's order: stages 1/4 .. 1/32, then the entity head at 1/4 again
    for size in [(32, 32), (16, 16), (8, 8), (4, 4), (32, 32)]:
        got = cache(size)
        # power-of-two cells: pooled from the finer map, equal to the counted map bit for bit
        assert torch.equal(got, counted(labels, 8, size))
    assert calls == [(32, 32)]
    assert cache((32, 32)) is cache((32, 32))
    # a size that divides no cached map is counted
    torch.testing.assert_close(cache((12, 12)), counted(labels, 8, (12, 12)))
    assert calls == [(32, 32), (12, 12)]
    # 96 px: 3x3-pixel cells at 32, so the pooled 16x16 map equals the counted one only up
    # to float rounding
    none = EntityAreaCache(torch.zeros(2, 64, 64, dtype=torch.long), 0)  # K = 0: empty maps
    assert none((16, 16)).shape == (2, 0, 16, 16) and none((8, 8)).shape == (2, 0, 8, 8)
    odd = EntityAreaCache(labels[:, :96, :96], 8)
    odd((32, 32))
    torch.testing.assert_close(odd((16, 16)), counted(labels[:, :96, :96], 8, (16, 16)))


def test_area_maps_k_zero_and_errors() -> None:
    assert entity_area_maps(torch.zeros(2, 8, 8, dtype=torch.long), 0, (4, 4)).shape == (2, 0, 4, 4)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 0, 0] = 5
    with pytest.raises(InputError, match="K=4"):
        entity_area_maps(labels, 4, (4, 4))
    labels[0, 0, 0] = -1
    with pytest.raises(InputError, match="labels in"):
        entity_area_maps(labels, 4, (4, 4))
    with pytest.raises(InputError, match="integers"):
        entity_area_maps(torch.zeros(1, 8, 8), 4, (4, 4))
    with pytest.raises(InputError, match=r"\(B, H, W\)"):
        entity_area_maps(torch.zeros(8, 8, dtype=torch.long), 4, (4, 4))


# ---------------------------------------------------------------- SEG values
@pytest.mark.parametrize("self_reasoning", [True, False])
def test_seg_matches_looped_reference(self_reasoning: bool) -> None:
    torch.manual_seed(2)
    seg = SEG(6, self_reasoning=self_reasoning).double()
    if self_reasoning:
        with torch.no_grad():  # a bias that makes the ReLU both clip and pass
            seg.reason.bias.normal_()
    labels = torch.randint(0, 5, (2, 12, 12))
    labels[1][labels[1] == 3] = 0  # entity 3 absent in image 1
    m = entity_area_maps(labels, 5, (6, 6)).double()  # entity 5 absent everywhere
    f = torch.randn(2, 6, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(seg(f, m), seg_ref(seg, f, m))


def test_seg_changes_output_only_where_covered_and_refines() -> None:
    torch.manual_seed(3)
    seg = SEG(4)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4, :4] = 1
    labels[0, 4:, 4:] = 2
    m = entity_area_maps(labels, 2, (4, 4))
    f = torch.randn(1, 4, 4, 4)
    g = seg(f, m).detach()
    assert float(g[0, :, :2, 2:].abs().sum()) == 0 and float(g[0, :, 2:, :2].abs().sum()) == 0
    # without refinement the guidance of a fully covered cell is the plain mask average
    plain = SEG(4, self_reasoning=False)(f, m)
    torch.testing.assert_close(plain[0, :, 0, 0], f[0, :, :2, :2].mean((1, 2)))


def test_affinity_guard_keeps_sign_and_bounds() -> None:
    v = torch.tensor([1.0, 0.0, 0.0])
    priors = torch.stack([v, -v, torch.tensor([0.0, 1.0, 0.0])])[None]  # row sums 0, 0, 1
    present = torch.ones(1, 3, dtype=torch.bool)
    phi = self_reasoning_affinity(priors, present, eps=0.1)
    torch.testing.assert_close(phi[0, 0], torch.tensor([10.0, -10.0, 0.0]))  # s = 0 -> +eps
    torch.testing.assert_close(phi[0, 2], torch.tensor([0.0, 0.0, 1.0]))
    neg = torch.stack([v, -v, -v, -v])[None]  # row 0: 1 - 3 = -2 (kept negative)
    phi = self_reasoning_affinity(neg, torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(phi[0, 0], torch.tensor([-0.5, 0.5, 0.5, 0.5]))
    # absent entities take part in nothing
    phi = self_reasoning_affinity(priors, torch.tensor([[True, False, True]]))
    assert float(phi[0, 1].abs().sum()) == 0 and float(phi[0, :, 1].abs().sum()) == 0
    torch.testing.assert_close(phi[0, 0], torch.tensor([1.0, 0.0, 0.0]))


# ---------------------------------------------------------------- degenerate inputs
def _finite_with_grads(seg: SEG, f: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    f = f.clone().requires_grad_(True)
    g = seg(f, m)
    assert torch.isfinite(g).all()
    (g.square().sum() + f.sum()).backward()
    assert torch.isfinite(f.grad).all()
    for p in seg.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    return g.detach()


def test_degenerate_entities_are_finite() -> None:
    torch.manual_seed(4)
    seg = SEG(8)
    f = torch.randn(1, 8, 15, 15)
    # K = 0 (None or zero channels) and an all-zero label map: G = 0
    assert float(_finite_with_grads(seg, f, None).abs().sum()) == 0
    assert float(_finite_with_grads(seg, f, torch.zeros(1, 0, 15, 15)).abs().sum()) == 0
    empty = entity_area_maps(torch.zeros(1, 480, 480, dtype=torch.long), 40, (15, 15))
    assert float(_finite_with_grads(seg, f, empty).abs().sum()) == 0
    # one mask covering everything (K = 1): G is the same vector everywhere
    full = entity_area_maps(torch.ones(1, 480, 480, dtype=torch.long), 1, (15, 15))
    g = _finite_with_grads(seg, f, full)
    torch.testing.assert_close(g, g[:, :, :1, :1].expand_as(g))
    # one pixel at stride 32, and identical priors (constant features)
    one = torch.zeros(1, 480, 480, dtype=torch.long)
    one[0, 7, 9] = 1
    one[0, 240:, :] = 2
    _finite_with_grads(seg, f, entity_area_maps(one, 3, (15, 15)))
    _finite_with_grads(seg, torch.ones(1, 8, 15, 15), entity_area_maps(one, 3, (15, 15)))
    # all-zero features: every prior is the zero vector
    _finite_with_grads(seg, torch.zeros(1, 8, 15, 15), entity_area_maps(one, 3, (15, 15)))


def test_seg_rejects_mismatched_areas() -> None:
    with pytest.raises(InputError, match="entity_area_maps"):
        SEG(4)(torch.randn(1, 4, 8, 8), torch.zeros(1, 3, 4, 4))


@st.composite
def label_maps(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    b = draw(st.integers(1, 2))
    k = draw(st.integers(0, 6))
    scale = draw(st.sampled_from([1, 2, 4]))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["random", "constant", "one_pixel", "sparse"]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    shape = (b, h * scale, w * scale)
    if kind == "random" or k == 0:
        labels = torch.randint(0, k + 1, shape, generator=gen)
    elif kind == "constant":
        labels = torch.full(shape, draw(st.integers(0, k)), dtype=torch.long)
    elif kind == "one_pixel":
        labels = torch.zeros(shape, dtype=torch.long)
        labels[:, 0, 0] = k
    else:
        labels = torch.randint(0, k + 1, shape, generator=gen) * (
            torch.rand(shape, generator=gen) < 0.1
        )
    return labels, k


@settings(max_examples=40, deadline=None)
@given(data=label_maps(), seed=st.integers(0, 2**16), self_reasoning=st.booleans())
def test_seg_property_degenerate_label_maps(
    data: tuple[torch.Tensor, int], seed: int, self_reasoning: bool
) -> None:
    labels, k = data
    torch.manual_seed(seed)
    b, h0, w0 = labels.shape
    size = (h0 // 2 or 1, w0 // 2 or 1) if h0 % 2 == 0 and w0 % 2 == 0 else (h0, w0)
    seg = SEG(5, self_reasoning=self_reasoning)
    if seg.reason is not None:
        with torch.no_grad():
            seg.reason.bias.normal_()
    f = torch.randn(b, 5, *size)
    m = entity_area_maps(labels, k, size)
    g = _finite_with_grads(seg, f, m)
    uncovered = m.sum(1) == 0  # (B, H, W)
    assert float(g.permute(0, 2, 3, 1)[uncovered].abs().sum()) == 0
    # renumbering the entities does not change G
    perm = torch.randperm(k) + 1
    relabel = torch.cat([torch.zeros(1, dtype=torch.long), perm])[labels]
    g2 = seg(f, entity_area_maps(relabel, k, size)).detach()
    torch.testing.assert_close(g2, g, rtol=1e-4, atol=1e-5)
