"""Tri-modal feature cube (eq. 5-6)."""

from __future__ import annotations

import math

import pytest
import torch

from entitwist.errors import InputError
from entitwist.models.cube import TriModalCube


def _inputs(b: int = 2, d: int = 8, dt: int = 6, n: int = 5, h: int = 4, w: int = 3):
    torch.manual_seed(0)
    f = torch.randn(b, d, h, w)
    t = torch.randn(b, n, dt)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[0, 3:] = 0
    mask[1, 1:] = 0
    return f, t, mask


def test_correlation_matches_eq5_per_pixel() -> None:
    f, t, mask = _inputs()
    cube = TriModalCube(8, 6, 5)
    cor = cube.correlation(f, t, mask).detach()
    assert cor.shape == (2, 5, 4, 3)
    fw0 = torch.einsum("bchw,dc->bhwd", f, cube.w0.weight)  # F^in W0, per pixel
    tw1 = t @ cube.w1.weight.T  # T^ori W1, (B, N, d)
    ref = torch.einsum("bhwd,bnd->bnhw", fw0, tw1) / math.sqrt(8)
    ref = ref * mask[:, :, None, None]
    torch.testing.assert_close(cor, ref, rtol=1e-5, atol=1e-5)
    assert float(cor[0, 3:].abs().sum()) == 0 and float(cor[1, 1:].abs().sum()) == 0


def test_cube_layout_and_padding_words() -> None:
    f, t, mask = _inputs()
    cube = TriModalCube(8, 6, 5)
    g = torch.randn_like(f)
    out = cube(f, t, mask, g)
    assert out.shape == (2, 16, 4, 3)
    torch.testing.assert_close(out[:, :8], f + g)  # F^in + G
    torch.testing.assert_close(out[:, 8:], cube.local(cube.correlation(f, t, mask)))  # T^loc
    torch.testing.assert_close(cube(f, t, mask)[:, :8], f)  # G = None -> F^in
    t2 = t.clone()
    t2[0, 3:] = 100 * torch.randn(2, 6)  # change padded words only
    t2[1, 1:] = -7.0
    torch.testing.assert_close(cube(f, t2, mask, g), out)
    t3 = t.clone()
    t3[0, 0] += 1.0  # a real word changes the text half
    assert not torch.allclose(cube(f, t3, mask, g)[0, 8:], out[0, 8:])


def test_short_text_is_padded_and_long_text_rejected() -> None:
    f, t, mask = _inputs(n=3)
    cube = TriModalCube(8, 6, 5)
    padded_t = torch.cat([t, torch.randn(2, 2, 6)], dim=1)
    padded_m = torch.cat([mask, torch.zeros(2, 2, dtype=torch.long)], dim=1)
    torch.testing.assert_close(cube(f, t, mask), cube(f, padded_t, padded_m))
    with pytest.raises(InputError, match="at most 5"):
        cube(f, torch.randn(2, 6, 6), torch.ones(2, 6))


def test_cube_gradients_reach_parameters() -> None:
    f, t, mask = _inputs()
    cube = TriModalCube(8, 6, 5)
    f.requires_grad_(True)
    cube(f, t, mask).square().sum().backward()
    for name, p in cube.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert torch.isfinite(f.grad).all()
