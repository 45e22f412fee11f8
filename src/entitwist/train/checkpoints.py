"""Lightning checkpoints of an Enti-TwistNet: reading them safely, the network they hold,
and the random-number states they carry.

- :func:`load_checkpoint` reads a ``.ckpt`` with ``torch.load(weights_only=True)`` only;
- :func:`model_from_checkpoint` rebuilds the network from the
  :class:`~entitwist.config.ModelConfig` stored under :data:`CONFIG_KEY`;
- :func:`rng_states` / :func:`restore_rng_states`: the torch, numpy, Python (and CUDA)
  random streams, stored under :data:`RNG_KEY` as tensors and plain containers, so that a
  resumed run continues the same random stream.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entitwist.errors import CheckpointError, ConfigError

__all__ = [
    "CONFIG_KEY",
    "RNG_KEY",
    "load_checkpoint",
    "model_from_checkpoint",
    "restore_rng_states",
    "rng_states",
]

CONFIG_KEY = "entitwist_model_config"
RNG_KEY = "entitwist_rng_states"


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a Lightning ``.ckpt`` without running pickled code (``weights_only=True``).

    Raises :class:`CheckpointError` (one line) when the file is missing, is not a torch
    checkpoint, or holds objects other than tensors and plain containers, which is what a
    tampered pickle (an object whose ``__reduce__`` runs code) looks like.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; give a .ckpt file written by `entitwist fit`"
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        unsafe = [ln for ln in lines if "global" in ln.lower() and "weights_only" not in ln]
        if unsafe:
            raise CheckpointError(
                f"refused to load {str(path)!r}: it holds pickled objects other than tensors "
                f"(possibly code) and entitwist loads checkpoints with weights_only=True only ({unsafe[0][:160]})"
            ) from None
        plain = [ln for ln in lines if "weights_only" not in ln and "documentation" not in ln]
        reason = (plain[0] if plain else lines[0] if lines else type(exc).__name__)[:160]
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({reason})") from None
    if not isinstance(data, dict) or "state_dict" not in data:
        raise CheckpointError(
            f"{str(path)!r} is not a Lightning checkpoint (no state_dict); give a .ckpt from `entitwist fit`"
        )
    return data


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The :class:`~entitwist.models.enti_twistnet.EntiTwistNet` stored in a ``.ckpt``.

    The architecture comes from the ModelConfig saved in the checkpoint; no pretrained
    weights are fetched (the checkpoint holds them all).
    """
    from entitwist.config import ModelConfig
    from entitwist.models.enti_twistnet import EntiTwistNet

    data = load_checkpoint(path, map_location)
    if CONFIG_KEY not in data:
        raise CheckpointError(
            f"{str(path)!r} has no model config; it was not written by entitwist's trainer"
        )
    try:
        config = ModelConfig.from_dict(data[CONFIG_KEY])
    except ConfigError as exc:
        raise CheckpointError(f"{str(path)!r} holds an invalid model config: {exc}") from None
    model = EntiTwistNet(config.replace(visual__pretrained=None, text__pretrained=None))
    model._tokenizer_config = config.text  # the tokenizer of the original source
    model.config = config
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in data["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{str(path)!r} does not match its model config ({first})") from None
    return model


def rng_states() -> dict[str, Any]:
    """The torch, numpy, Python (and initialised CUDA) random states, as tensors and plain
    containers (what ``weights_only`` loading reads back)."""
    np_state: Any = np.random.get_state()  # noqa: NPY002 (the global stream libraries draw from)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(_plain, np_state[2:]),
        ],
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the random streams saved by :func:`rng_states`."""
    torch.set_rng_state(states["torch"].cpu())
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    random.setstate(_tuples(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
