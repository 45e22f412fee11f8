"""Tests for entitwist.models.mamba (Mamba / BiMamba blocks).

The blocks are held against :func:`mamba_reference`, a plainly written Mamba layer in float64
that shares only the weights (mamba-ssm's ``mamba_simple.py`` reference path, step by step:
``in_proj`` -> (x, z) -> causal depthwise conv -> SiLU -> ``x_proj`` -> (dt, B, C) ->
softplus(``dt_proj``) -> sequential scan -> D skip -> * SiLU(z) -> ``out_proj``).
``tests/test_dat.py`` reuses it for eq. 7's channel scan.
"""

from __future__ import annotations

import pytest
import torch

import entitwist.models.mamba as mamba_mod
from entitwist.errors import InputError
from entitwist.models.mamba import BiMamba, Mamba
from entitwist.ops import selective_scan_ref


def silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(x))


def mamba_reference(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One Mamba layer written out step by step; ``params`` by the layer's parameter names.

    Args:
        params: ``in_proj.weight`` (2E, M), ``conv1d.weight`` (E, 1, K), ``conv1d.bias`` (E,),
            ``x_proj.weight`` (R + 2N, E), ``dt_proj.weight`` (E, R), ``dt_proj.bias`` (E,),
            ``A_log`` (E, N), ``D`` (E,), ``out_proj.weight`` (M, E).
        x: (batch, L, M).
    """
    e, n = params["A_log"].shape
    k = params["conv1d.weight"].shape[-1]
    r = params["dt_proj.weight"].shape[1]
    batch, length, _ = x.shape
    xz = x @ params["in_proj.weight"].T  # (batch, L, 2E)
    u, z = xz[..., :e], xz[..., e:]  # the first half is the scanned input, the second the gate
    # causal depthwise convolution: out[t] = bias + sum_j w[j] * u[t - (K - 1) + j], zero before 0
    w = params["conv1d.weight"][:, 0, :]  # (E, K)
    conv = []
    for t in range(length):
        acc = params["conv1d.bias"].expand(batch, e).clone()
        for j in range(k):
            src = t - (k - 1) + j
            if src >= 0:
                acc = acc + w[:, j] * u[:, src]
        conv.append(acc)
    u = silu(torch.stack(conv, 1))  # (batch, L, E)
    proj = u @ params["x_proj.weight"].T  # (batch, L, R + 2N)
    dt_low, b_in, c_out = proj[..., :r], proj[..., r : r + n], proj[..., r + n :]
    dt = softplus(dt_low @ params["dt_proj.weight"].T + params["dt_proj.bias"])  # (batch, L, E)
    a = -torch.exp(params["A_log"])  # (E, N)
    h = torch.zeros(batch, e, n, dtype=x.dtype)
    ys = []
    for t in range(length):
        h = (
            torch.exp(dt[:, t, :, None] * a) * h
            + (dt[:, t] * u[:, t])[..., None] * b_in[:, t, None]
        )
        ys.append((h * c_out[:, t, None]).sum(-1) + params["D"] * u[:, t])
    y = torch.stack(ys, 1) * silu(z)  # (batch, L, E)
    return y @ params["out_proj.weight"].T


def bimamba_reference(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """BiMamba: ``forward_layer.*`` on x plus ``backward_layer.*`` on x reversed, reversed back."""

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}

    backward = mamba_reference(sub("backward_layer."), x.flip(1)).flip(1)
    return mamba_reference(sub("forward_layer."), x) + backward


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its structured init (D = 1, A_log = log(1..N) per channel), so
    that a bug which the init hides (a skipped D, a transposed A) still shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))
            if name.endswith("dt_proj.bias"):  # keep steps in the init's range, now varied
                p.copy_(torch.empty(p.shape).uniform_(-6.0, -1.0, generator=g))


def double_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().double().requires_grad_() for n, p in module.named_parameters()}


@pytest.mark.parametrize("d_conv", [4, 2])
def test_mamba_layer_matches_plain_reference(d_conv: int) -> None:
    torch.manual_seed(10)
    layer = Mamba(12, d_state=5, d_conv=d_conv, expand=2)
    randomise(layer, 1)
    x = torch.randn(2, 19, 12, requires_grad=True)
    y = layer(x)
    params = double_params(layer)
    x64 = x.detach().double().requires_grad_()
    ref = mamba_reference(params, x64)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)
    # gradients of input and of every weight, against the reference's
    gy = torch.randn_like(ref)
    (y.double() * gy).sum().backward()
    (ref * gy).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad.double(), params[name].grad, rtol=1e-3, atol=1e-5)


def test_bimamba_matches_plain_reference() -> None:
    torch.manual_seed(11)
    block = BiMamba(16, d_state=4)
    randomise(block, 2)
    x = torch.randn(2, 23, 16, requires_grad=True)
    y = block(x)
    params = double_params(block)
    x64 = x.detach().double().requires_grad_()
    ref = bimamba_reference(params, x64)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)
    gy = torch.randn_like(ref)
    (y.double() * gy).sum().backward()
    (ref * gy).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    for name, p in block.named_parameters():
        torch.testing.assert_close(p.grad.double(), params[name].grad, rtol=1e-3, atol=1e-5)


def test_bimamba_at_init_matches_plain_reference() -> None:
    """The untouched init too (its dt bias is what softplus inverts)."""
    torch.manual_seed(12)
    block = BiMamba(8, d_state=4)
    x = torch.randn(1, 15, 8)
    with torch.no_grad():
        ref = bimamba_reference(double_params(block), x.double())
        torch.testing.assert_close(block(x).double(), ref, rtol=1e-4, atol=1e-6)


def test_reference_is_causal_and_order_sensitive() -> None:
    """The reference itself: the forward direction ignores the future, reversing changes it."""
    torch.manual_seed(13)
    layer = Mamba(8, d_state=4)
    params = {n: p.detach().double() for n, p in layer.named_parameters()}
    x = torch.randn(1, 10, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 7:] += 1.0
    y, y2 = mamba_reference(params, x), mamba_reference(params, x2)
    torch.testing.assert_close(y[:, :7], y2[:, :7])
    assert (y[:, 7:] - y2[:, 7:]).abs().max() > 1e-4


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
