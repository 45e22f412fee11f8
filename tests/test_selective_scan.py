"""Tests for entitwist.ops.selective_scan: the chunked scan against its sequential twin."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import entitwist.ops._chunked as chunked
from entitwist.errors import InputError
from entitwist.ops import selective_scan_fn, selective_scan_ref

TOL = 1e-5  # norm-based relative error against the float64 sequential reference


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if b.norm() > 0 else float(a.norm())


def make_bc(mode: str, batch: int, dim: int, dstate: int, length: int, groups: int):
    if mode == "fixed":
        return torch.randn(dim, dstate)
    if mode == "variable":
        return torch.randn(batch, dstate, length)
    return torch.randn(batch, groups, dstate, length)


def make_inputs(
    batch, dim, length, dstate, b_mode="variable", c_mode="variable", groups=1,
    use_d=True, use_z=True, use_bias=True, delta_scale=0.5,
):  # fmt: skip
    args = {
        "u": torch.randn(batch, dim, length),
        "delta": delta_scale * torch.rand(batch, dim, length),
        "A": -0.5 - 2.0 * torch.rand(dim, dstate),
        "B": make_bc(b_mode, batch, dim, dstate, length, groups),
        "C": make_bc(c_mode, batch, dim, dstate, length, groups),
        "D": torch.randn(dim) if use_d else None,
        "z": torch.randn(batch, dim, length) if use_z else None,
        "delta_bias": 0.5 * torch.randn(dim) if use_bias else None,
    }
    return args


def check_against_reference(args, softplus, chunk=None, last_state=True):
    """Forward, last state and every input gradient of the chunked scan vs float64 ref."""
    names = [k for k, v in args.items() if v is not None]
    fast_in = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in args.items()}
    ref_in = {k: (v.double().requires_grad_() if v is not None else None) for k, v in args.items()}
    out, last = chunked.selective_scan_chunked(
        **fast_in, delta_softplus=softplus, return_last_state=True, chunk=chunk
    )
    out_ref, last_ref = selective_scan_ref(
        **ref_in, delta_softplus=softplus, return_last_state=True
    )
    assert out.dtype == torch.float32 and out_ref.dtype == torch.float64
    assert out.shape == out_ref.shape and last.shape == last_ref.shape
    assert rel_err(out, out_ref) < TOL
    assert rel_err(last, last_ref) < TOL
    g_out = torch.randn_like(out_ref)
    g_last = torch.randn_like(last_ref) if last_state else torch.zeros_like(last_ref)
    loss = (out * g_out.float()).sum() + (last * g_last.float()).sum()
    loss_ref = (out_ref * g_out).sum() + (last_ref * g_last).sum()
    grads = torch.autograd.grad(loss, [fast_in[k] for k in names])
    grads_ref = torch.autograd.grad(loss_ref, [ref_in[k] for k in names])
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert g.shape == g_ref.shape, name
        assert rel_err(g, g_ref) < TOL, (name, rel_err(g, g_ref))


CASES = [  # (batch, D, L, N), B form, C form, groups, options
    ((2, 8, 100, 4), "variable", "variable", 1, "all"),  # L not a multiple of any chunk
    ((2, 8, 100, 4), "variable", "variable", 1, "none"),
    ((2, 8, 1, 4), "variable", "variable", 1, "all"),  # a single step
    ((2, 8, 1, 4), "fixed", "grouped", 2, "z_softplus"),
    ((2, 6, 37, 1), "variable", "variable", 1, "all"),  # N = 1
    ((2, 6, 37, 1), "grouped", "fixed", 3, "d_only"),
    ((2, 6, 45, 3), "fixed", "fixed", 1, "all"),  # not input-dependent
    ((2, 6, 45, 3), "fixed", "fixed", 1, "none"),
    ((1, 8, 64, 5), "grouped", "grouped", 2, "all"),  # grouped B and C
    ((1, 8, 64, 5), "grouped", "grouped", 4, "z_softplus"),
    ((2, 12, 33, 2), "grouped", "variable", 3, "all"),
    ((2, 12, 33, 2), "variable", "grouped", 4, "d_only"),
    ((2, 6, 29, 4), "fixed", "grouped", 6, "all"),  # one channel per group
    ((3, 4, 70, 8), "variable", "fixed", 1, "z_softplus"),
    ((2, 12, 50, 3), "grouped", "grouped", 2, "none"),  # B and C with different groups
]
OPTIONS = {  # use D, use z, use delta_bias, delta_softplus
    "all": (True, True, True, True),
    "none": (False, False, False, False),
    "d_only": (True, False, False, False),
    "z_softplus": (False, True, False, True),
}


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_reference(case: int) -> None:
    shape, b_mode, c_mode, groups, options = CASES[case]
    torch.manual_seed(case)
    use = OPTIONS[options]
    args = make_inputs(*shape, b_mode, c_mode, groups, use_d=use[0], use_z=use[1], use_bias=use[2])
    check_against_reference(args, softplus=use[3])


def test_different_group_counts_for_b_and_c() -> None:
    torch.manual_seed(99)
    args = make_inputs(2, 12, 40, 3, "grouped", "grouped", groups=2)
    args["C"] = torch.randn(2, 3, 3, 40)  # B in 2 groups, C in 3 groups
    check_against_reference(args, softplus=True)


@pytest.mark.parametrize("chunk", [1, 2, 3, 8, 32])
def test_every_chunking_matches_reference(chunk: int) -> None:
    # 41 = 5 * 8 + 1: the last chunk is a single step for several chunk lengths.
    torch.manual_seed(chunk)
    args = make_inputs(2, 6, 41, 4, "variable", "grouped", groups=2)
    check_against_reference(args, softplus=True, chunk=chunk)


def test_chunk_choice_and_stiff_decays() -> None:
    # The chunk length follows the working memory only: a power of two in 8..256 (at most L)
    # with one (batch, T, D, N) chunk tensor near 2**18 elements.
    assert chunked.choose_chunk(8, 512, 16, 2048) == 8
    assert chunked.choose_chunk(1, 512, 16, 2048) == 32
    assert chunked.choose_chunk(1, 8, 4, 2048) == 256
    assert chunked.choose_chunk(64, 4096, 16, 2048) == 8
    assert chunked.choose_chunk(1, 8, 4, 5) == 5
    torch.manual_seed(5)
    A = -torch.arange(1.0, 17.0).repeat(8, 1)  # (D, N), A down to -16 as in Mamba's init
    # Huge steps (|delta A| up to 800 per step, decays below 1e-300) in long chunks: the
    # recurrence is stepped, not a ratio of cumulative decays, so still exact and finite.
    args = make_inputs(2, 8, 50, 16, use_bias=False, delta_scale=50.0)
    args["A"] = A
    check_against_reference(args, softplus=False, chunk=32)
    # A mix: most channels slow, one channel stiff.
    args = make_inputs(2, 8, 90, 16, use_bias=False, delta_scale=0.02)
    args["A"] = A
    args["delta"][:, 3] *= 500.0
    check_against_reference(args, softplus=False, chunk=64)


def _scan_of(names: list[str], chunk: int):
    def fn(*tensors):
        kw = dict(zip(names, tensors))
        return chunked.selective_scan_chunked(
            **kw, delta_softplus=True, return_last_state=True, chunk=chunk
        )

    return fn


def test_gradcheck_float64() -> None:
    torch.manual_seed(7)
    # Full (every-entry) Jacobian on a tiny case: chunks of 2 over L = 5 (the last is 1 step).
    tiny = make_inputs(1, 2, 5, 2, "variable", "grouped", groups=2)
    tiny = {k: v.double().requires_grad_() for k, v in tiny.items()}
    fn = _scan_of(list(tiny), chunk=2)
    assert torch.autograd.gradcheck(fn, tuple(tiny.values()), eps=1e-6, atol=1e-6)
    # Randomised (fast-mode) checks on larger cases.
    args = make_inputs(2, 4, 9, 3, "grouped", "variable", groups=2)
    args = {k: v.double().requires_grad_() for k, v in args.items()}
    fn = _scan_of(list(args), chunk=4)
    assert torch.autograd.gradcheck(fn, tuple(args.values()), eps=1e-6, atol=1e-6, fast_mode=True)
    fixed = make_inputs(1, 3, 5, 2, "fixed", "fixed", use_z=False, use_bias=False)
    fixed = {k: v.double().requires_grad_() for k, v in fixed.items() if v is not None}
    assert torch.autograd.gradcheck(
        lambda *t: selective_scan_fn(*t, return_last_state=True),
        tuple(fixed.values()),
        fast_mode=True,
    )


def test_reference_by_hand() -> None:
    # One channel, one state, two steps: h1 = d1 b1 u1, h2 = e^{d2 a} h1 + d2 b2 u2.
    u = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[3.0, -1.0]]], dtype=torch.float64)  # (batch, N, L)
    C = torch.tensor([[[2.0, 4.0]]], dtype=torch.float64)
    D = torch.tensor([0.5], dtype=torch.float64)
    z = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    h1 = 0.5 * 3.0 * 1.0
    h2 = math.exp(0.25 * -2.0) * h1 + 0.25 * -1.0 * 2.0
    silu1 = 1.0 / (1.0 + math.exp(-1.0))
    expected = torch.tensor([[[(2 * h1 + 0.5) * 0.0, (4 * h2 + 1.0) * silu1]]])
    for fn in (selective_scan_ref, selective_scan_fn):
        out, last = fn(u, delta, A, B, C, D, z, return_last_state=True)
        torch.testing.assert_close(out, expected.double())
        torch.testing.assert_close(last, torch.tensor([[[h2]]], dtype=torch.float64))
    # delta_bias then softplus.
    bias = torch.tensor([0.3], dtype=torch.float64)
    out = selective_scan_fn(u, delta, A, B, C, delta_bias=bias, delta_softplus=True)
    d = F.softplus(delta + 0.3)[0, 0]
    g1 = d[0] * 3.0
    g2 = torch.exp(-2.0 * d[1]) * g1 - d[1] * 2.0
    torch.testing.assert_close(out[0, 0], torch.stack([2 * g1, 4 * g2]))


def test_dtypes_follow_u() -> None:
    torch.manual_seed(11)
    args = make_inputs(2, 4, 20, 3)
    half = {k: v.to(torch.bfloat16).requires_grad_() for k, v in args.items()}
    out, last = selective_scan_fn(**half, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    ref = selective_scan_ref(**{k: v.detach() for k, v in half.items()}, delta_softplus=True)
    assert ref.dtype == torch.bfloat16
    assert rel_err(out.float(), ref.float()) < 1e-2
    out.float().sum().backward()
    assert half["u"].grad.dtype == torch.bfloat16 and torch.isfinite(half["A"].grad).all()
    dbl = {k: v.double() for k, v in args.items()}
    assert selective_scan_fn(**dbl).dtype == torch.float64


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_exact_under_autocast(amp_dtype: torch.dtype) -> None:
    # Mixed-precision training calls the scan inside autocast with float32 inputs: forward,
    # last state and every gradient (backward also inside the region) keep float32 accuracy.
    torch.manual_seed(21)
    args = make_inputs(2, 8, 100, 4, "variable", "grouped", groups=2)
    with torch.autocast("cpu", dtype=amp_dtype):
        check_against_reference(args, softplus=True)
        out, last = selective_scan_fn(**args, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.float32 and last.dtype == torch.float32
    ref, last_ref = selective_scan_ref(
        **{k: v.double() for k, v in args.items()}, delta_softplus=True, return_last_state=True
    )
    assert rel_err(out, ref) < TOL and rel_err(last, last_ref) < TOL
    # half inputs under autocast: output in the input dtype, last state float32
    half = {k: v.to(amp_dtype) for k, v in args.items()}
    with torch.autocast("cpu", dtype=amp_dtype):
        out, last = selective_scan_fn(**half, delta_softplus=True, return_last_state=True)
    assert out.dtype == amp_dtype and last.dtype == torch.float32


def test_signature_is_mamba_ssm() -> None:
    params = inspect.signature(selective_scan_fn).parameters
    assert list(params) == [
        "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
        "return_last_state",
    ]  # fmt: skip
    defaults = [p.default for p in params.values()][5:]
    assert defaults == [None, None, None, False, False]
    assert list(inspect.signature(selective_scan_ref).parameters) == list(params)


def test_bad_input() -> None:
    args = make_inputs(2, 4, 6, 3)
    with pytest.raises(InputError, match="u must be"):
        selective_scan_fn(**{**args, "u": args["u"][0]})
    with pytest.raises(InputError, match="delta must"):
        selective_scan_fn(**{**args, "delta": args["delta"][:, :, :5]})
    with pytest.raises(InputError, match="B must be"):
        selective_scan_fn(**{**args, "B": torch.randn(2, 3, 3, 6)})  # 3 groups, D = 4
    with pytest.raises(InputError, match="C must be"):
        selective_scan_fn(**{**args, "C": torch.randn(2, 5, 6)})
    with pytest.raises(InputError, match="A must be"):
        selective_scan_fn(**{**args, "A": torch.randn(3, 3)})
    with pytest.raises(InputError, match="L = 0"):
        selective_scan_fn(
            **{k: (v[..., :0] if k in "u delta z B C" else v) for k, v in args.items()}
        )
    with pytest.raises(InputError, match="D must be"):
        selective_scan_ref(**{**args, "D": torch.randn(5)})
