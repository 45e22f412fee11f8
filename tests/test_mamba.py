"""Tests for entitwist.models.mamba (Mamba / BiMamba blocks)."""

from __future__ import annotations

import pytest
import torch

import entitwist.models.mamba as mamba_mod
from entitwist.errors import InputError
from entitwist.models.mamba import BiMamba, Mamba
from entitwist.ops import selective_scan_ref


def test_shapes_and_init() -> None:
    torch.manual_seed(0)
    block = BiMamba(32, d_state=8, d_conv=4, expand=2)
    x = torch.randn(2, 11, 32)
    y = block(x)
    assert y.shape == (2, 11, 32)
    assert torch.isfinite(y).all()
    layer = block.forward_layer
    assert layer.dt_rank == 2 and layer.d_inner == 64
    # A_log = log(1..N) per channel, D = 1, both fp32 and excluded from weight decay.
    expected = torch.log(torch.arange(1, 9, dtype=torch.float32)).expand(64, 8)
    torch.testing.assert_close(layer.A_log.data, expected)
    assert layer.A_log.dtype == torch.float32 and layer.D.dtype == torch.float32
    assert layer.A_log._no_weight_decay and layer.D._no_weight_decay
    # softplus(dt bias) lies in the init range [1e-3, 1e-1].
    dt = torch.nn.functional.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    # Separate parameters per direction.
    assert block.forward_layer.A_log is not block.backward_layer.A_log
    names = [n for n, p in block.named_parameters() if getattr(p, "_no_weight_decay", False)]
    assert sorted(names) == sorted(
        ["forward_layer.A_log", "forward_layer.D", "backward_layer.A_log", "backward_layer.D"]
    )


def test_gradients_flow() -> None:
    torch.manual_seed(1)
    block = BiMamba(16, d_state=4)
    x = torch.randn(2, 9, 16, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_directions_see_past_and_future() -> None:
    torch.manual_seed(2)
    block = BiMamba(16, d_state=4).eval()
    x = torch.randn(1, 12, 16)
    x2 = x.clone()
    x2[:, -1] += 10.0  # change the last token
    with torch.no_grad():
        y, y2 = block(x), block(x2)
        f, f2 = block.forward_layer(x), block.forward_layer(x2)
        b, b2 = block.backward_layer(x.flip(1)), block.backward_layer(x2.flip(1))
    # The forward layer is causal: earlier outputs do not see the last token...
    torch.testing.assert_close(f[:, :-1], f2[:, :-1])
    # ...the reversed one does, so the first output of the block changes.
    assert (b[:, -1] - b2[:, -1]).abs().max() > 1e-5
    assert (y[:, 0] - y2[:, 0]).abs().max() > 1e-5
    # Changing the first token changes the last output through the forward layer.
    x3 = x.clone()
    x3[:, 0] += 10.0
    with torch.no_grad():
        assert (block(x3)[:, -1] - y[:, -1]).abs().max() > 1e-5


def test_block_scan_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    block = BiMamba(24, d_state=8)
    x = torch.randn(2, 37, 24, requires_grad=True)
    y = block(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    monkeypatch.setattr(mamba_mod, "selective_scan_fn", selective_scan_ref)
    y_ref = block(x)
    (gx_ref,) = torch.autograd.grad(y_ref.sum(), x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-6)


def test_single_layer_bad_input() -> None:
    layer = Mamba(8)
    with pytest.raises(InputError, match="expected input"):
        layer(torch.randn(2, 8))
    with pytest.raises(InputError, match="expected input"):
        BiMamba(8)(torch.randn(1, 3, 7))
