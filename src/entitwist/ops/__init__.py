"""entitwist.ops: numerical kernels (the selective scan of Mamba)."""

from entitwist.ops.selective_scan import (
    cuda_kernel_available,
    selective_scan_fn,
    selective_scan_ref,
)

__all__ = ["cuda_kernel_available", "selective_scan_fn", "selective_scan_ref"]
