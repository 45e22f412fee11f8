"""``entitwist data check NAME ROOT``: is a downloaded benchmark complete and official?

Prints one line a problem (missing, unreadable or extra files, masks whose size differs
from their image, split sizes that differ from the published ones, entity stores), then a
summary; exits 0 when the copy is usable and 2 when it is not.
"""

from __future__ import annotations

import sys

from entitwist.data.layouts import LAYOUTS
from entitwist.utils.cli_parser import OneLineArgumentParser

#: at most this many lines of one kind are printed; the rest are counted.
MAX_LINES_PER_KIND = 50


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="entitwist data",
        description="Check a downloaded dataset against its official layout.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="check")
    check = sub.add_parser(
        "check",
        help="verify files, split sizes and entity stores",
        description="Verify a dataset copy: files, sizes, published split sizes, entity stores.",
    )
    check.add_argument("name", choices=sorted(LAYOUTS), help="the dataset")
    check.add_argument("root", help="the dataset folder")
    check.add_argument(
        "-m",
        "--model",
        help="a registry name or model folder: also check that an entity store matches the "
        "priors it needs",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    return parser


def main(argv: list[str] | None = None) -> int:
    from entitwist.data.check import check_dataset

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    report = check_dataset(args.name, args.root, model=args.model)
    shown: dict[str, int] = {}
    for problem in report.problems:
        shown[problem.kind] = shown.get(problem.kind, 0) + 1
        if shown[problem.kind] <= MAX_LINES_PER_KIND:
            print(problem.text, file=sys.stderr if problem.fatal else sys.stdout)
    for kind, n in shown.items():
        if n > MAX_LINES_PER_KIND:
            print(f"... and {n - MAX_LINES_PER_KIND} more {kind} line(s)")
    if not args.quiet:
        for line in report.stores:
            print(line)
        print(report.summary())
    return 0 if report.usable else 2
