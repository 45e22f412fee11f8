"""Small shared helpers (atomic file writes)."""

from entitwist.utils.atomic import atomic_path, atomic_write_bytes

__all__ = ["atomic_path", "atomic_write_bytes"]
