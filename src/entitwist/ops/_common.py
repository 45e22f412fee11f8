"""What every selective scan shares: input checks, the compute dtype, an autocast-free region."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from entitwist.errors import InputError


def check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    """Raise :class:`InputError` (one line, with the fix) when the shapes do not fit."""
    if u.dim() != 3:
        raise InputError(f"selective scan: u must be (batch, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length == 0:
        raise InputError("selective scan: u has length L = 0; pass at least one step")
    if tuple(delta.shape) != (batch, dim, length):
        raise InputError(
            f"selective scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != dim:
        raise InputError(f"selective scan: A must be (D={dim}, N), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise InputError("selective scan: complex A is not supported; pass a real (D, N) A")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            ok = tuple(t.shape) == (dim, dstate)
        elif t.dim() == 3:
            ok = tuple(t.shape) == (batch, dstate, length)
        elif t.dim() == 4:
            ok = (
                t.shape[0] == batch
                and t.shape[2] == dstate
                and t.shape[3] == length
                and t.shape[1] > 0
                and dim % t.shape[1] == 0
            )
        else:
            ok = False
        if not ok:
            raise InputError(
                f"selective scan: {name} must be (D={dim}, N={dstate}), (batch={batch}, N, "
                f"L={length}) or (batch, G, N, L) with G dividing D, got {tuple(t.shape)}"
            )
    if D is not None and tuple(D.shape) != (dim,):
        raise InputError(f"selective scan: D must be ({dim},), got shape {tuple(D.shape)}")
    if z is not None and tuple(z.shape) != (batch, dim, length):
        raise InputError(
            f"selective scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}"
        )
    if delta_bias is not None and tuple(delta_bias.shape) != (dim,):
        raise InputError(
            f"selective scan: delta_bias must be ({dim},), got shape {tuple(delta_bias.shape)}"
        )


def compute_dtype(u: Tensor) -> torch.dtype:
    """float64 inputs are scanned in float64; everything else (half included) in float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def autocast_off(device_type: str) -> Iterator[None]:
    """Run the enclosed ops at the dtypes they are given, whatever autocast region is active.

    Under ``torch.autocast`` the matmuls of the scan would otherwise run in bfloat16/float16
    and the carried state would lose about three decimal digits.
    """
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:  # a device autocast does not know cannot be inside an autocast region
        yield
