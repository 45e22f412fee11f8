"""Segment an image from one or several sentences with a saved Enti-TwistNet.

>>> from entitwist import Predictor
>>> predictor = Predictor.from_pretrained("runs/rrsisd/model")        # a save_pretrained folder
>>> pred = predictor.predict("scene.png", "the largest storage tank")
>>> pred.mask.shape, pred.mask.dtype, pred.probability.dtype       # (H, W) bool, float32
>>> preds = predictor.predict(image, ["the red car", "the road"])   # one batched forward

The image (uint8 ``(H, W, 3)``, or a path read by :func:`entitwist.imaging.read_image` with
the bands and stretch recorded in ``model.config.imaging``) goes through
``model.preprocess`` (bilinear resize with antialiasing to ``model.config.visual.img_size``
in uint8, ImageNet normalisation: the training transform's function); the foreground
probability (softmax over the two classes) is resized back to ``(H, W)`` bilinearly, and
``mask = probability >= 0.5`` (the argmax of the two classes, up to exact ties).

Entities (the label map SEG pools into its entity areas): ``"auto"`` (the default) computes
them once per image with the predictor's generator on the full-resolution picture, exactly
as ``entitwist entities`` computes the training maps (:meth:`Predictor.entity_labels`),
then resizes them nearest to the input size like the training transform; an array gives
the map itself (uint8/int ``(H, W)``, resized nearest); None runs without entities (G = 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from entitwist.errors import InputError
from entitwist.imaging import prepare_image, resize_image, resize_nearest
from entitwist.inference.inputs import as_rgb_image, resolve_device

__all__ = ["Prediction", "Predictor"]


@dataclass
class Prediction:
    """One sentence's result on one image.

    Attributes:
        mask: (H, W) bool, the referred object.
        probability: (H, W) float32 in [0, 1], the foreground probability.
        sentence: the sentence it answers.
    """

    mask: np.ndarray
    probability: np.ndarray
    sentence: str


class Predictor:
    """Run a trained :class:`EntiTwistNet` on images of any size.

    Args:
        model: the network (already holding its weights).
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        entity_generator: the generator used for ``entities="auto"`` (``felzenszwalb``,
            ``felzenszwalb-rag``, ``slic``, ``sam``, ...; see
            ``entitwist.entities.get_generator``). ``None`` (default): the one the model
            was built for (``fusion.entity_generator``, with its parameters; the paper's
            models: SAM ViT-B, which needs ``sam_checkpoint``), else ``felzenszwalb``.
            Another one than the model's is an override, reported in :attr:`entity_note`.
            The choice is :func:`entitwist.entities.inference_generator`'s.
        sam_checkpoint: a segment-anything checkpoint; selects ``sam`` when
            ``entity_generator`` is not given.
        entity_params: extra keyword arguments for the generator.
        batch_size: sentences per forward pass.
        precision: ``"auto"`` (default: the fastest path this machine runs whose
            probabilities stay within 0.05 of fp32), ``"32"`` (exact fp32), ``"int8"``,
            ``"bf16"`` or ``"compile"``; see :mod:`entitwist.inference.precision`.
            ``self.precision`` is the one in use.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = None,
        entity_generator: str | None = None,
        sam_checkpoint: str | os.PathLike | None = None,
        entity_params: dict[str, Any] | None = None,
        batch_size: int = 8,
        precision: str = "auto",
    ) -> None:
        from entitwist.inference.precision import apply_precision

        self.device = resolve_device(device)
        self._plan = apply_precision(model.to(self.device).eval(), precision, self.device)
        self.model: Any = self._plan.model  # an EntiTwistNet-like module (config, tokenizer)
        self.precision = self._plan.name
        if sam_checkpoint is not None and not Path(sam_checkpoint).is_file():
            raise InputError(
                f"SAM checkpoint {str(sam_checkpoint)!r} does not exist; give a sam_vit_*.pth file"
            )
        self._entity_request = (entity_generator, sam_checkpoint, dict(entity_params or {}))
        self.batch_size = max(1, int(batch_size))
        self._generator: Any = None
        self._entities: Any = None  # InferenceEntities, decided on first use

    def entity_source(self) -> Any:
        """The :class:`~entitwist.entities.InferenceEntities` (generator name, parameters,
        note) for ``entities="auto"``; raises a one-line error when it cannot run (an
        unknown name, SAM without a checkpoint)."""
        if self._entities is None:
            from entitwist.entities import inference_generator

            name, ckpt, params = self._entity_request
            self._entities = inference_generator(
                getattr(self.model, "config", None), name, sam_checkpoint=ckpt, params=params
            )
        return self._entities

    @property
    def entity_generator(self) -> str:
        """Name of the generator used for ``entities="auto"``."""
        return self.entity_source().name

    @property
    def entity_params(self) -> dict[str, Any]:
        return dict(self.entity_source().params)

    @property
    def entity_note(self) -> str | None:
        """A line to show the user when the generator is not the model's own, else None."""
        return self.entity_source().note

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        device: str | torch.device | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load a ``save_pretrained`` folder, or a hub id (``owner/name`` at ``revision``),
        with :meth:`EntiTwistNet.from_pretrained` and wrap it; ``kwargs`` go to the
        constructor.

        Raises :class:`CheckpointError` for a missing folder, missing files, pickled weights
        or a hub id that cannot be had (e.g. not cached while ``HF_HUB_OFFLINE=1``).
        """
        from entitwist.models.enti_twistnet import EntiTwistNet

        model = EntiTwistNet.from_pretrained(source, revision=revision, cache_dir=cache_dir)
        return cls(model, device=device, **kwargs)

    # ------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """The network's square input size S."""
        return int(self.model.config.visual.img_size)

    @property
    def uses_entities(self) -> bool:
        """Whether the network has entity guidance (SEG) switched on."""
        return bool(self.model.config.fusion.seg)

    @property
    def max_entities(self) -> int:
        return int(self.model.config.fusion.max_entities)

    def get_entity_generator(self) -> Any:
        """The generator used for ``entities="auto"``, built once on first use (raises
        ``ConfigError`` / ``CheckpointError`` for an unknown name or a missing checkpoint)."""
        if self._generator is None:
            from entitwist.entities import get_generator

            source = self.entity_source()
            self._generator = get_generator(source.name, **source.params)
        return self._generator

    @property
    def read_options(self) -> dict[str, Any]:
        """How paths are read (:func:`entitwist.imaging.read_image` keyword arguments): the
        bands and stretch the model was trained with (``config.imaging``), else the rules."""
        imaging = getattr(getattr(self.model, "config", None), "imaging", None)
        return imaging.read_options() if imaging is not None else {}

    def entity_labels(self, image: np.ndarray) -> np.ndarray:
        """The entity label map of a uint8 (H, W, 3) picture: uint8 (H, W), 0 = none,
        1..K, computed with :meth:`get_entity_generator` on the full-resolution picture,
        the map ``entitwist entities`` stores for the same picture and generator."""
        from entitwist.entities import compute_entities

        return compute_entities(
            as_rgb_image(image),
            generator=self.get_entity_generator(),
            max_entities=self.max_entities,
        )  # (H, W) uint8

    def entity_map(self, image: np.ndarray, entities: Any) -> torch.Tensor | None:
        """The entity map the network sees: (1, S, S) long, or None (no entities, or a model
        without entity guidance).

        Args:
            image: the uint8 (H, W, 3) input. ``entities``: ``"auto"``
                (:meth:`entity_labels`), None, or an (H, W) integer label map; either map
                is resized nearest (:func:`entitwist.imaging.resize_nearest`) to S.
        """
        if entities is None or not self.uses_entities:
            return None
        size = self.image_size
        if isinstance(entities, str):
            if entities != "auto":
                raise InputError(f"entities={entities!r}; use 'auto', None or an (H, W) label map")
            labels = self.entity_labels(image)  # (H, W) uint8
        else:
            labels = np.asarray(entities)
            if labels.ndim != 2 or labels.shape != image.shape[:2]:
                raise InputError(
                    f"entity map has shape {labels.shape} but the image is {image.shape[0]}x{image.shape[1]}; "
                    "give a label map of the image's size"
                )
            if labels.dtype.kind not in "ui" or (
                labels.size and (labels.min() < 0 or labels.max() > self.max_entities)
            ):
                raise InputError(
                    f"entity map must hold integer labels 0..{self.max_entities}; recompute it with entitwist entities"
                )
        small = resize_nearest(labels, (size, size))  # (S, S)
        return torch.from_numpy(small.astype(np.int64))[None]  # (1, S, S)

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """uint8 (H, W, 3) -> the network input (1, 3, S, S) (``model.preprocess``) and the
        resized uint8 picture (S, S, 3) it was normalised from."""
        size = self.image_size
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
        small = resize_image(chw, (size, size)).permute(1, 2, 0).contiguous().numpy()
        preprocess = getattr(self.model, "preprocess", None)
        if preprocess is None:  # a stand-in network without preprocess: the same function
            return prepare_image(small, (size, size))[None], small
        return preprocess(small), small  # (already S x S: normalised only)

    @torch.no_grad()
    def predict_probability(
        self,
        image: np.ndarray,
        sentences: list[str],
        entities: Any = "auto",
        output_size: tuple[int, int] | None | str = "image",
    ) -> np.ndarray:
        """Foreground probabilities of several sentences on one uint8 (H, W, 3) image.

        Args:
            output_size: ``"image"`` -> (H, W) (bilinear); None -> the network's own (S, S);
                or an explicit (h, w).
        Returns: (B, h, w) float32, B = len(sentences).
        """
        image = as_rgb_image(image, self.read_options)
        if not sentences:
            raise InputError("no sentence given; give at least one referring sentence")
        for s in sentences:
            if not isinstance(s, str) or not s.strip():
                raise InputError(
                    "the sentence is empty; give a referring sentence such as 'the largest building'"
                )
        if output_size is None:
            height = width = self.image_size
        elif isinstance(output_size, str):
            if output_size != "image":
                raise ValueError(f"output_size={output_size!r}; use 'image', None or (h, w)")
            height, width = image.shape[:2]
        else:
            height, width = (int(v) for v in output_size)
        x, _ = self.prepare(image)  # (1, 3, S, S)
        ent = self.entity_map(image, entities)  # (1, S, S) | None
        x = x.to(self.device)
        ent = None if ent is None else ent.to(self.device)
        out = []
        for i in range(0, len(sentences), self.batch_size):
            chunk = sentences[i : i + self.batch_size]
            tokens = self.model.tokenizer(chunk)
            ids = tokens["input_ids"].to(self.device)  # (b, N)
            att = tokens["attention_mask"].to(self.device)  # (b, N)
            b = ids.shape[0]
            logits = self._plan(
                x.expand(b, -1, -1, -1), ids, att, None if ent is None else ent.expand(b, -1, -1)
            )  # (b, 2, S, S)
            prob = torch.softmax(logits.float(), dim=1)[:, 1:2]  # (b, 1, S, S)
            if (height, width) != tuple(prob.shape[-2:]):
                prob = F.interpolate(
                    prob, size=(height, width), mode="bilinear", align_corners=False
                )
            out.append(prob[:, 0].clamp_(0, 1).cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False)  # (B, H, W)

    def predict(
        self,
        image: np.ndarray | str | os.PathLike,
        sentences: str | list[str],
        entities: Any = "auto",
    ) -> Prediction | list[Prediction]:
        """Segment ``image`` for one sentence (-> a Prediction) or a list (-> a list, one batch).

        Args:
            image: uint8 (H, W, 3) RGB array, or a path (read with
                :func:`entitwist.imaging.read_image` and :attr:`read_options`).
            sentences: a sentence or a list of sentences.
            entities: ``"auto"`` (computed once for the image), None (no entities), or a
                label map (H, W) with values 0..K.
        """
        single = isinstance(sentences, str)
        sentence_list = [sentences] if isinstance(sentences, str) else list(sentences)
        image = as_rgb_image(image, self.read_options)
        probs = self.predict_probability(image, sentence_list, entities)  # (B, H, W)
        preds = [
            Prediction(mask=p >= 0.5, probability=p, sentence=s)
            for p, s in zip(probs, sentence_list)
        ]
        return preds[0] if single else preds

    @torch.no_grad()
    def predict_many(
        self,
        images: list[Any],
        sentences: list[str],
        entities: Any = "auto",
        output_size: tuple[int, int] | None | str = "image",
    ) -> list[np.ndarray]:
        """Foreground probability of ``sentences[i]`` on ``images[i]``, ``batch_size`` pairs
        per forward pass (images of any sizes: each is resized to S).

        Args:
            images: uint8 (H, W, 3) arrays or paths.
            entities: ``"auto"``, None, or one of those / an (H, W) label map per image.
            output_size: as in :meth:`predict_probability`, per image.
        Returns: one (h, w) float32 array per image.
        """
        if len(images) != len(sentences):
            raise InputError(
                f"{len(images)} images but {len(sentences)} sentences; give one sentence per image"
            )
        for s in sentences:
            if not isinstance(s, str) or not s.strip():
                raise InputError(
                    "the sentence is empty; give a referring sentence such as 'the largest building'"
                )
        ents = list(entities) if isinstance(entities, (list, tuple)) else [entities] * len(images)
        if len(ents) != len(images):
            raise InputError(
                f"{len(ents)} entity maps for {len(images)} images; give one per image"
            )
        out: list[np.ndarray] = []
        for i in range(0, len(images), self.batch_size):
            arrays = [as_rgb_image(im, self.read_options) for im in images[i : i + self.batch_size]]
            xs, maps = [], []
            for image, ent in zip(arrays, ents[i : i + self.batch_size]):
                x, _ = self.prepare(image)  # (1, 3, S, S)
                xs.append(x)
                maps.append(self.entity_map(image, ent))  # (1, S, S) | None
            if any(m is None for m in maps) and not all(m is None for m in maps):
                raise InputError("give entity maps for all images of a call or for none")
            tokens = self.model.tokenizer(list(sentences[i : i + self.batch_size]))
            ent_batch = None if maps[0] is None else torch.cat(maps).to(self.device)  # type: ignore[arg-type]
            logits = self._plan(
                torch.cat(xs).to(self.device),
                tokens["input_ids"].to(self.device),
                tokens["attention_mask"].to(self.device),
                ent_batch,
            )  # (b, 2, S, S)
            prob = torch.softmax(logits.float(), dim=1)[:, 1:2]  # (b, 1, S, S)
            for p, image in zip(prob, arrays):
                if output_size is None:
                    size = tuple(p.shape[-2:])
                elif isinstance(output_size, str):
                    if output_size != "image":
                        raise ValueError(
                            f"output_size={output_size!r}; use 'image', None or (h, w)"
                        )
                    size = image.shape[:2]
                else:
                    size = tuple(int(v) for v in output_size)
                if size != tuple(p.shape[-2:]):
                    p = F.interpolate(p[None], size=size, mode="bilinear", align_corners=False)[0]
                out.append(p[0].clamp(0, 1).cpu().numpy().astype(np.float32, copy=False))
        return out
