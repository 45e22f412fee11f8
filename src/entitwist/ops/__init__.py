"""entitwist.ops: numerical kernels (the selective scan of Mamba)."""

from entitwist.ops.selective_scan import HAS_CUDA_KERNEL, selective_scan_fn, selective_scan_ref

__all__ = ["HAS_CUDA_KERNEL", "selective_scan_fn", "selective_scan_ref"]
