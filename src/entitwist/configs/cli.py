"""``entitwist configs list | show NAME | copy NAME [DEST]``: the shipped experiment configs."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from entitwist.configs import config_path, describe, list_configs
from entitwist.errors import InputError
from entitwist.utils.cli_parser import OneLineArgumentParser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="entitwist configs",
        description="The experiment configs shipped with entitwist (use them as "
        "'entitwist fit --config NAME').",
    )
    sub = parser.add_subparsers(dest="action", metavar="{list,show,copy}", required=True)
    sub.add_parser("list", help="the shipped config names, with what each runs")
    show = sub.add_parser("show", help="print one config")
    show.add_argument("name", metavar="NAME")
    copy = sub.add_parser("copy", help="copy one config to edit it")
    copy.add_argument("name", metavar="NAME")
    copy.add_argument(
        "dest", metavar="DEST", nargs="?", default=None, help="file or folder (default ./NAME.yaml)"
    )
    copy.add_argument("--overwrite", action="store_true", help="replace an existing DEST file")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "list":
        names = list_configs()
        width = max(map(len, names), default=0)
        for name in names:
            print(f"{name:<{width}}  {describe(name)}".rstrip())
        return 0
    source = config_path(args.name)
    if args.action == "show":
        sys.stdout.write(source.read_text(encoding="utf-8"))
        return 0
    dest = Path(args.dest) if args.dest else Path(source.name)
    if dest.is_dir():
        dest = dest / source.name
    if not dest.parent.is_dir():
        raise InputError(
            f"folder {str(dest.parent)!r} does not exist; create it or pick another DEST"
        )
    if dest.exists() and not args.overwrite:
        raise InputError(f"{str(dest)!r} exists; pass --overwrite to replace it, or another DEST")
    from entitwist.utils import atomic_path

    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
    print(f"wrote {dest} (use it with: entitwist fit --config {dest})")
    return 0
