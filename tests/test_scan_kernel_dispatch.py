"""selective_scan_fn's dispatch to mamba-ssm's CUDA kernel, checked with a stand-in kernel.

No GPU and no mamba-ssm here: a stand-in ``mamba_ssm.ops.selective_scan_interface`` (the
interface's tensor preparation, as in mamba-ssm) and a stand-in ``selective_scan_cuda`` whose
``fwd`` applies the checks of ``csrc/selective_scan/selective_scan.cpp`` (dtypes, shapes,
groups, strides), records every call and computes its result with the reference loop. The
device check is patched so CPU tensors claim to be on CUDA.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import entitwist.ops._mamba_ssm as kernel_mod
from entitwist.errors import InputError
from entitwist.ops import cuda_kernel_available, selective_scan_fn, selective_scan_ref

FWD_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus")
INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def torch_check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"stand-in selective_scan_cuda: {what}")


@dataclass
class StandIn:
    """The two stand-in modules and what they were called with."""

    interface_calls: list[tuple[Any, ...]] = field(default_factory=list)
    fwd_calls: list[tuple[Any, ...]] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)

    def fwd(self, *args: Any) -> list[torch.Tensor]:
        """selective_scan_cuda.fwd: the checks of selective_scan.cpp, then the reference."""
        torch_check(len(args) == len(FWD_ARGS), f"takes {len(FWD_ARGS)} arguments")
        u, delta, A, B, C, D, z, delta_bias, delta_softplus = args
        self.fwd_calls.append(args)
        itype = u.dtype
        torch_check(itype in INPUT_DTYPES, f"not implemented for input type {itype}")
        torch_check(A.dtype == torch.float32, "A must be float32")
        var_b, var_c = B.dim() >= 3, C.dim() >= 3
        torch_check(delta.dtype == itype, "delta dtype")
        torch_check(B.dtype == (itype if var_b else torch.float32), "B dtype")
        torch_check(C.dtype == (itype if var_c else torch.float32), "C dtype")
        torch_check(all(kernel_mod.is_cuda(t) for t in (u, delta, A, B, C)), "not on CUDA")
        torch_check(u.stride(-1) == 1 and delta.stride(-1) == 1, "u/delta stride")
        batch, dim, length = u.shape
        dstate = A.shape[1]
        groups = B.shape[1] if var_b else 1
        torch_check(dstate <= 256, "state dimension <= 256")
        torch_check(tuple(delta.shape) == (batch, dim, length), "delta shape")
        torch_check(tuple(A.shape) == (dim, dstate), "A shape")
        for t in (B, C):
            if t.dim() >= 3:
                torch_check(tuple(t.shape) == (batch, groups, dstate, length), "B/C shape")
                torch_check(t.stride(-1) == 1, "B/C stride")
            else:
                torch_check(tuple(t.shape) == (dim, dstate), "B/C shape")
        for t in (D, delta_bias):
            if t is not None:
                torch_check(t.dtype == torch.float32 and tuple(t.shape) == (dim,), "D/bias")
                torch_check(t.stride(-1) == 1, "D/bias stride")
        if z is not None:
            torch_check(z.dtype == itype and tuple(z.shape) == (batch, dim, length), "z")
            torch_check(z.stride(-1) == 1, "z stride")
        torch_check(isinstance(delta_softplus, bool), "delta_softplus must be a bool")
        with torch.no_grad():
            out, last = selective_scan_ref(
                u, delta, A, B, C, D, None, delta_bias, delta_softplus, return_last_state=True
            )
        x = torch.zeros(batch, dim, 1, 2 * dstate)  # (batch, D, n_chunks, 2N) as the kernel
        x[:, :, -1, 1::2] = last
        result = [out, x]
        if z is not None:
            result.append(out * F.silu(z.float()).to(itype))
        return result

    def selective_scan_fn(
        self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
        return_last_state=False,
    ):  # fmt: skip
        """mamba_ssm's interface: contiguity fixes, (b, N, L) -> (b, 1, N, L), then fwd."""
        self.interface_calls.append(
            (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        )
        u = u if u.stride(-1) == 1 else u.contiguous()
        delta = delta if delta.stride(-1) == 1 else delta.contiguous()
        D = None if D is None else D.contiguous()
        B = B if B.stride(-1) == 1 else B.contiguous()
        C = C if C.stride(-1) == 1 else C.contiguous()
        z = z if z is None or z.stride(-1) == 1 else z.contiguous()
        B = B[:, None] if B.dim() == 3 else B
        C = C[:, None] if C.dim() == 3 else C
        out, x, *rest = self.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        result = rest[0] if z is not None else out
        self.outputs.append(result)
        return (result, x[:, :, -1, 1::2]) if return_last_state else result


def install(monkeypatch: pytest.MonkeyPatch, stand_in: StandIn, extension: bool = True) -> None:
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = stand_in.selective_scan_fn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mamba_ssm", types.ModuleType("mamba_ssm"))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops", types.ModuleType("mamba_ssm.ops"))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", interface)
    if extension:
        ext = types.ModuleType("selective_scan_cuda")
        ext.fwd = stand_in.fwd  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "selective_scan_cuda", ext)
    else:  # None in sys.modules: `import selective_scan_cuda` raises ImportError
        monkeypatch.setitem(sys.modules, "selective_scan_cuda", None)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """The stand-in kernel installed, and every tensor claiming to be on CUDA."""
    fake = StandIn()
    install(monkeypatch, fake)
    monkeypatch.setattr(kernel_mod, "is_cuda", lambda t: True)
    kernel_mod.load_kernel.cache_clear()
    yield fake
    kernel_mod.load_kernel.cache_clear()


