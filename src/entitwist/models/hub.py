"""Saved models: the folder layout, its checks, hub ids and the model card.

A saved Enti-TwistNet is a folder (or a Hugging Face Hub model repository with the same
files)::

    config.json          the ModelConfig (entitwist.config), enough to rebuild the network
    model.safetensors    the weights; pickled weight files are refused
    tokenizer/           the tokenizer of the text encoder
    README.md            the model card (YAML metadata + how to load it)
    training.json        optional: how the weights were selected (written by training)

:class:`~entitwist.models.enti_twistnet.EntiTwistNet` saves and loads through
huggingface_hub's :class:`~huggingface_hub.ModelHubMixin` (``save_pretrained``,
``from_pretrained``, ``push_to_hub``); this module holds the pieces it uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from entitwist.errors import CheckpointError

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "PICKLE_SUFFIXES",
    "TOKENIZER_DIR",
    "TRAINING_NAME",
    "WEIGHTS_NAME",
    "check_checkpoint_dir",
    "load_folder",
    "model_card",
    "read_training_record",
    "resolve_folder",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
CARD_NAME = "README.md"
TRAINING_NAME = "training.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# what a download fetches from a hub repository: the saved files, nothing else
HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, f"{TOKENIZER_DIR}/*", CARD_NAME, TRAINING_NAME]


def check_checkpoint_dir(path: Path) -> None:
    """Refuse a model folder that is missing, incomplete, or holds pickled weights."""
    if not path.exists():
        raise CheckpointError(
            f"model folder {str(path)!r} does not exist; give a folder written by save_pretrained"
        )
    if path.is_file():
        hint = " (a Lightning .ckpt is for resuming training; export it with save_pretrained)"
        raise CheckpointError(
            f"model {str(path)!r} is a file, not a save_pretrained folder"
            f"{hint if path.suffix == '.ckpt' else ''}"
        )
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"model folder {str(path)!r} holds pickled weights ({pickles[0]}), which can run code "
            "when loaded; entitwist loads safetensors only: re-export with save_pretrained"
        )
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise CheckpointError(
                f"model folder {str(path)!r} is missing {name}; give a complete save_pretrained folder"
            )


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_folder(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The local folder of ``source``: a folder as given, or a hub id (``owner/name``) that is
    not a local path, fetched into (or found in) the hub cache at ``revision``.

    Downloads are off when ``local_files_only`` is set or ``HF_HUB_OFFLINE=1``; a hub id that
    is not cached then fails at once with one line. The folder is checked
    (:func:`check_checkpoint_dir`).
    """
    path = Path(os.path.expanduser(str(source)))
    if not path.exists() and _is_repo_id(str(source)):
        path = _download(
            str(source),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
    check_checkpoint_dir(path)
    return path


def _download(repo_id: str, *, local_files_only: bool, **kwargs: Any) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or bool(constants.HF_HUB_OFFLINE)
    at = f"@{kwargs['revision']}" if kwargs.get("revision") else ""
    try:
        folder = snapshot_download(
            repo_id, allow_patterns=HUB_FILES, local_files_only=offline, **kwargs
        )
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "local_files_only"
        raise CheckpointError(
            f"model {repo_id}{at} is not a local folder and not in the hub cache, and downloads "
            f"are off ({why}); download it once online, or give a save_pretrained folder"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(
            f"hub model {repo_id} has no revision {kwargs.get('revision')!r}; give a branch, tag "
            "or commit it has"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"model {repo_id!r} is not a local folder nor a hub repository you can read; check "
            "the name (and log in with 'hf auth login' for a private one)"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(
            f"model {repo_id}{at} could not be fetched from the hub ({first}); retry, or give a "
            "save_pretrained folder"
        ) from None
    return Path(folder)


def read_training_record(folder: Path) -> dict[str, Any] | None:
    """``training.json`` of a saved folder (how its weights were selected), or None."""
    path = folder / TRAINING_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_card(
    config: Any,
    card_data: Any,
    training: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> Any:
    """The model card (a :class:`huggingface_hub.ModelCard`) of a model with ``config``.

    ``card_data`` (a ``ModelCardData``: library name, pipeline tag, licence, tags) gets the
    training record's dataset and validation score when ``training`` (``training.json``)
    has them.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data = ModelCardData(**card_data.to_dict())
    training = training or {}
    dataset = training.get("dataset")
    if dataset:
        data.datasets = [str(dataset)]
    score, monitor = training.get("score"), training.get("monitor")
    if dataset and isinstance(score, (int, float)) and monitor:
        split, _, metric = str(monitor).rpartition("/")
        data.model_name = config.name
        data.eval_results = [
            EvalResult(
                task_type="image-segmentation",
                dataset_type=str(dataset),
                dataset_name=str(dataset),
                dataset_split=split or None,
                metric_type=metric,
                metric_name=str(monitor),
                metric_value=float(score),
            )
        ]
    body = _card_body(config, training, repo_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _card_body(config: Any, training: dict[str, Any], repo_id: str | None) -> str:
    v, f, t = config.visual, config.fusion, config.text
    where = repo_id or "path/to/this/folder"
    if training.get("selected_on") == "val" and training.get("score") is not None:
        record = (
            f"Weights selected on the validation split: {training.get('monitor')} = "
            f"{float(training['score']):.4f} at epoch {training.get('epoch')} "
            f"({training.get('epochs_run')} epochs run"
            + (f", dataset {training['dataset']})" if training.get("dataset") else ")")
        )
    elif training:
        record = "Final weights of a training run without validation (no score recorded)."
    else:
        record = "No training record (training.json) in this folder."
    layers = config.decoder.entity_head_layers
    extras = f", entity selection head of {layers} layers" if layers else ""
    return f"""# {config.name}

An Enti-TwistNet (Jia et al., "Entity-Guided Attention Twisting Network for Referring Remote
Sensing Image Segmentation"), saved by the `entitwist` library: given an aerial or satellite
image and a sentence such as "the largest storage tank at the top", it returns the mask of
the object the sentence refers to.

- Visual encoder: Swin ({v.name}, width {v.embed_dim}, depths {list(v.depths)}), input
  {v.img_size}x{v.img_size}
- Text encoder: {t.kind} ({t.pretrained or "trained from scratch"}), {t.max_tokens} tokens
- Fusion: SEG {"on" if f.seg else "off"}, DAT {f.dat}, propagation {f.propagation}, at most
  K = {f.max_entities} entities ({f.entity_generator or "felzenszwalb"}){extras}
- {record}

## How to load

```python
from entitwist import Predictor

predictor = Predictor.from_pretrained("{where}")
prediction = predictor.predict("scene.png", "the largest storage tank")
prediction.mask  # (H, W) bool
```

or on the command line: `entitwist segment scene.png "the largest storage tank" -m {where} -o mask.png`.
The weights are safetensors (no pickle); loading needs no network once the files are local.

## Intended use

Research on referring segmentation of remote-sensing imagery: locating one object described
in English in an RGB image (GeoTIFFs keep their georeference through `entitwist segment`).

## Limitations

- The model finds what it was trained on: other sensors, resolutions, object kinds or
  phrasings than those of its training data give unreliable masks.
- One sentence gives one mask; a sentence that matches no object still returns a mask.
- Masks are predictions, not measurements: check them before using them for decisions.
"""


def load_folder(cls: Any, folder: Path, map_location: Any = None) -> Any:
    """Build ``cls`` (an EntiTwistNet class) from a checked save_pretrained ``folder``: the
    config, then the safetensors weights (strict); raises :class:`CheckpointError` with one
    line on a corrupt or mismatched file."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from entitwist.config import ModelConfig
    from entitwist.errors import ConfigError

    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    try:
        config = ModelConfig.from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{str(config_path)!r} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
        ) from None
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{str(config_path)!r} is not a valid model config: {exc}") from None
    build = config.replace(visual__pretrained=None, text__pretrained=None)
    if (folder / TOKENIZER_DIR).is_dir():
        build.text.vocab = str(folder / TOKENIZER_DIR)
    if not build.text.hf_config:
        raise CheckpointError(
            f"{str(config_path)!r} lacks text.hf_config; cannot rebuild the text encoder offline"
        )
    model = cls(build)
    model.config = config  # keep the provenance (pretrained sources) as saved
    device = "cpu" if map_location is None else str(torch.device(map_location))
    try:
        state = load_file(str(weights_path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{str(weights_path)!r} is corrupt or not safetensors ({exc})"
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()[:200]
        raise CheckpointError(
            f"{str(weights_path)!r} does not match its config ({first})"
        ) from None
    if missing or unexpected:
        names = ", ".join((list(missing) + list(unexpected))[:4])
        raise CheckpointError(
            f"{str(weights_path)!r} does not match its config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys, e.g. {names})"
        )
    if map_location is not None:
        model.to(map_location)
    return model.eval()
