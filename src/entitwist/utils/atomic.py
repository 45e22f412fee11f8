"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader (or a resumed run) never sees a half-written file: either the old state or the
complete new file exists. Used by the entity store, checkpoints and every output writer.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    The temporary file keeps the target's suffix (so libraries that pick a format from the
    name, such as PIL or GDAL, still work). On any exception the temporary file is removed
    and ``target`` is left untouched.

    Args:
        target: final path. Its parent folder must exist.
        overwrite: when False and ``target`` exists, raise ``FileExistsError`` before writing.
    """
    target = Path(target)
    if not overwrite and target.exists():
        raise FileExistsError(
            f"{target} exists; pass overwrite=True (or --overwrite) to replace it"
        )
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; give the final file the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def remove_entries(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Delete ``folder/<name>`` for each name that exists (folders recursively, files
    unlinked); what is not listed is left alone. Used where a command replaces only its own
    outputs in a folder the user may share with other files."""
    import shutil

    for name in names:
        path = Path(folder) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