def inputs(
    dtype: torch.dtype = torch.float32, b_form: Any = 1, c_form: Any = 1, dim: int = 12,
    length: int = 9, dstate: int = 3, seed: int = 0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Mamba-like inputs; B/C form: "fixed", 1 for (b, N, L), or G for (b, G, N, L)."""
    g = torch.Generator().manual_seed(seed)
    batch = 2

    def bc(form: Any) -> torch.Tensor:
        if form == "fixed":
            return torch.randn(dim, dstate, generator=g)  # float32, as the kernel wants
        shape = (batch, dstate, length) if form == 1 else (batch, form, dstate, length)
        return torch.randn(*shape, generator=g).to(dtype)

    return {
        "u": torch.randn(batch, dim, length, generator=g).to(dtype),
        "delta": (0.5 * torch.rand(batch, dim, length, generator=g)).to(dtype),
        "A": -0.5 - torch.rand(dim, dstate, generator=g),
        "B": bc(b_form),
        "C": bc(c_form),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g).to(dtype),
        "delta_bias": 0.1 * torch.randn(dim, generator=g),
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def test_the_call_the_cuda_path_makes(stand_in: StandIn) -> None:
    # As the Mamba layer calls it under bf16 autocast: activations bf16, A, D and the bias
    # float32; u handed over as a non-contiguous view.
    args = inputs(torch.bfloat16)
    u_view = args["u"].transpose(1, 2).contiguous().transpose(1, 2)  # same values, stride(-1) != 1
    assert u_view.stride(-1) != 1
    out, last = selective_scan_fn(
        **{**args, "u": u_view}, delta_softplus=True, return_last_state=True
    )
    assert len(stand_in.interface_calls) == 1 and len(stand_in.fwd_calls) == 1
    call = stand_in.interface_calls[0]
    assert len(call) == 10  # mamba-ssm's positional signature, up to return_last_state
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    for name, got in zip(names, call[:8]):
        assert torch.equal(got, args[name]), name  # each tensor in its own slot
        assert got.is_contiguous(), name
        assert got.dtype == args[name].dtype, name
    assert call[8] is True and call[9] is True
    fwd = dict(zip(FWD_ARGS, stand_in.fwd_calls[0]))
    assert [fwd[k].dtype for k in ("u", "delta", "B", "C", "z")] == [torch.bfloat16] * 5
    assert [fwd[k].dtype for k in ("A", "D", "delta_bias")] == [torch.float32] * 3
    assert fwd["B"].shape == (2, 1, 3, 9) and fwd["C"].shape == (2, 1, 3, 9)
    # the result is the kernel's: the stand-in's output object, and the right numbers
    assert out is stand_in.outputs[0]
    ref, last_ref = selective_scan_ref(
        **{k: v.double() for k, v in args.items()}, delta_softplus=True, return_last_state=True
    )
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert rel_err(out, ref) < 2e-2 and rel_err(last, last_ref) < 1e-5


ACCEPTED = {  # dtype, B form, C form
    "float32 variable": (torch.float32, 1, 1),
    "float16 variable": (torch.float16, 1, 1),
    "grouped, same groups": (torch.float32, 3, 3),
    "fixed B, variable C": (torch.float32, "fixed", 1),
    "grouped B, fixed C": (torch.bfloat16, 4, "fixed"),
    "fixed B and C": (torch.float32, "fixed", "fixed"),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_kernel_takes_what_it_accepts(stand_in: StandIn, case: str) -> None:
    dtype, b_form, c_form = ACCEPTED[case]
    args = inputs(dtype, b_form, c_form)
    out = selective_scan_fn(**args, delta_softplus=True)
    assert len(stand_in.fwd_calls) == 1, case
    assert out is stand_in.outputs[0] and out.dtype == dtype
    ref = selective_scan_ref(**{k: v.double() for k, v in args.items()}, delta_softplus=True)
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 2e-2)


def _mixed(args: dict) -> dict:
    return {**args, "B": args["B"].to(torch.bfloat16)}


REFUSED = {  # name: (inputs, change, does the kernel itself raise on them)
    "float64": (lambda: inputs(torch.float64), None, True),
    "mixed dtypes (B bf16, u f32)": (lambda: _mixed(inputs()), None, True),
    "delta bf16, u f32": (lambda: {**inputs(), "delta": inputs()["delta"].bfloat16()}, None, True),
    "D in bf16": (lambda: {**inputs(), "D": inputs()["D"].bfloat16()}, None, True),
    "B and C grouped differently": (lambda: inputs(b_form=2, c_form=3), None, True),
    "fixed B with grouped C": (lambda: inputs(b_form="fixed", c_form=2), None, True),
    "grouped B with (b, N, L) C": (lambda: inputs(b_form=2, c_form=1), None, True),
    "N above 256": (lambda: inputs(dim=2, length=3, dstate=257), None, True),
    "last state with gradients": (lambda: inputs(), "grad", False),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_inputs_run_the_project_scan(stand_in: StandIn, case: str) -> None:
    make, change, kernel_raises = REFUSED[case]
    args = make()
    if kernel_raises:  # the refusal is needed: the kernel itself rejects or misreads these
        with pytest.raises(RuntimeError, match="stand-in"):
            stand_in.selective_scan_fn(**args, delta_softplus=True)
        stand_in.fwd_calls.clear()
    if change == "grad":
        args = {k: v.requires_grad_() for k, v in args.items()}
    out, last = selective_scan_fn(**args, delta_softplus=True, return_last_state=True)
    assert stand_in.fwd_calls == [], case
    ref, last_ref = selective_scan_ref(
        **{k: v.detach().double() for k, v in args.items()},
        delta_softplus=True,
        return_last_state=True,
    )
    assert out.dtype == args["u"].dtype
    assert rel_err(out, ref) < 1e-5 and rel_err(last, last_ref) < 1e-5
    if change == "grad":  # the gradient through the last state reaches the inputs
        (g,) = torch.autograd.grad(last.sum(), [args["B"]])
        (g_ref,) = torch.autograd.grad(
            selective_scan_ref(**args, delta_softplus=True, return_last_state=True)[1].sum(),
            [args["B"]],
        )
        assert g.abs().sum() > 0 and rel_err(g, g_ref) < 1e-5


def test_last_state_without_gradients_uses_the_kernel(stand_in: StandIn) -> None:
    args = {k: v.requires_grad_() for k, v in inputs().items()}
    with torch.no_grad():
        selective_scan_fn(**args, return_last_state=True)
    assert len(stand_in.fwd_calls) == 1


@pytest.mark.parametrize("broken", ["no extension", "extension without fwd", "no interface"])
def test_missing_extension_runs_the_project_scan(
    monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    fake = StandIn()
    install(monkeypatch, fake, extension=broken != "no extension")
    if broken == "extension without fwd":
        monkeypatch.delattr(sys.modules["selective_scan_cuda"], "fwd")
    if broken == "no interface":
        monkeypatch.delattr(
            sys.modules["mamba_ssm.ops.selective_scan_interface"], "selective_scan_fn"
        )
    monkeypatch.setattr(kernel_mod, "is_cuda", lambda t: True)
    kernel_mod.load_kernel.cache_clear()
    try:
        assert not cuda_kernel_available()
        args = inputs()
        out = selective_scan_fn(**args, delta_softplus=True)
    finally:
        kernel_mod.load_kernel.cache_clear()
    assert fake.interface_calls == [] and fake.fwd_calls == []
    ref = selective_scan_ref(**{k: v.double() for k, v in args.items()}, delta_softplus=True)
    assert rel_err(out, ref) < 1e-5


def test_kernel_present_is_detected(stand_in: StandIn) -> None:
    assert cuda_kernel_available()


def test_cpu_tensors_never_reach_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = StandIn()
    install(monkeypatch, fake)
    kernel_mod.load_kernel.cache_clear()
    try:
        assert cuda_kernel_available()
        selective_scan_fn(**inputs())
    finally:
        kernel_mod.load_kernel.cache_clear()
    assert fake.interface_calls == []


def test_inputs_are_checked_before_the_kernel(stand_in: StandIn) -> None:
    args = inputs()
    with pytest.raises(InputError, match="C must be"):
        selective_scan_fn(**{**args, "C": torch.randn(2, 5, 9)})
    with pytest.raises(InputError, match="L = 0"):
        selective_scan_fn(
            **{
                k: (v[..., :0] if k in ("u", "delta", "z", "B", "C") else v)
                for k, v in args.items()
            }
        )
    assert stand_in.interface_calls == []
