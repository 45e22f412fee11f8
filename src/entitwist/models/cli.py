"""``entitwist models``: print each registered model name with its description."""

from __future__ import annotations

from entitwist.models.registry import describe_model, list_models
from entitwist.utils.cli_parser import OneLineArgumentParser

__all__ = ["build_parser", "main"]


def build_parser() -> OneLineArgumentParser:
    return OneLineArgumentParser(
        prog="entitwist models",
        description="List the registered model names (for model_name in a config, or "
        "'entitwist demo --model').",
    )


def main(argv: list[str] | None = None) -> int:
    """``entitwist models``: one line per registered name; returns 0."""
    build_parser().parse_args(argv if argv is not None else [])
    names = list_models()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {describe_model(name)}")
    return 0
