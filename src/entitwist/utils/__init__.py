"""Small shared helpers (atomic file writes, removing a command's own outputs)."""

from entitwist.utils.atomic import atomic_path, atomic_write_bytes, remove_entries

__all__ = ["atomic_path", "atomic_write_bytes", "remove_entries"]
