"""The one parser class of the ``entitwist`` commands, and the options they share.

argparse prints the usage and exits on a bad option; the ``entitwist`` commands instead
raise, so that :func:`entitwist.cli.main` prints ``entitwist: error: <message>; see
'<prog> --help'`` (one line) and exits with status 2 like every other user error.

The options that mean the same thing in several commands are added by one function each,
so that they have the same spelling and the same help text everywhere:

- :func:`add_model_option`: ``-m/--model``, the model a command loads;
- :func:`add_device_option`: ``--device auto|cpu|cuda|cuda:N``;
- :func:`add_quiet_option`: ``-q/--quiet``, no progress bars.
"""

from __future__ import annotations

import argparse

from entitwist.errors import InputError

__all__ = [
    "DEVICE_HELP",
    "MODEL_HELP",
    "OneLineArgumentParser",
    "add_device_option",
    "add_model_option",
    "add_quiet_option",
    "one_line",
]

MODEL_HELP = "a save_pretrained model folder or a .ckpt written by 'entitwist fit'"
DEVICE_HELP = "auto (cuda when available, the default), cpu, cuda or cuda:N"


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of blanks folded into single spaces."""
    return " ".join(str(message).split())


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that raises :class:`InputError` instead of exiting.

    Subparsers made with ``add_subparsers`` are of this class too (argparse's default).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{one_line(message)}; see '{self.prog} --help'")


def add_model_option(
    parser: argparse.ArgumentParser,
    *,
    help: str = MODEL_HELP,  # noqa: A002 - argparse's own keyword
    **kwargs: object,
) -> argparse.Action:
    """``-m/--model``: the model the command loads (``required=True`` unless given)."""
    kwargs.setdefault("required", True)
    kwargs.setdefault("metavar", "MODEL")
    return parser.add_argument("-m", "--model", help=help, **kwargs)  # type: ignore[arg-type]


def add_device_option(
    parser: argparse.ArgumentParser, *, help: str = DEVICE_HELP
) -> argparse.Action:  # noqa: A002
    """``--device``, default ``auto`` (``None`` and ``"auto"`` mean the same to the library)."""
    return parser.add_argument("--device", default="auto", metavar="DEVICE", help=help)


def add_quiet_option(
    parser: argparse.ArgumentParser,
    *,
    help: str = "no progress bars",  # noqa: A002
) -> argparse.Action:
    """``-q/--quiet``: no progress bars (results and errors are still printed)."""
    return parser.add_argument("-q", "--quiet", action="store_true", help=help)


PRECISION_HELP = (
    "numeric path: auto = the fastest this machine runs with probabilities within 0.05 of "
    "fp32 (int8 encoders on a CPU with VNNI/AMX, bf16 on a CUDA GPU, else fp32); 32 = exact "
    "fp32; int8, bf16, compile"
)


def add_precision_option(
    parser: argparse.ArgumentParser,
    *,
    help: str = PRECISION_HELP,  # noqa: A002
) -> argparse.Action:
    """``--precision``, default ``auto`` (see :mod:`entitwist.inference.precision`)."""
    return parser.add_argument("--precision", default="auto", metavar="P", help=help)
