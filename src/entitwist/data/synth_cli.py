"""``entitwist synth OUT``: write a synthetic referring dataset (JSONL folder format).

::

    entitwist synth scenes/ --scenes 200 --size 512 --seed 0
    entitwist synth scenes/ --scenes 1000 --size 128 --object-scale 2.5 --density 0.3 -q

The work is :func:`entitwist.data.synthetic.write_dataset`'s; the option defaults are its
keyword defaults (read from its signature, so they are stated once).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from entitwist.data.synthetic import write_dataset
from entitwist.data.synthetic_expressions import EXPRESSION_TYPES
from entitwist.errors import InputError
from entitwist.utils.cli_parser import OneLineArgumentParser, add_quiet_option

__all__ = ["build_parser", "main"]

SCENES = 200  # the command's default number of scenes (write_dataset has no default for it)


def _defaults() -> dict[str, Any]:
    """write_dataset's keyword defaults."""
    params = inspect.signature(write_dataset).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def build_parser() -> OneLineArgumentParser:
    d = _defaults()
    parser = OneLineArgumentParser(
        prog="entitwist synth",
        description="Generate synthetic aerial referring scenes in the JSONL folder format.",
    )
    parser.add_argument("out", help="output folder (must be empty unless --overwrite)")
    parser.add_argument(
        "--scenes", type=int, default=SCENES, help=f"number of scenes (default {SCENES})"
    )
    parser.add_argument(
        "--size", type=int, default=d["size"], help=f"image side in pixels (default {d['size']})"
    )
    parser.add_argument(
        "--seed", type=int, default=d["seed"], help=f"random seed (default {d['seed']})"
    )
    parser.add_argument(
        "--expressions",
        type=int,
        default=d["expressions_per_scene"],
        help=f"expressions per scene (default {d['expressions_per_scene']})",
    )
    splits = ",".join(f"{v:g}" for v in d["splits"])
    parser.add_argument(
        "--splits", default=splits, help=f"train,val,test fractions (default {splits})"
    )
    parser.add_argument(
        "--types", default=None, help=f"comma list from {','.join(EXPRESSION_TYPES)} (default all)"
    )
    parser.add_argument(
        "--object-scale",
        type=float,
        default=d["object_scale"],
        help=f"object size multiplier in [0.5, 2.5] (default {d['object_scale']})",
    )
    parser.add_argument(
        "--density",
        type=float,
        default=d["density"],
        help=f"share of the usual number of objects per scene, in (0, 1] (default {d['density']})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the dataset in a non-empty OUT"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=d["workers"],
        help=f"processes drawing scenes (default {d['workers']}; the output is the same for "
        "any number)",
    )
    add_quiet_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``entitwist synth OUT [options]``: write a synthetic dataset; returns 0."""
    args = build_parser().parse_args(argv)
    try:
        splits = tuple(float(v) for v in args.splits.split(","))
    except ValueError:
        raise InputError(
            f"--splits {args.splits!r} is not three numbers; write it like 0.7,0.1,0.2"
        ) from None
    types = tuple(t.strip() for t in args.types.split(",")) if args.types else None
    summary = write_dataset(
        args.out,
        args.scenes,
        size=args.size,
        seed=args.seed,
        splits=splits,  # type: ignore[arg-type]
        expressions_per_scene=args.expressions,
        overwrite=args.overwrite,
        types=types,
        object_scale=args.object_scale,
        density=args.density,
        progress=not args.quiet,
        workers=args.workers,
    )
    per_split = ", ".join(f"{k} {v}" for k, v in sorted(summary["splits"].items()))
    per_type = ", ".join(f"{k} {v}" for k, v in sorted(summary["types"].items()))
    print(
        f"wrote {summary['samples']} expressions on {summary['scenes']} scenes to {summary['root']}"
    )
    print(f"  splits: {per_split}")
    print(f"  types: {per_type}")
    print(f"  annotations: {Path(summary['root']) / 'annotations.jsonl'}")
    return 0
