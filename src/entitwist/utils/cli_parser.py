"""An argparse parser whose errors are one-line :class:`~entitwist.errors.InputError` s.

argparse prints the usage and exits on a bad option; the ``entitwist`` commands instead
raise, so that :func:`entitwist.cli.main` prints ``entitwist: error: <message>; see
'<prog> --help'`` and exits with status 2 like every other user error.
"""

from __future__ import annotations

import argparse

from entitwist.errors import InputError


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that raises :class:`InputError` instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message}; see '{self.prog} --help'")
