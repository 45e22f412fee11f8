"""The experiment configs that ship inside the package, usable by name.

Every YAML of this folder (one per result and ablation row of the paper, plus
``synthetic_tiny`` for the offline demo) is part of the installed package, so

::

    entitwist fit --config rrsisd_bert                 # a shipped config, by name
    entitwist fit --config my_experiment.yaml          # or any YAML file
    entitwist configs list                             # the names, one line each
    entitwist configs show rrsisd_bert                 # print one
    entitwist configs copy rrsisd_bert my.yaml         # a copy to edit

A ``--config`` value is a file when one exists at that path, else the name of a shipped
config (``rrsisd_bert`` or ``rrsisd_bert.yaml``; a missing ``.../configs/rrsisd_bert.yaml``
too: the path these files had in the source tree before they moved into the package).
"""

from __future__ import annotations

import os
from pathlib import Path

from entitwist.errors import ConfigError

__all__ = ["config_path", "describe", "list_configs", "resolve_config", "resolve_config_args"]

CONFIG_DIR = Path(__file__).resolve().parent


def list_configs() -> list[str]:
    """Names of the shipped configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _unknown(name: str, what: str) -> ConfigError:
    names = list_configs()
    return ConfigError(
        f"{what} {name!r} is not a shipped config; choose one of: {', '.join(names)} "
        "(entitwist configs list)"
    )


def config_path(name: str) -> Path:
    """The file of the shipped config ``name`` (with or without ``.yaml``)."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = CONFIG_DIR / f"{stem}.yaml"
    if "/" in stem or os.sep in stem or not stem or not path.is_file():
        raise _unknown(name, "config")
    return path


def describe(name: str) -> str:
    """The first comment line of a shipped config (what it runs), or ''."""
    for line in config_path(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def resolve_config(value: str) -> str:
    """A ``--config`` value as a file path: an existing file (or inline YAML) as given, else
    a shipped config.

    Raises :class:`ConfigError` (one line listing the shipped names) when it is neither.
    """
    path = Path(os.path.expanduser(value))
    if path.is_file() or any(c in value for c in ":{\n"):  # a file, or inline YAML/JSON
        return value
    if path.exists():
        raise ConfigError(f"--config {value!r} is a folder; give a YAML file or a config name")
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    old_layout = path.parent.name == "configs"  # the source tree's former configs/ folder
    if (path.parent == Path(".") or old_layout) and stem in list_configs():
        return str(CONFIG_DIR / f"{stem}.yaml")
    raise ConfigError(
        f"--config {value!r} is neither a file nor a shipped config; give a YAML path or one of: "
        f"{', '.join(list_configs())}"
    )


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` / ``-c X`` value resolved by
    :func:`resolve_config` (other arguments unchanged)."""
    out: list[str] = []
    expect = False
    for arg in argv:
        if expect:
            out.append(resolve_config(arg))
            expect = False
        elif arg in ("--config", "-c"):
            out.append(arg)
            expect = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out
