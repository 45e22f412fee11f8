"""The ``entitwist`` command: a thin dispatcher to the subcommands.

Each subcommand lives beside the code it drives and exposes ``main(argv) -> int``; it is
imported only when called, so ``entitwist segment`` does not import Lightning and
``entitwist fit`` does not import rasterio. Errors a user can fix
(:class:`entitwist.errors.EntitwistError`) print one line and exit with status 2.

Every subcommand parses its options with one parser class,
:class:`entitwist.utils.cli_parser.OneLineArgumentParser` (``fit``, ``validate``, ``test`` and
``predict``: LightningCLI's parser, whose errors are folded into one line the same way), so a
bad option is one ``entitwist: error: ...; see 'entitwist <command> --help'`` line and exit
status 2 everywhere. The options shared by several commands have one spelling and one help
text: ``-m/--model`` (the model a command loads), ``--device`` and ``-q/--quiet``.
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> (module, help line)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("entitwist.train.cli", "train a model (LightningCLI; --config NAME or FILE.yaml)"),
    "validate": ("entitwist.train.cli", "evaluate on the validation split"),
    "test": ("entitwist.train.cli", "evaluate on the test split"),
    "predict": ("entitwist.train.cli", "write predicted masks for a split"),
    "evaluate": (
        "entitwist.evaluation.evaluate",
        "score a model on a dataset split (table, JSON, CSV)",
    ),
    "figures": (
        "entitwist.evaluation.figures.cli",
        "overlays, Pr@X curve, K sweep, stage maps, DAT PCA",
    ),
    "demo": ("entitwist.demo.cli", "offline demo: synthetic scenes, entities, train, evaluate"),
    "data": ("entitwist.data.check_cli", "check a downloaded dataset (data check NAME ROOT)"),
    "report": ("entitwist.evaluation.report", "collect finished runs into the paper's tables"),
    "synth": ("entitwist.data.synth_cli", "generate synthetic referring scenes (JSONL folder)"),
    "entities": ("entitwist.entities.cli", "compute entity label maps (weight-free or SAM)"),
    "segment": ("entitwist.inference.cli", "segment an image or GeoTIFF from a sentence"),
    "app": ("entitwist.app.server", "start the local web page"),
    "models": ("entitwist.models.cli", "list the registered model names"),
    "configs": ("entitwist.configs.cli", "the shipped experiment configs: list, show, copy"),
}


def _usage() -> str:
    lines = ["usage: entitwist <command> [options]", "", "commands:"]
    for name, (_, help_line) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {help_line}")
    lines.append("")
    lines.append("Run 'entitwist <command> --help' for the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from entitwist.errors import EntitwistError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from entitwist import __version__

        print(f"entitwist {__version__}")
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(
            f"entitwist: error: unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        # LightningCLI subcommands need their own name; the others receive only their options.
        rc = module.main(argv if module.__name__ == "entitwist.train.cli" else argv[1:])
        sys.stdout.flush()
    except EntitwistError as exc:
        print(f"entitwist: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("entitwist: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``entitwist configs list | head``): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
