"""Worker processes: the one rule for choosing how to start them.

``fork`` starts a worker at once (no re-import, nothing pickled) but copies the parent's
state as it is; once torch is loaded, its thread pools may hold locks that the child
inherits locked, so a forked child can hang. ``spawn`` starts a fresh interpreter and is
always safe. Hence: fork only while torch is not loaded (and where the platform has fork).
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from multiprocessing.context import BaseContext

__all__ = ["pool_context", "start_method"]


def start_method() -> str:
    """``"fork"`` while torch is not imported in this process and the platform forks, else
    ``"spawn"``."""
    fork_ok = "fork" in mp.get_all_start_methods() and "torch" not in sys.modules
    return "fork" if fork_ok else "spawn"


def pool_context() -> BaseContext:
    """The multiprocessing context of :func:`start_method` (``ctx.Pool(...)``)."""
    return mp.get_context(start_method())
