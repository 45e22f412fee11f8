"""The SAM entity generators (paper section IV-B): Meta's ``segment-anything`` and the
transformers ``SamModel``, behind the interface of :mod:`entitwist.entities.base`.

The registry in :mod:`entitwist.entities.generators` lists them
(``get_generator("sam", checkpoint=...)``). torch, segment_anything and transformers are
imported inside the classes, on first use.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.entities.base import MaskGenerator, resize_image, sha256_file
from entitwist.errors import CheckpointError, ConfigError, EntitwistError
from entitwist.imaging import resize_nearest

# --- SAM (segment-anything) -------------------------------------------------------------

#: Extra SAM model types registered at run time: name -> builder() returning an untrained
#: ``segment_anything.modeling.Sam``. The three official ones come from
#: ``segment_anything.sam_model_registry``.
SAM_MODEL_TYPES: dict[str, Callable[[], Any]] = {}


def register_sam_model_type(name: str, builder: Callable[[], Any]) -> None:
    """Register ``builder()`` -> untrained ``Sam`` under ``name`` (e.g. a fine-tuned shape)."""
    SAM_MODEL_TYPES[name] = builder


def _sam_builder(model_type: str) -> Callable[[], Any]:
    if model_type in SAM_MODEL_TYPES:
        return SAM_MODEL_TYPES[model_type]
    official = ("vit_b", "vit_l", "vit_h")
    if model_type not in official:
        raise ConfigError(
            f"unknown SAM model_type {model_type!r}; choose one of "
            f"{', '.join([*official, *SAM_MODEL_TYPES])}"
        )
    try:
        from segment_anything import sam_model_registry
    except ImportError as exc:
        raise EntitwistError(
            "the 'sam' generator needs segment-anything: pip install 'entitwist[sam]'"
        ) from exc
    return lambda: sam_model_registry[model_type](checkpoint=None)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SamGenerator(MaskGenerator):
    """Meta's segment-anything automatic masks on the image upsampled to 1024x1024.

    Args:
        checkpoint: path of a SAM state dict (``sam_vit_b_01ec64.pth`` for the paper).
        model_type: key of the SAM builder (``vit_b``, ``vit_l``, ``vit_h`` or a name given
            to :func:`register_sam_model_type`); never guessed from the file name.
        device: torch device; default CUDA when available, else CPU.
        points_per_batch: points decoded at once (memory only, not the output).
        Other keywords (``points_per_side``, ``pred_iou_thresh``, ...): those of
        ``SamAutomaticMaskGenerator``; ``input_size`` the square side the image is
        upsampled to.
    """

    name = "sam"
    DEFAULTS = {
        "model_type": "vit_b",
        "input_size": 1024,
        "points_per_side": 32,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "box_nms_thresh": 0.7,
        "min_mask_region_area": 0,
    }

    def __init__(
        self,
        *,
        checkpoint: str | os.PathLike | None = None,
        device: str | None = None,
        points_per_batch: int = 64,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        if checkpoint is None:
            raise CheckpointError(
                "the 'sam' generator needs a checkpoint: pass --sam-checkpoint sam_vit_b_01ec64.pth "
                "(or use --generator felzenszwalb, which needs no weights)"
            )
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(
                f"SAM checkpoint {path} not found; download sam_vit_b_01ec64.pth and pass its path"
            )
        _sam_builder(self.params["model_type"])  # unknown model_type fails now, not in a worker
        self.checkpoint = path
        self.checkpoint_sha256 = sha256_file(path)
        self.device = device
        self.points_per_batch = int(points_per_batch)
        self._amg: Any = None

    def _ensure_model(self) -> Any:
        """Build the SAM model and its automatic mask generator once (lazily)."""
        if self._amg is not None:
            return self._amg
        import torch

        try:
            from segment_anything import SamAutomaticMaskGenerator
        except ImportError as exc:
            raise EntitwistError(
                "the 'sam' generator needs segment-anything: pip install 'entitwist[sam]'"
            ) from exc
        try:  # read the file before building the model: a broken file fails fast
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            model = _sam_builder(self.params["model_type"])()
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - any load failure is the same user problem
            first = (
                str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            )
            raise CheckpointError(
                f"cannot load SAM checkpoint {self.checkpoint} as model_type "
                f"{self.params['model_type']!r} ({first}); pass the matching --model-type"
            ) from exc
        model.to(self.device or _default_device()).eval()
        p = self.params
        self._amg = SamAutomaticMaskGenerator(
            model,
            points_per_side=p["points_per_side"],
            points_per_batch=self.points_per_batch,
            pred_iou_thresh=p["pred_iou_thresh"],
            stability_score_thresh=p["stability_score_thresh"],
            box_nms_thresh=p["box_nms_thresh"],
            min_mask_region_area=p["min_mask_region_area"],
            output_mode="binary_mask",
        )
        return self._amg

    def generate(self, image: np.ndarray) -> list[np.ndarray]:
        import torch

        amg = self._ensure_model()
        size = int(self.params["input_size"])
        up = resize_image(image, (size, size))  # (S, S, 3), the paper's 1024x1024
        with torch.inference_mode():
            records = amg.generate(up)
        return [
            resize_nearest(np.asarray(r["segmentation"], dtype=bool), image.shape[:2])
            for r in records
        ]


# --- transformers SAM --------------------------------------------------------------------


def _hf_weights_sha256(folder: Path) -> str | None:
    files = sorted(
        p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"} and p.is_file()
    )
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:  # one hash over the weight files, in name order
        digest.update(f.name.encode())
        digest.update(bytes.fromhex(sha256_file(f)))
    return digest.hexdigest()


class HfSamGenerator(MaskGenerator):
    """The transformers SAM (``SamModel`` + ``SamProcessor``) through ``mask-generation``.

    Args:
        model: a local ``save_pretrained`` folder, or a hub id already in the local cache
            (no download: the hub is opened with ``local_files_only=True``).
        device: torch device; default CUDA when available, else CPU.
        points_per_batch: points decoded at once (memory only).
        Other keywords: ``points_per_side`` (grid, the pipeline's ``points_per_crop``),
        ``pred_iou_thresh``, ``stability_score_thresh``, ``input_size`` (square side the image
        is upsampled to, 1024 as in the paper).
    """

    name = "hf-sam"
    DEFAULTS = {
        "model": "facebook/sam-vit-base",
        "input_size": 1024,
        "points_per_side": 32,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
    }

    def __init__(
        self,
        *,
        checkpoint: str | os.PathLike | None = None,
        device: str | None = None,
        points_per_batch: int = 64,
        **params: Any,
    ) -> None:
        if checkpoint is not None:  # --sam-checkpoint is the commands' name for model=
            params.setdefault("model", str(checkpoint))
        if "model" in params:
            params["model"] = str(params["model"])
        super().__init__(**params)
        folder = Path(self.params["model"])
        if folder.exists():
            if not (folder / "config.json").is_file():
                raise CheckpointError(
                    f"{folder} is not a transformers SAM folder (no config.json); "
                    "pass a SamModel.save_pretrained folder"
                )
            self.checkpoint_sha256 = _hf_weights_sha256(folder)
            # the manifest should not depend on where the folder sits
            self.params["model"] = folder.resolve().name
        self.model_source = str(folder) if folder.exists() else self.params["model"]
        self.device = device
        self.points_per_batch = int(points_per_batch)
        self._pipe: Any = None

    def _ensure_model(self) -> Any:
        if self._pipe is not None:
            return self._pipe
        try:
            from transformers import SamModel, SamProcessor, pipeline
        except ImportError as exc:  # pragma: no cover - transformers is a core dependency
            raise EntitwistError("the 'hf-sam' generator needs transformers") from exc
        try:
            model = SamModel.from_pretrained(self.model_source, local_files_only=True)
            processor = SamProcessor.from_pretrained(self.model_source, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot load transformers SAM {self.model_source!r} offline; pass a local "
                "SamModel.save_pretrained folder with --sam-checkpoint"
            ) from exc
        model.eval()
        self._pipe = pipeline(
            "mask-generation",
            model=model,
            image_processor=processor.image_processor,
            device=self.device or _default_device(),
        )
        return self._pipe

    def generate(self, image: np.ndarray) -> list[np.ndarray]:
        from PIL import Image

        pipe = self._ensure_model()
        size = int(self.params["input_size"])
        up = resize_image(image, (size, size))  # (S, S, 3)
        out = pipe(
            Image.fromarray(up),
            points_per_batch=self.points_per_batch,
            points_per_crop=self.params["points_per_side"],
            pred_iou_thresh=self.params["pred_iou_thresh"],
            stability_score_thresh=self.params["stability_score_thresh"],
        )
        masks = out["masks"]
        return [resize_nearest(np.asarray(m, dtype=bool), image.shape[:2]) for m in masks]
