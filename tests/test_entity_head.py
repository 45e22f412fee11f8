"""The entity selection head (an extension beyond the paper): geometry, scores, wiring, loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from entitwist.config import ModelConfig
from entitwist.errors import ConfigError
from entitwist.models.entity_head import (
    AREA_SOFTNESS,
    POSITION_SOFTNESS,
    EntityHead,
    comparison_features,
    dilate3x3,
    entity_geometry,
    entity_logit_map,
    fragment_groups,
)
from entitwist.models.loss import entity_selection_loss, entity_selection_targets
from entitwist.models.registry import create_model, get_config
from entitwist.models.seg import entity_area_maps


# ---------------------------------------------------------------- geometry
def test_geometry_of_a_rectangle_is_exact() -> None:
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:4, 4:8] = 1  # rows 2-3, columns 4-7
    labels[0, 6, 0] = 3  # one cell; label 2 is absent
    area = entity_area_maps(labels, 3, (8, 8))
    geo, present = entity_geometry(area)
    assert present.tolist() == [[True, False, True]]
    cy, cx = (2.5 + 3.5) / 2 / 8, (4.5 + 5.5 + 6.5 + 7.5) / 4 / 8
    frac = 8 / 64
    sy = 0.5 / 8  # std of {2.5, 3.5} / 8
    sx = torch.tensor([4.5, 5.5, 6.5, 7.5]).std(unbiased=False).item() / 8
    want = [cy, cx, frac**0.5, float(torch.log(torch.tensor(frac + 1e-4))) / 4, 2 * sy, 2 * sx]
    assert geo[0, 0].tolist() == pytest.approx(want, abs=1e-6)
    assert geo[0, 1].abs().sum() == 0  # absent: all zero
    assert geo[0, 2, :2].tolist() == pytest.approx([6.5 / 8, 0.5 / 8])
    assert geo[0, 2, 4:].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def _object_geometry(
    groups: torch.Tensor, geo: torch.Tensor, a: list[float], i: int
) -> tuple[float, float, float]:
    """Entity i's object: area-weighted centroid of its group and log of the group's area."""
    area = sum(groups[i, j].item() * a[j] for j in range(len(a)))
    cy = sum(groups[i, j].item() * a[j] * geo[j, 0].item() for j in range(len(a))) / area
    cx = sum(groups[i, j].item() * a[j] * geo[j, 1].item() for j in range(len(a))) / area
    return cy, cx, float(torch.log(torch.tensor(area + 1e-4)))


def test_comparison_features_match_a_loop() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 6, (2, 32, 32), generator=g)
    labels[1, labels[1] == 4] = 0  # entity 4 absent in image 1
    geo, present = entity_geometry(entity_area_maps(labels, 5, (16, 16)))
    rel = torch.rand(2, 5, generator=g)
    groups = torch.rand(2, 5, 5, generator=g) * present[:, :, None] * present[:, None, :]
    groups = torch.maximum(groups, torch.eye(5) * present[:, :, None])
    got = comparison_features(geo, present, rel, groups)
    sig = torch.sigmoid
    for b in range(2):
        a = [geo[b, j, 2].item() ** 2 if present[b, j] else 0.0 for j in range(5)]

        for i in range(5):
            if not present[b, i]:
                assert (got[b, i] == 0).all()
                continue
            cy, cx, la = _object_geometry(groups[b], geo[b], a, i)
            sums = torch.zeros(7)
            for j in range(5):
                if j == i or not present[b, j]:
                    continue
                o = rel[b, j] * (1 - groups[b, i, j])
                oy, ox, ola = _object_geometry(groups[b], geo[b], a, j)
                sums += o * torch.stack([
                    torch.tensor(1.0),
                    sig(torch.tensor((cx - ox) / POSITION_SOFTNESS)),
                    sig(torch.tensor((ox - cx) / POSITION_SOFTNESS)),
                    sig(torch.tensor((cy - oy) / POSITION_SOFTNESS)),
                    sig(torch.tensor((oy - cy) / POSITION_SOFTNESS)),
                    sig(torch.tensor((ola - la) / AREA_SOFTNESS)),
                    sig(torch.tensor((la - ola) / AREA_SOFTNESS)),
                ])  # fmt: skip
            want = torch.cat([rel[b, i : i + 1], torch.log1p(sums), torch.tensor([cy, cx, la / 4])])
            assert torch.allclose(got[b, i], want, atol=1e-4)


def test_fragment_groups_link_touching_relevant_pieces() -> None:
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 2:6, 2:4] = 1  # a car in three touching pieces 1-2-3 (1 and 3 do not touch)
    labels[0, 2:6, 4:6] = 2
    labels[0, 2:6, 6:8] = 3
    labels[0, 2:6, 8:10] = 4  # touches piece 3 but is not relevant (the road)
    labels[0, 12:14, 12:14] = 5  # a second car, apart
    area = entity_area_maps(labels, 6, (16, 16))  # label 6 absent
    rel = torch.tensor([[1.0, 0.9, 0.8, 0.0, 1.0, 1.0]])
    g = fragment_groups(area, rel, entity_geometry(area)[1])
    assert g[0, 0, 2].item() == pytest.approx(0.9 * 0.8)  # 1 - 2 - 3: product of the links
    assert g[0, 0, 1].item() == pytest.approx(0.9)
    assert g[0, 2, 3] == 0 and g[0, 0, 4] == 0  # irrelevant neighbour, distant car
    assert torch.diagonal(g[0]).tolist() == [1, 1, 1, 1, 1, 0]
    assert torch.allclose(g, g.transpose(1, 2))


def test_dilate3x3_equals_max_pooling() -> None:
    torch.manual_seed(3)
    for shape in [(2, 5, 9, 7), (1, 1, 1, 1), (3, 1, 2), (4, 4)]:
        maps = torch.rand(shape) * (torch.rand(shape) > 0.7)  # sparse, non-negative
        want = F.max_pool2d(maps.reshape(-1, 1, *shape[-2:]), 3, stride=1, padding=1)
        got = dilate3x3(maps)
        assert got.shape == maps.shape
        assert torch.equal(got, want.reshape(shape))
    one = torch.zeros(1, 5, 5)
    one[0, 0, 4] = 2.0  # a corner pixel grows into its 2x2 neighbourhood only
    assert dilate3x3(one)[0].nonzero().tolist() == [[0, 3], [0, 4], [1, 3], [1, 4]]


def test_comparison_features_rank_the_relevant_entities() -> None:
    """Three relevant 'cars' in a row and one irrelevant entity further left."""
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 30:34, 10:14] = 1  # car, left (small)
    labels[0, 30:36, 30:36] = 2  # car, middle (medium)
    labels[0, 28:38, 50:60] = 3  # car, right (large)
    labels[0, 30:34, 0:4] = 4  # not a car, leftmost of all
    geo, present = entity_geometry(entity_area_maps(labels, 4, (64, 64)))
    rel = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    feats = comparison_features(
        geo, present, rel, fragment_groups(entity_area_maps(labels, 4, (64, 64)), rel, present)
    )
    left, right = feats[0, :3, 2].expm1(), feats[0, :3, 3].expm1()
    larger, smaller = feats[0, :3, 6].expm1(), feats[0, :3, 7].expm1()
    assert left.tolist() == pytest.approx([0, 1, 2], abs=0.01)  # entity 4 does not count
    assert right.tolist() == pytest.approx([2, 1, 0], abs=0.01)
    assert larger.tolist() == pytest.approx([2, 1, 0], abs=0.05)
    assert smaller.tolist() == pytest.approx([0, 1, 2], abs=0.05)


def test_logit_map_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2, 16, 16), generator=g)
    area = entity_area_maps(labels, 4, (4, 4))
    scores = torch.randn(2, 4, generator=g)
    out = entity_logit_map(scores, area)
    ref = torch.zeros(2, 4, 4)
    for b in range(2):
        for y in range(4):
            for x in range(4):
                ref[b, y, x] = sum(area[b, k, y, x] * scores[b, k] for k in range(4))
    assert torch.allclose(out, ref, atol=1e-6)


# ---------------------------------------------------------------- the head
def _inputs(k: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k + 1, (2, 16, 16), generator=g)
    area = entity_area_maps(labels, k, (8, 8))
    feats = torch.randn(2, 12, 8, 8, generator=g)
    words = torch.randn(2, 6, 10, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    return labels, area, feats, words, mask


def test_head_scores_present_entities_and_zeroes_the_rest() -> None:
    torch.manual_seed(0)
    head = EntityHead(12, 10, dim=16, layers=2, heads=4)
    labels, area, feats, words, mask = _inputs()
    area = torch.cat([area, torch.zeros(2, 2, 8, 8)], dim=1)  # two padded ids
    scores = head(feats, area, words, mask)
    assert scores.shape == (2, 7)
    assert torch.isfinite(scores).all()
    assert (scores[:, 5:] == 0).all()
    assert (scores[:, :5] != 0).all()


def test_head_is_equivariant_to_relabelling_entities() -> None:
    """Entity ids are arbitrary: permuting them permutes the scores and nothing else."""
    torch.manual_seed(0)
    head = EntityHead(12, 10, dim=16, layers=2, heads=4).eval()
    labels, area, feats, words, mask = _inputs()
    perm = torch.tensor([3, 0, 4, 1, 2])
    scores = head(feats, area, words, mask)
    permuted = head(feats, area[:, perm], words, mask)
    assert torch.allclose(permuted, scores[:, perm], atol=1e-5)


def test_head_reads_the_sentence_and_ignores_padded_words() -> None:
    torch.manual_seed(0)
    head = EntityHead(12, 10, dim=16, layers=1, heads=4).eval()
    _, area, feats, words, mask = _inputs()
    base = head(feats, area, words, mask)
    padded = words.clone()
    padded[0, 4:] = 100.0  # padded words of sentence 0 change
    assert torch.allclose(head(feats, area, padded, mask), base, atol=1e-5)
    real = words.clone()
    real[0, 1] += 3.0  # a real word changes
    assert not torch.allclose(head(feats, area, real, mask)[0], base[0], atol=1e-3)


@pytest.mark.parametrize("k", [0, 1])
def test_head_degenerate_inputs_stay_finite(k: int) -> None:
    torch.manual_seed(0)
    head = EntityHead(12, 10, dim=16, layers=2, heads=4)
    feats = torch.randn(2, 12, 8, 8, requires_grad=True)
    area = torch.zeros(2, k, 8, 8)
    if k:
        area[0, 0, 2:4, 2:4] = 1.0  # image 1 has no entity at all
    scores = head(feats, area, torch.randn(2, 3, 10), torch.ones(2, 3, dtype=torch.long))
    assert scores.shape == (2, k) and torch.isfinite(scores).all()
    if k:
        assert scores[1, 0] == 0
        scores.sum().backward()
        assert torch.isfinite(feats.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


# ---------------------------------------------------------------- loss
def test_selection_targets_match_a_loop() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 6, (3, 12, 12), generator=g)
    labels[2] = labels[2].clamp(max=3)  # ids 4, 5 absent in image 2
    target = torch.rand(3, 12, 12, generator=g) > 0.5
    chosen, present = entity_selection_targets(labels, target, 6)
    for b in range(3):
        for k in range(6):
            pix = labels[b] == k + 1
            assert present[b, k] == bool(pix.any())
            assert chosen[b, k] == bool(target[b][pix].sum() * 2 > pix.sum())
    assert not present[:, 5].any()  # K = 6 but only ids 1..5 occur


def test_selection_loss_is_bce_over_present_entities() -> None:
    labels = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [3, 3, 3, 3]]])
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2, :2] = True  # entity 1 entirely; entity 2 none; entity 3 none
    scores = torch.tensor([[2.0, -1.0, 0.5, 7.0]])  # id 4 is absent: its score is ignored
    got = entity_selection_loss(scores, labels, target)
    f = torch.nn.functional.softplus
    want = (f(torch.tensor(-2.0)) + f(torch.tensor(-1.0)) + f(torch.tensor(0.5))) / 3
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    empty = entity_selection_loss(torch.zeros(1, 2), torch.zeros(1, 4, 4, dtype=torch.long), target)
    assert empty.item() == 0.0


# ---------------------------------------------------------------- wiring and config
def test_paper_configs_have_no_entity_head() -> None:
    for name in ("entitwist_swinb_bert", "entitwist_swinb_clip", "entitwist_swinb_bert_baseline"):
        assert get_config(name).decoder.entity_head_layers == 0
    assert get_config("entitwist_tiny").decoder.entity_head_layers > 0


def test_model_logits_are_decoder_logits_plus_the_entity_map() -> None:
    torch.manual_seed(0)
    model = create_model("entitwist_tiny", pretrained=False, img_size=64).eval()
    assert model.entity_head is not None
    image = torch.randn(2, 3, 64, 64)
    ids = torch.randint(5, 50, (2, 8))
    am = torch.ones(2, 8, dtype=torch.long)
    ents = torch.randint(0, 6, (2, 64, 64))
    with torch.no_grad():
        model.entity_head.mix.fill_(-float("inf"))  # alpha = 0: no full-resolution refinement
        out = model(image, ids, am, ents, return_intermediates=True)
        scores = out["entity_scores"]
        assert scores.shape == (2, 5) and (scores != 0).all()
        # rerun with the head silenced: the difference is exactly the upsampled entity map
        model.entity_head.score.weight.zero_()
        model.entity_head.score.bias.zero_()
        plain = model(image, ids, am, ents)
        area = entity_area_maps(ents, 5, (16, 16))
        bias = torch.nn.functional.interpolate(
            entity_logit_map(scores, area)[:, None], size=(64, 64), mode="bilinear"
        )[:, 0]
        diff = out["logits"] - plain
        assert torch.allclose(diff[:, 0], torch.zeros_like(bias), atol=1e-5)
        assert torch.allclose(diff[:, 1], bias, atol=1e-5)
        # no entity map: the head is skipped
        none = model(image, ids, am, None, return_intermediates=True)
        assert none["entity_scores"] is None


def test_refine_logits_matches_a_loop_and_its_limits() -> None:
    torch.manual_seed(0)
    head = EntityHead(4, 4, dim=8, layers=1, heads=2)
    labels = torch.randint(0, 4, (2, 6, 6))
    labels[1] = labels[1].clamp(max=2)
    logits = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        head.mix.fill_(0.3)
        got = head.refine_logits(logits, labels)
    alpha = torch.sigmoid(torch.tensor(0.3))
    d = logits[:, 1] - logits[:, 0]
    for b in range(2):
        for y in range(6):
            for x in range(6):
                k = labels[b, y, x]
                want = d[b, y, x]
                if k > 0:
                    mean = d[b][labels[b] == k].mean()
                    want = want + alpha * (mean - want)
                assert got[b, 1, y, x] - got[b, 0, y, x] == pytest.approx(want.item(), abs=1e-5)
    assert torch.equal(got[:, 0], logits[:, 0])
    with torch.no_grad():
        head.mix.fill_(50.0)  # alpha = 1: every entity is in or out as a whole
        snapped = head.refine_logits(logits, labels)
    margin = snapped[:, 1] - snapped[:, 0]
    for k in range(1, 4):
        vals = margin[0][labels[0] == k]
        assert torch.allclose(vals, vals[0].expand_as(vals), atol=1e-5)
    assert torch.allclose(margin[labels == 0], d[labels == 0])  # no entity: unchanged
    # differentiable in the logits and in mix
    logits.requires_grad_(True)
    head.refine_logits(logits, labels)[:, 1].sum().backward()
    assert logits.grad is not None and head.mix.grad is not None


def test_entity_head_config_errors() -> None:
    cfg = get_config("entitwist_tiny")
    with pytest.raises(ConfigError, match="entity_head_layers"):
        cfg.replace(decoder__entity_head_layers=-1)
    with pytest.raises(ConfigError, match="divide"):
        cfg.replace(decoder__entity_head_dim=30, decoder__entity_head_heads=4)
    # off: the head's width is not checked and no parameters are made
    off = cfg.replace(decoder__entity_head_layers=0, decoder__entity_head_dim=30)
    model = create_model("entitwist_tiny", pretrained=False, decoder__entity_head_layers=0)
    assert model.entity_head is None
    assert not any(k.startswith("entity_head") for k in model.state_dict())
    assert ModelConfig.from_dict(off.to_dict()) == off


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("weight", [0.0, 2.5])
def test_training_step_adds_the_weighted_selection_loss(
    weight: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from entitwist.models.loss import referring_loss
    from entitwist.train.module import EntiTwistModule

    torch.manual_seed(0)
    module = EntiTwistModule(
        "entitwist_tiny", {"img_size": 64}, pretrained=False, entity_loss_weight=weight
    )
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "optimizers", lambda: SimpleNamespace(param_groups=[{"lr": 1.0}]))
    module.eval()  # no batch-norm updates between the step and the check
    tok = module.tokenizer(["the car on the left", "all the tanks"])
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 10:20, 10:20] = 1
    batch = {
        "image": torch.randn(2, 3, 64, 64),
        "entities": torch.randint(0, 6, (2, 64, 64)),
        "mask": mask,
        **tok,
    }
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        logits, scores = module(batch, return_entity_scores=True)
    want = referring_loss(logits, mask, dice_weight=module.dice_weight)
    want = want + weight * entity_selection_loss(scores, batch["entities"], mask)
    assert scores.shape == (2, 5)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    if weight:
        assert loss.item() > referring_loss(logits, mask, dice_weight=module.dice_weight).item()


def test_negative_entity_loss_weight_is_refused() -> None:
    from entitwist.train.module import EntiTwistModule

    with pytest.raises(ConfigError, match="entity_loss_weight"):
        EntiTwistModule("entitwist_tiny", pretrained=False, entity_loss_weight=-1.0)


def test_head_uses_the_pixel_decoders_evidence() -> None:
    torch.manual_seed(0)
    head = EntityHead(12, 10, dim=16, layers=1, heads=4).eval()
    _, area, feats, words, mask = _inputs()
    fg = torch.rand(2, 8, 8)
    base = head(feats, area, words, mask, fg)
    assert not torch.allclose(head(feats, area, words, mask, 1 - fg), base, atol=1e-4)
    assert torch.allclose(head(feats, area, words, mask, fg.clone()), base)
