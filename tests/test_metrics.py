"""ReferringMetrics against a plain numpy twin of LAVT's evaluation loop, and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entitwist.errors import ConfigError, InputError
from entitwist.metrics import (
    ReferringMetrics,
    intersection_union,
    metric_names,
    upsample_to_original,
)


def reference(preds: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, float]:
    """LAVT's loop, one expression at a time, in plain numpy and Python floats."""
    cum_i = cum_u = 0
    ious = []
    for p, t in zip(preds, targets):
        i = int(np.logical_and(p, t).sum())
        u = int(np.logical_or(p, t).sum())
        cum_i += i
        cum_u += u
        ious.append(0.0 if u == 0 else i / u)
    out = {
        f"Pr@{x:g}": 100.0 * sum(v >= x for v in ious) / len(ious)
        for x in (0.5, 0.6, 0.7, 0.8, 0.9)
    }
    out["oIoU"] = 100.0 * cum_i / cum_u if cum_u else 0.0
    out["mIoU"] = 100.0 * sum(ious) / len(ious)
    return out


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()}


def test_names_in_paper_order():
    assert metric_names() == ["Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU"]


@pytest.mark.parametrize("seed", range(6))
def test_matches_numpy_reference_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    metric = ReferringMetrics()
    preds, targets = [], []
    for _ in range(int(rng.integers(1, 5))):  # several updates, each its own shape
        b, h, w = (int(v) for v in rng.integers(1, 7, size=3) * (1, 3, 3))
        # Overlapping blobs so every IoU bucket occurs; some masks empty.
        t = rng.random((b, h, w)) < rng.uniform(0, 0.6, size=(b, 1, 1))
        noise = rng.random((b, h, w)) < rng.uniform(0, 0.4, size=(b, 1, 1))
        p = np.where(rng.random((b, 1, 1)) < 0.15, False, t ^ noise)
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
        preds.extend(p)
        targets.extend(t)
    got = as_floats(metric.compute())
    want = reference(preds, targets)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


def test_hand_cases():
    # 4 expressions on 2x5 masks.
    t = torch.zeros(4, 2, 5, dtype=torch.bool)
    p = torch.zeros_like(t)
    t[0, 0, :] = True  # 5 px
    p[0, 0, :4] = True  # I=4 U=5 -> 0.8
    t[1, :, :] = True  # 10 px
    p[1, 0, :] = True  # I=5 U=10 -> 0.5
    # sample 2: both empty -> U=0 -> IoU 0 (LAVT convention)
    t[3, 1, 0] = True  # I=0 U=2 -> 0
    p[3, 1, 1] = True
    m = ReferringMetrics()
    m.update(p, t)
    r = as_floats(m.compute())
    assert r["mIoU"] == pytest.approx(100 * (0.8 + 0.5 + 0 + 0) / 4)
    assert r["oIoU"] == pytest.approx(100 * (4 + 5 + 0 + 0) / (5 + 10 + 0 + 2))
    assert r["Pr@0.5"] == pytest.approx(50.0)
    assert r["Pr@0.6"] == pytest.approx(25.0)
    assert r["Pr@0.8"] == pytest.approx(25.0)  # IoU exactly 0.8 counts (>=)
    assert r["Pr@0.9"] == pytest.approx(0.0)


def test_perfect_and_empty():
    t = torch.rand(3, 8, 8) > 0.5
    m = ReferringMetrics()
    m.update(t, t)
    assert all(v == pytest.approx(100.0) for v in as_floats(m.compute()).values())
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert all(math.isnan(v) for v in as_floats(m.compute()).values())
    # all predictions and targets empty: U = 0 everywhere -> 0, not NaN
    z = torch.zeros(2, 4, 4, dtype=torch.bool)
    m.update(z, z)
    assert all(v == 0.0 for v in as_floats(m.compute()).values())


def test_duplicate_indices_counted_once():
    t = torch.zeros(3, 4, 4, dtype=torch.bool)
    t[:, :2] = True
    good, bad = t.clone(), torch.zeros_like(t)
    m = ReferringMetrics()
    m.update(good[:2], t[:2], indices=torch.tensor([0, 1]))
    m.update(bad[:1], t[:1], indices=torch.tensor([5]))
    m.update(good[:1], t[:1], indices=torch.tensor([0]))  # padding duplicate of sample 0
    assert float(m.compute()["mIoU"]) == pytest.approx(100 * 2 / 3)


def test_shape_mismatch_and_bad_protocol():
    with pytest.raises(InputError, match="differ in shape"):
        intersection_union(
            torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 5, dtype=torch.bool)
        )
    with pytest.raises(ConfigError, match="protocol"):
        ReferringMetrics(protocol="coco")
    assert ReferringMetrics(protocol="original").protocol == "original"


def test_upsample_to_original_logits_and_masks():
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 1, :2, :] = 5.0  # top half foreground
    logits[0, 0] = 0.0
    up = upsample_to_original(logits, (8, 6))
    assert up.shape == (1, 8, 6) and up.dtype == torch.bool
    assert up[0, :3].all() and not up[0, 5:].any()
    mask = torch.zeros(2, 2, dtype=torch.bool)
    mask[0, 1] = True
    up_mask = upsample_to_original(mask, (4, 4))
    assert up_mask.shape == (4, 4)
    assert up_mask[:2, 2:].all() and up_mask.sum() == 4
    # unbatched logits
    assert upsample_to_original(logits[0], (3, 5)).shape == (3, 5)


def test_original_protocol_end_to_end_matches_reference():
    """Per-sample upsampling to different original sizes, scored like LAVT at full size."""
    rng = np.random.default_rng(0)
    metric = ReferringMetrics(protocol="original")
    preds, targets = [], []
    for h, w in [(10, 12), (7, 7), (16, 9)]:
        logits = torch.from_numpy(rng.normal(size=(1, 2, 4, 4)).astype(np.float32))
        orig = torch.from_numpy(rng.random((h, w)) < 0.4)
        p = upsample_to_original(logits, (h, w))
        metric.update(p, orig[None])
        preds.append(p[0].numpy())
        targets.append(orig.numpy())
    got = as_floats(metric.compute())
    want = reference(preds, targets)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9)
