"""``EntiTwistModule``: the LightningModule that trains and scores an Enti-TwistNet.

- the network comes from :func:`entitwist.create_model` (a registered name plus config
  overrides, so every ablation is a YAML edit) or from a ``save_pretrained`` folder;
- loss: :func:`entitwist.models.loss.referring_loss`; a non-finite loss stops training with
  :class:`NonFiniteLossError` naming the global step and the batch's sample ids;
- optimiser: AdamW with the no-decay groups and the per-iteration polynomial schedule of
  :mod:`entitwist.train.optim`;
- validation and test: :class:`~entitwist.metrics.ReferringMetrics` under both protocols,
  logged as ``val/mIoU`` (LAVT protocol, the one checkpoints are selected on) and
  ``val/original/mIoU`` (original resolution), and likewise for ``test``;
- checkpoints carry the :class:`~entitwist.config.ModelConfig` and the random-number
  states (so a resumed run continues the same random stream); they are read with
  ``torch.load(weights_only=True)`` only (:mod:`entitwist.train.checkpoints`);
- :class:`~entitwist.train.export.ExportBestCallback` writes the best-on-validation weights
  as a ``save_pretrained`` folder when fitting ends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule

from entitwist.errors import ConfigError, DataError, EntitwistError
from entitwist.metrics import ReferringMetrics, upsample_to_original
from entitwist.models.loss import DICE_WEIGHT, ENTITY_LOSS_WEIGHT
from entitwist.train.checkpoints import CONFIG_KEY, RNG_KEY, restore_rng_states, rng_states

__all__ = ["EntiTwistModule", "NonFiniteLossError"]

PROTOCOL_PREFIX = {"lavt": "", "original": "original/"}


class NonFiniteLossError(EntitwistError):
    """The training loss became NaN or infinite; training stops instead of training through."""


class EntiTwistModule(LightningModule):
    """Train, validate and test an Enti-TwistNet (see the module docstring).

    Args:
        model_name: a registered model (``entitwist models`` lists them).
        model_overrides: ModelConfig fields to change, e.g. ``{"seg": False}``,
            ``{"fusion__dat": "sa"}``, ``{"img_size": 64}`` (see ``ModelConfig.replace``).
        lr: AdamW learning rate (5e-4 in the paper).
        weight_decay: AdamW weight decay outside the no-decay groups (0.01).
        power: exponent of the polynomial decay (0.9).
        pretrained: False builds every part with random weights and never touches the network.
        pretrained_dir: start from a ``save_pretrained`` folder instead (its config wins;
            ``model_name`` and ``model_overrides`` are then ignored).
        warmup_steps: linear learning-rate warm-up before the polynomial decay (0 in the
            paper; the CPU demo, which trains from scratch for a few thousand steps, uses 100).
        dice_weight: weight of the per-sample Dice term of the loss (0.1 in the paper; the
            demo uses 1.0, which leaves the all-background start far sooner).
        entity_loss_weight: weight of
            :func:`~entitwist.models.loss.entity_selection_loss` on the entity head's scores
            (only for models with ``decoder.entity_head_layers > 0``, which the paper's
            configs are not; 0 trains the head through the pixel loss alone).
    """

    def __init__(
        self,
        model_name: str = "entitwist_tiny",
        model_overrides: dict[str, Any] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        power: float = 0.9,
        pretrained: bool = True,
        pretrained_dir: str | None = None,
        warmup_steps: int = 0,
        dice_weight: float = DICE_WEIGHT,
        entity_loss_weight: float = ENTITY_LOSS_WEIGHT,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if lr <= 0:
            raise ConfigError(f"lr={lr} must be positive; the paper uses 5e-4")
        if warmup_steps < 0:
            raise ConfigError(f"warmup_steps={warmup_steps} must be 0 or more; the paper uses 0")
        if dice_weight < 0:
            raise ConfigError(f"dice_weight={dice_weight} must be 0 or more; the paper uses 0.1")
        if entity_loss_weight < 0:
            raise ConfigError(
                f"entity_loss_weight={entity_loss_weight} must be 0 or more (0 = pixel loss only)"
            )
        if pretrained_dir is not None:
            from entitwist.models.enti_twistnet import EntiTwistNet

            self.model = EntiTwistNet.from_pretrained(pretrained_dir)
        else:
            from entitwist.models.registry import create_model

            self.model = create_model(model_name, pretrained=pretrained, **(model_overrides or {}))
        self.lr, self.weight_decay, self.power = float(lr), float(weight_decay), float(power)
        self.warmup_steps, self.dice_weight = int(warmup_steps), float(dice_weight)
        self.entity_loss_weight = float(entity_loss_weight)
        self.val_metrics = torch.nn.ModuleDict(
            {p: ReferringMetrics(protocol=p) for p in PROTOCOL_PREFIX}
        )
        self.test_metrics = torch.nn.ModuleDict(
            {p: ReferringMetrics(protocol=p) for p in PROTOCOL_PREFIX}
        )
        self.test_results: dict[str, dict[str, float]] = {}
        self.val_results: dict[str, dict[str, float]] = {}
        self._rng_to_restore: dict[str, Any] | None = None
        self._text_cache: Any = None  # (device, TextFeatureCache) of a frozen text encoder

    # ------------------------------------------------------------------ what the data needs
    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (the datamodule must use this one)."""
        return self.model.tokenizer

    @property
    def img_size(self) -> int:
        """S, the network's input side."""
        return int(self.model.config.visual.img_size)

    @property
    def max_entities(self) -> int:
        """K, the most entities per image."""
        return int(self.model.config.fusion.max_entities)

    @property
    def entity_generator(self) -> str | None:
        """The generator the model's entity maps must come from, or None (any)."""
        return self.model.config.fusion.entity_generator

    @property
    def entity_params(self) -> dict[str, Any]:
        """The generator parameters the entity store must have (e.g. SAM's model_type)."""
        return dict(self.model.config.fusion.entity_params or {})

    @property
    def read_options(self) -> dict[str, Any]:
        """How image files are read (``model.config.imaging``: bands, stretch), so training
        reads imagery as inference will (:func:`entitwist.imaging.read_image`)."""
        return self.model.config.imaging.read_options()

    @property
    def needs_entities(self) -> bool:
        """Whether the model reads entity maps (SEG or the entity head)."""
        from entitwist.entities.resolve import EntitySpec

        return EntitySpec.of(self.model.config) is not None

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Any], return_entity_scores: bool = False) -> Any:
        """Logits (B, 2, S, S) of a collated batch (keys of ``ReferringTransform``); with
        ``return_entity_scores``, ``(logits, scores)``, the entity head's (B, K) scores or
        None."""
        entities = batch.get("entities")
        if entities is None and self.needs_entities:
            raise DataError(
                "the model uses entity priors (SEG) but the batch carries no entity maps; "
                "build the store with `entitwist entities ROOT` and load the data through "
                "ReferringDataModule.for_module, or turn SEG off (model_overrides: {seg: false})"
            )
        text = self._frozen_text_features(batch["input_ids"], batch["attention_mask"])
        out = self.model(
            batch["image"],
            batch["input_ids"],
            batch["attention_mask"],
            entities,
            text_features=text,
            return_intermediates=return_entity_scores,
        )
        return (out["logits"], out["entity_scores"]) if return_entity_scores else out

    def _text_is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.text.parameters())

    def _frozen_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A frozen text encoder's features from a per-sentence cache (None when it trains)."""
        if not self._text_is_frozen():
            return None
        from entitwist.models.text import TextFeatureCache

        if self._text_cache is None or self._text_cache[0] != input_ids.device:
            self._text_cache = (input_ids.device, TextFeatureCache(self.model.text))
        cache = self._text_cache[1]
        self.model.text.eval()  # a frozen encoder runs without dropout, cached or not
        return cache(input_ids, attention_mask)

    def train(self, mode: bool = True) -> EntiTwistModule:
        super().train(mode)
        if self._text_is_frozen():
            self.model.text.eval()
        return self

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        from entitwist.models.loss import entity_selection_loss, referring_loss

        head = self.model.entity_head is not None and self.entity_loss_weight > 0
        logits, scores = self(batch, return_entity_scores=True) if head else (self(batch), None)
        loss = referring_loss(logits, batch["mask"], dice_weight=self.dice_weight)
        bsz = batch["mask"].shape[0]
        if scores is not None:
            entity_loss = entity_selection_loss(scores, batch["entities"], batch["mask"])
            self.log(
                "train/entity_loss",
                entity_loss,
                on_step=True,
                on_epoch=True,
                sync_dist=True,
                batch_size=bsz,
            )
            loss = loss + self.entity_loss_weight * entity_loss
        self._check_finite(loss, batch)
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            sync_dist=True,  # the epoch mean over every process's samples
            batch_size=bsz,
        )
        self.log(
            "train/lr",
            self.optimizers().param_groups[0]["lr"],
            on_step=True,
            on_epoch=False,
            batch_size=bsz,
        )
        return loss

    def _check_finite(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            bad_any = trainer.strategy.reduce_boolean_decision(bad, all=False)
        else:
            bad_any = bad
        if not bad_any:
            return
        step = self.global_step
        ids = batch.get("sample_id")
        where = (
            f"batch sample ids: {', '.join(map(str, ids))}" if ids and bad else "on another process"
        )
        raise NonFiniteLossError(
            f"non-finite training loss ({float(loss.detach()):g}) at global step {step} ({where}); "
            "lower the learning rate, check those samples, or use precision 32"
        )

    def configure_optimizers(self) -> dict[str, Any]:  # type: ignore[override]
        from entitwist.train.optim import build_optimizer, build_poly_scheduler

        optimizer = build_optimizer(self.model, lr=self.lr, weight_decay=self.weight_decay)
        total = self.total_training_steps()
        if not np.isfinite(total) or total <= 0:
            raise ConfigError(
                "the polynomial schedule needs a finite number of steps; set trainer.max_epochs or trainer.max_steps"
            )
        scheduler = build_poly_scheduler(optimizer, int(total), self.power, self.warmup_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def total_training_steps(self) -> float:
        """Optimiser steps of the whole run (T of the polynomial schedule).

        Equal to ``trainer.estimated_stepping_batches``, but computed from the datamodule's
        :meth:`train_steps_per_epoch` when it has one, so that the train loader is built only
        after a checkpoint's progress is restored (exact mid-epoch resumption).
        """
        trainer = self.trainer
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return trainer.max_steps
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if (
            dm is None
            or not hasattr(dm, "train_steps_per_epoch")
            or trainer.max_epochs is None
            or trainer.max_epochs < 0
        ):
            return trainer.estimated_stepping_batches
        batches = dm.train_steps_per_epoch()
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None:
            batches = int(batches * float(limit))
        per_epoch = max(1, -(-batches // max(1, trainer.accumulate_grad_batches)))
        return per_epoch * trainer.max_epochs

    # ------------------------------------------------------------------ evaluation
    def _eval_step(
        self, batch: dict[str, Any], metrics: torch.nn.ModuleDict, stage: str
    ) -> torch.Tensor:
        from entitwist.models.loss import referring_loss

        logits = self(batch)  # (B, 2, S, S)
        target = batch["mask"]  # (B, S, S)
        loss = referring_loss(logits, target, dice_weight=self.dice_weight)  # as in training
        metrics["lavt"].update(logits.argmax(dim=1).bool(), target.bool())
        for i, mask in enumerate(batch.get("mask_orig") or []):
            mask = torch.as_tensor(mask, device=logits.device).bool()  # (H, W)
            pred = upsample_to_original(logits[i : i + 1].float(), tuple(mask.shape))  # type: ignore[arg-type]  # (1, H, W)
            metrics["original"].update(pred, mask[None])
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=target.shape[0],
        )
        return loss

    def _eval_epoch_end(
        self, metrics: torch.nn.ModuleDict, stage: str
    ) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        for protocol, prefix in PROTOCOL_PREFIX.items():
            metric = metrics[protocol]
            if not metric.update_called:
                continue
            values = {k: float(v) for k, v in metric.compute().items()}
            results[protocol] = values
            for k, v in values.items():
                # already merged across processes by the metric: no sync_dist
                # compute() already gathered every process's counts, so the value is the same on
                # every rank; sync_dist averages equal numbers (and keeps Lightning from warning)
                self.log(
                    f"{stage}/{prefix}{k}",
                    v,
                    prog_bar=(protocol == "lavt" and k == "mIoU"),
                    sync_dist=True,
                )
            metric.reset()
        return results

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_results = self._eval_epoch_end(self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._eval_epoch_end(self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Per sample: ``sample_id`` and the predicted mask at the image's original size."""
        logits = self(batch)  # (B, 2, S, S)
        sizes = batch.get("orig_size") or [tuple(logits.shape[-2:])] * logits.shape[0]
        masks = [
            upsample_to_original(logits[i].float(), tuple(sizes[i])).cpu()
            for i in range(logits.shape[0])
        ]
        return {"sample_id": list(batch.get("sample_id", [])), "mask": masks}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.model.config.to_dict()
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    def _record_entity_source(self) -> None:
        """Write the training store's generator and all its parameters into the model config
        (the store matched what the config recorded, so this only adds detail), so that
        exported models tell the predictor exactly which entities to compute for new images."""
        if not self.needs_entities or self._trainer is None:
            return
        manifest = _entity_manifest(self.trainer.train_dataloader)
        if manifest and manifest.get("generator"):
            self.model.config = self.model.config.replace(
                fusion__entity_generator=str(manifest["generator"]),
                fusion__entity_params=dict(manifest.get("params") or {}),
            )

    def setup(self, stage: str) -> None:
        """Under DDP on GPUs, the decoder's BatchNorm layers become ``SyncBatchNorm``.

        Why: the paper trains with batch 8 on one GPU, so the decoder's BatchNorm sees 8
        samples per step. Under DDP ``data.batch_size`` is per process (8/N to keep the
        paper's total), and plain BatchNorm would normalise each process's 8/N samples on
        their own: noisier statistics (1-2 samples per process on 4-8 GPUs) than the
        paper's and running statistics that depend on N. Synchronised statistics over the
        whole batch keep training equivalent to the paper's single-GPU recipe. The
        parameters and buffers are the same, so checkpoints and exports do not change. On
        CPUs (the demo's two DDP processes) BatchNorm stays per process: PyTorch's
        SyncBatchNorm needs a GPU.
        """
        trainer = self._trainer
        if trainer is None or stage != "fit" or trainer.world_size <= 1:
            return
        if trainer.strategy.root_device.type != "cuda":
            return
        self.model.decoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model.decoder)

    def on_train_start(self) -> None:
        self._record_entity_source()
        # Restore the random streams of the interrupted run once everything else is set up.
        states, self._rng_to_restore = self._rng_to_restore, None
        if states:
            restore_rng_states(states)


def _entity_manifest(loader: Any) -> dict[str, Any] | None:
    """The manifest of the entity store a training loader's dataset reads, if any."""
    folder = getattr(getattr(loader, "dataset", None), "entity_dir", None)
    if folder is None:
        return None
    from entitwist.entities.store import EntityStore

    manifest = EntityStore(folder).manifest
    return manifest if isinstance(manifest, dict) else None
