"""Shared pieces of the ``entitwist demo`` steps: the progress line and the JSON records.

Every step announces itself as ``[step/5] name: text`` (:func:`say`) and keeps its state in
small JSON files (:func:`write_json`, written atomically; :func:`read_json`, ``None`` when
the file is missing or unreadable), which is how a rerun finds the finished steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STEPS = 5


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (training processes, data
    loader workers, entity workers)."""
    import resource
    import time

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def say(step: int, name: str, text: str) -> None:
    print(f"[{step}/{STEPS}] {name}: {text}", flush=True)


def write_json(path: Path, data: Any) -> None:
    from entitwist.utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
