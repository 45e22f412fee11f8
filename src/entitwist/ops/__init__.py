"""entitwist.ops: numerical kernels (the selective scan of Mamba).

- :func:`selective_scan_fn`: mamba-ssm's signature; its CUDA kernel for the inputs it accepts
  when installed, the project's scan otherwise.
- :func:`selective_scan_chunked`: the project's scan in plain PyTorch, on any device.
- :func:`selective_scan_ref`: the plain sequential loop (the reference twin).
- :func:`cuda_kernel_available`: whether mamba-ssm's kernel and its extension import here.
"""

from entitwist.ops._chunked import selective_scan_chunked
from entitwist.ops.selective_scan import (
    cuda_kernel_available,
    selective_scan_fn,
    selective_scan_ref,
)

__all__ = [
    "cuda_kernel_available",
    "selective_scan_chunked",
    "selective_scan_fn",
    "selective_scan_ref",
]
