"""entitwist: Enti-TwistNet for referring remote-sensing image segmentation.

Public entry points (imported lazily, so ``import entitwist`` stays cheap):

- :func:`create_model`, :func:`list_models` (``entitwist.models.registry``)
- :class:`EntiTwistNet` (``entitwist.models.enti_twistnet``)
- :class:`ModelConfig` (``entitwist.config``)
- :class:`Predictor` (``entitwist.inference.predictor``)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "entitwist.models.registry",
    "list_models": "entitwist.models.registry",
    "EntiTwistNet": "entitwist.models.enti_twistnet",
    "ModelConfig": "entitwist.config",
    "Predictor": "entitwist.inference.predictor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'entitwist' has no attribute {name!r}")
