"""Enti-TwistNet: the whole network, wired by injection.

``EntiTwistNet(config)`` builds its parts from a :class:`~entitwist.config.ModelConfig`;
each part may also be passed in (``visual=``, ``text=``, ``fusions=``, ``decoder=``).

Data flow (DESIGN.md section 2, early fusion)::

    T^ori, mask = text(input_ids, attention_mask)                   # (B, N, d_t)
    x = swin.embed(image)                                           # (B, H/4, W/4, d_0) NHWC
    for t in 0..3:
        F^in_t  = swin.stage(t, x)                                  # patch merging first, t > 0
        M_t     = entity_area_maps(entities, K, size_t)             # (B, K, h_t, w_t)
        F^out_t = fusion_t(F^in_t, T^ori, mask, M_t)                # SEG -> cube -> DAT
        x       = F^in_t + F^out_t                                  # residual into stage t+1
    logits = decoder([F^out_0..3])                                  # (B, 2, H/4, W/4)
    logits[:, 1] += entity_head(...)   # only with decoder.entity_head_layers > 0 (extension)
    logits = upsample x4                                            # (B, 2, H, W)
    logits = entity_head.refine_logits(logits, entities)            # (extension, as above)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, ModelHubMixin
from torch import Tensor, nn

from entitwist.config import ModelConfig
from entitwist.errors import ConfigError
from entitwist.imaging import IMAGENET_MEAN, IMAGENET_STD, prepare_image
from entitwist.models.decoder import Decoder
from entitwist.models.hub import CONFIG_NAME, TOKENIZER_DIR, WEIGHTS_NAME
from entitwist.models.inputs import check_inputs, check_shapes
from entitwist.models.text import TextEncoder
from entitwist.models.tokenizer import Tokenizer, build_tokenizer
from entitwist.models.visual import SwinEncoder, nchw_to_nhwc, nhwc_to_nchw


def _build_fusions(config: ModelConfig, text_dim: int) -> nn.ModuleList:
    from entitwist.models.fusion import FusionStage

    return nn.ModuleList(
        FusionStage(dim, text_dim, config.text.max_tokens, config.fusion, stage_index=t)
        for t, dim in enumerate(config.visual.stage_dims)
    )


class EntiTwistNet(
    nn.Module,
    ModelHubMixin,
    library_name="entitwist",
    pipeline_tag="image-segmentation",
    license="apache-2.0",
    tags=["entitwist", "referring-image-segmentation", "remote-sensing", "pytorch"],
):
    """Referring segmentation network of the paper (section III).

    Args:
        config: the model configuration (validated here).
        visual, text, fusions, decoder: optional ready-made parts; built from ``config``
            when omitted.

    ``forward(image, input_ids, attention_mask, entities=None, return_intermediates=False,
    text_features=None)``:

    - ``image`` (B, 3, H, W) float, ImageNet-normalised, H and W multiples of 32;
    - ``input_ids``, ``attention_mask`` (B, N) integer, N <= ``config.text.max_tokens``
      (longer text is truncated with one warning);
    - ``entities`` (B, H, W) integer label map, 0 = none, 1..K with
      K <= ``config.fusion.max_entities``; ``None`` means "no entities" (G = 0) and is
      the only input needed when ``config.fusion.seg`` is off;
    - ``text_features`` optional ``(T^ori, mask)`` as ``self.text(input_ids,
      attention_mask)`` returns them (a frozen encoder's :class:`TextFeatureCache`), used
      instead of running the text encoder.

    Returns logits (B, 2, H, W); with ``return_intermediates=True`` a dict with ``logits``,
    ``stages``: 4 dicts holding ``f_in``, ``f_out`` (B, d_t, h_t, w_t) and, when DAT is
    on, ``cube`` and ``sem`` (B, 2 d_t, h_t, w_t); and ``entity_scores`` (B, K), the entity
    head's scores (``None`` without the head or without entities).

    With ``config.decoder.entity_head_layers > 0`` (an extension, off in the paper's
    configs; :mod:`entitwist.models.entity_head`) the entities also get one score each,
    added to the foreground logit over their cells before the x4 upsampling, and after it
    each pixel's logit margin is pulled towards its entity's mean by a learnt share. Without
    an entity map the head is skipped.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        visual: SwinEncoder | None = None,
        text: TextEncoder | None = None,
        fusions: Sequence[nn.Module] | None = None,
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.visual = visual if visual is not None else SwinEncoder(config.visual)
        self.text = text if text is not None else TextEncoder(config.text)
        if tuple(self.visual.stage_dims) != tuple(config.visual.stage_dims):
            raise ConfigError(
                f"the Swin stages are {self.visual.stage_dims} wide but the config says "
                f"{config.visual.stage_dims}; fix visual.embed_dim/depths"
            )
        self.fusions = (
            nn.ModuleList(fusions)
            if fusions is not None
            else _build_fusions(config, self.text.hidden_size)
        )
        self.decoder = (
            decoder
            if decoder is not None
            else Decoder(config.visual.stage_dims, config.decoder, config.num_classes)
        )
        self.entity_head: nn.Module | None = None
        if config.decoder.entity_head_layers > 0:
            from entitwist.models.entity_head import EntityHead

            d = config.decoder
            if not hasattr(self.decoder, "feature_dim"):
                raise ConfigError(
                    "decoder.entity_head_layers > 0 needs a decoder with return_features and "
                    "feature_dim (entitwist.models.decoder.Decoder); set it to 0 for this decoder"
                )
            self.entity_head = EntityHead(
                self.decoder.feature_dim,  # type: ignore[arg-type]
                self.text.hidden_size,
                d.entity_head_dim,
                d.entity_head_layers,
                d.entity_head_heads,
            )
        self._tokenizer: Tokenizer | None = None
        self._tokenizer_config = config.text
        # The input normalisation (preprocess). Not saved with the weights (persistent=False):
        # every Enti-TwistNet uses the ImageNet statistics of its Swin backbone, and folders
        # saved before these buffers existed keep loading.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD), persistent=False)

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, image: Any) -> Tensor:
        """uint8 RGB ``(H, W, 3)`` or ``(B, H, W, 3)`` (numpy array or tensor) -> the network
        input ``(B, 3, S, S)`` float32 on the model's device, S = ``config.visual.img_size``.

        Bilinear resize with antialiasing in uint8 (PIL-like), then ``(x / 255 - pixel_mean)
        / pixel_std``: :func:`entitwist.imaging.prepare_image`, the very function the
        training transform runs. Read files with :func:`entitwist.imaging.read_image` (with
        ``**config.imaging.read_options()``) first.
        """
        size = int(self.config.visual.img_size)
        x = prepare_image(image, (size, size), self.pixel_mean, self.pixel_std)  # type: ignore[arg-type]
        return x[None] if x.dim() == 3 else x

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self) -> Tokenizer:
        """The :class:`~entitwist.models.tokenizer.Tokenizer` matching the text encoder (built on
        first use, so a model whose vocabulary is not at hand still builds)."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self._tokenizer_config)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Tokenizer) -> None:
        self._tokenizer = value

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        entities: Tensor | None = None,
        return_intermediates: bool = False,
        text_features: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor | dict[str, Any]:
        # shapes and types only: the value checks (check_inputs) need host synchronisations
        input_ids, attention_mask = check_shapes(self, image, input_ids, attention_mask, entities)
        have_entities = entities is not None and entities.numel() > 0
        use_entities = self.config.fusion.seg and have_entities
        num_entities = int(entities.max()) if have_entities else 0

        if text_features is None:
            t_ori, text_mask = self.text(input_ids, attention_mask)  # (B, N, d_t), (B, N)
        else:  # precomputed self.text(input_ids, attention_mask), e.g. a frozen encoder's cache
            t_ori, text_mask = text_features
        x = self.visual.embed(image)  # (B, H/4, W/4, d_0)
        areas = None
        if have_entities:
            from entitwist.models.seg import EntityAreaCache

            areas = EntityAreaCache(entities, num_entities)  # type: ignore[arg-type]  # each grid size counted once
        outs: list[Tensor] = []
        stages: list[dict[str, Tensor]] = []
        for t, fusion in enumerate(self.fusions):
            x = self.visual.stage(t, x)  # (B, h_t, w_t, d_t)
            f_in = nhwc_to_nchw(x)  # (B, d_t, h_t, w_t)
            area = None
            if use_entities:
                area = areas(tuple(f_in.shape[-2:])).to(f_in.dtype)  # type: ignore[misc, arg-type]  # (B, K, h_t, w_t)
            f_out, extras = fusion(f_in, t_ori, text_mask, area)  # (B, d_t, h_t, w_t)
            outs.append(f_out)
            if return_intermediates:
                stages.append({"f_in": f_in, "f_out": f_out, **extras})
            if t + 1 < len(self.fusions):
                x = nchw_to_nhwc(f_in + f_out)  # stage t+1 gets F^in_t + F^out_t
        scores = None
        if self.entity_head is None:
            logits = self.decoder(outs, out_size=tuple(image.shape[-2:]))  # (B, 2, H, W)
        else:
            logits, feats = self.decoder(outs, return_features=True)  # (B, 2, H/4, W/4)
            if have_entities:
                from entitwist.models.entity_head import entity_logit_map

                area = areas(tuple(feats.shape[-2:])).to(feats.dtype)  # type: ignore[misc, arg-type]  # (B, K, H/4, W/4)
                fg = logits.softmax(dim=1)[:, 1]  # the pixel decoder's evidence, (B, H/4, W/4)
                scores = self.entity_head(feats, area, t_ori, text_mask, fg)  # (B, K)
                bias = entity_logit_map(scores, area)  # (B, H/4, W/4)
                logits = logits + torch.stack([torch.zeros_like(bias), bias], dim=1)
            logits = F.interpolate(
                logits, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False
            )
            if scores is not None:  # entity-consistent margins at full resolution
                logits = self.entity_head.refine_logits(logits, entities)
        if return_intermediates:
            return {"logits": logits, "stages": stages, "entity_scores": scores}
        return logits

    def check_inputs(
        self,
        image: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        entities: Tensor | None = None,
    ) -> None:
        """Raise :class:`InputError` (one line) for inputs :meth:`forward` cannot use: what
        ``forward`` checks (shapes, types) and the values (text present, token ids within
        the vocabulary, entity labels within 0..K), which cost host synchronisations: run
        it where inputs enter (:func:`entitwist.models.inputs.check_inputs`)."""
        check_inputs(self, image, input_ids, attention_mask, entities)

    # ------------------------------------------------------------------ checkpoints
    # save_pretrained(dir), push_to_hub(repo_id) and from_pretrained(folder or hub id) come
    # from huggingface_hub's ModelHubMixin; these hooks write and read entitwist's files.
    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``config.json``, ``model.safetensors``, ``tokenizer/`` and the model card
        ``README.md`` (with the folder's ``training.json``, if any) into ``save_directory``,
        each file atomically."""
        from safetensors.torch import save_file

        from entitwist.models.hub import CARD_NAME, read_training_record
        from entitwist.utils import atomic_path

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(save_directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "library": "entitwist"})
        with atomic_path(save_directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        try:
            tokenizer = self.tokenizer
        except ConfigError:
            tokenizer = None  # no vocabulary at hand (e.g. a random CLIP tower offline)
        if tokenizer is not None:
            tokenizer.save_pretrained(save_directory / TOKENIZER_DIR)
        card = self.generate_model_card(training=read_training_record(save_directory))
        with atomic_path(save_directory / CARD_NAME) as tmp:
            card.save(tmp)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The model card: hub metadata (library, task, licence, tags; dataset and validation
        score from ``training=``, a training record), architecture, how to load, intended use
        and limitations. ``repo_id=`` names the repository in the loading example."""
        from entitwist.models.hub import model_card

        data = self._hub_mixin_info.model_card_data
        return model_card(self.config, data, kwargs.get("training"), kwargs.get("repo_id"))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        map_location: str | torch.device | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> EntiTwistNet:
        """Load a model saved by ``save_pretrained``: a local folder, or a hub id
        (``owner/name``, at ``revision``, through the hub cache ``cache_dir``). Safetensors
        only, no pickle; no network when ``HF_HUB_OFFLINE=1`` or ``local_files_only``.

        Raises :class:`CheckpointError` (one line) when the folder is missing or incomplete,
        holds pickled weights, its config or weights are corrupt, or a hub id cannot be had.
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            map_location=map_location,
        )

    @classmethod
    def _from_pretrained(  # type: ignore[override]
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | os.PathLike | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str | torch.device | None = None,
        **model_kwargs: Any,
    ) -> EntiTwistNet:
        from entitwist.models.hub import load_folder, resolve_folder

        folder = resolve_folder(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        return load_folder(cls, folder, map_location)
