"""``ReferringDataModule``: a dataset's train/val/test splits as seeded, resumable loaders.

Programmatic use (the CLI wires the same from a YAML file)::

    module = EntiTwistModule("entitwist_tiny", model_overrides={"img_size": 64})
    data = ReferringDataModule.for_module(module, dataset="jsonl", root="scenes/", batch_size=4)
    trainer = lightning.Trainer(max_epochs=2, use_distributed_sampler=False)
    trainer.fit(module, datamodule=data)

The tokenizer, the image size S and the entity priors (generator, its recorded parameters,
K, whether any are read) come from the model (``for_module`` or the CLI's argument links),
so data and network can never disagree: the entity store is the one
:func:`entitwist.entities.resolve_store` finds for the model, or a one-line error.

Loading order and resumption. The training sampler is a
:class:`~torch.utils.data.DistributedSampler` (one replica when not distributed) whose
permutation is a function of ``(seed, epoch)`` only; the dataset's one-expression-per-ref
draw is a function of ``(seed, epoch, index)``. When a run resumes from a mid-epoch
checkpoint, the sampler skips the batches the interrupted run already trained on, so the
resumed run sees exactly the batches the uninterrupted run would have seen. Evaluation
splits are sharded across processes without padding, so every expression is scored once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler

from entitwist.entities.resolve import EntitySpec, resolve_store
from entitwist.errors import ConfigError, DataError

__all__ = ["ReferringDataModule", "ResumableSampler", "ShardSampler", "check_data_args"]


class ResumableSampler(DistributedSampler):
    """Seeded shuffling sampler for training that can start mid-epoch.

    A ``DistributedSampler`` (so Lightning leaves it in place under DDP) whose permutation
    depends on ``(seed, epoch)`` only. :meth:`skip_next` drops the first ``n`` indices of the
    next iteration (this replica's share), which resumes an epoch where a checkpoint left
    it; ``len()`` keeps the full epoch length, as Lightning's progress counters expect.
    ``set_epoch`` is forwarded to the dataset (its seeded expression draw).
    """

    def __init__(
        self,
        dataset: Any,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def skip_next(self, n: int) -> None:
        """Skip the first ``n`` indices of the next iteration only."""
        self._skip = max(0, int(n))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


class ShardSampler(DistributedSampler):
    """In-order evaluation sampler: replica ``rank`` takes indices ``rank, rank + R, ...``.

    No padding, so under DDP every expression is scored exactly once (ranks may get one
    sample more or less; the metrics merge per-expression counts, so that is exact). A
    ``DistributedSampler`` subclass, so Lightning does not replace it with a padding one.
    """

    def __init__(self, dataset: Any, *, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.length = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))


class ReferringDataModule(LightningDataModule):
    """Train/val/test/predict splits of one dataset (see the module docstring).

    Args:
        dataset: ``refsegrs``, ``rrsisd``, ``risbench`` or ``jsonl`` (:func:`entitwist.data.load_dataset`).
        root: the dataset folder; it must exist.
        train_split, val_split, test_split: split names (``None`` disables one).
        predict_split: split used by ``predict`` (defaults to ``test_split``).
        img_size: S, the network's input side (linked from the model by the CLI).
        batch_size: samples per process and step (the paper: 8).
        eval_batch_size: for val/test/predict (default: ``batch_size``).
        num_workers: loader worker processes.
        entities: ``"auto"`` (the store under ``<root>/entities`` whose manifest matches
            the model), a tag, a folder, or ``None``. Whichever way it is chosen, the store
            must match the model (:func:`entitwist.entities.resolve_store`); no match, or
            no store while the model needs one, is a one-line :class:`DataError` naming
            the ``entitwist entities`` command that builds the right one.
        max_entities: K (linked from the model); the store's manifest must say the same K.
        entity_generator, entity_params: the generator (and its recorded parameters, e.g.
            SAM's ``model_type``) the model was built for (linked from the model's
            ``fusion.entity_generator`` / ``fusion.entity_params``; ``None``: any).
        needs_entities: whether the model reads entity maps at all (SEG or the entity
            head; linked from the model). False: no store is looked for or read.
        read_options: how image files are read (bands, stretch; linked from the model's
            ``config.imaging``, see :func:`entitwist.imaging.read_image`).
        seed: seeds the shuffling and the one-expression-per-ref draw.
        tokenizer: the model's tokenizer (``module.model.tokenizer``; linked by the CLI).
        dataset_options: extra keyword options of the dataset loader (e.g. ``mask_threshold``).
    """

    def __init__(
        self,
        dataset: str = "jsonl",
        root: str = "data",
        *,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        predict_split: str | None = None,
        img_size: int = 480,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        entities: str | None = "auto",
        max_entities: int = 40,
        entity_generator: str | None = None,
        entity_params: dict[str, Any] | None = None,
        needs_entities: bool = True,
        read_options: dict[str, Any] | None = None,
        seed: int = 0,
        tokenizer: Any = None,
        dataset_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_data_args(
            dataset=dataset,
            root=root,
            img_size=img_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            max_entities=max_entities,
        )
        self.dataset_name = dataset
        self.root = Path(os.path.expanduser(root))
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.splits["predict"] = predict_split if predict_split is not None else test_split
        self.img_size = int(img_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.entities = entities
        self.max_entities = int(max_entities)
        self.entity_generator = entity_generator
        self.entity_params = dict(entity_params or {})
        self.needs_entities = bool(needs_entities)
        self.read_options = dict(read_options or {})
        self._entity_store: tuple[Path | None] | None = None  # resolved once
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.dataset_options = dict(dataset_options or {})
        self.datasets: dict[str, Any] = {}
        self._train_sampler: ResumableSampler | None = None

    @classmethod
    def for_module(cls, module: Any, **kwargs: Any) -> ReferringDataModule:
        """A datamodule whose tokenizer, S and K are those of ``module``'s model."""
        config = module.model.config
        kwargs.setdefault("img_size", config.visual.img_size)
        kwargs.setdefault("max_entities", config.fusion.max_entities)
        spec = EntitySpec.of(config)
        kwargs.setdefault("entity_generator", config.fusion.entity_generator)
        kwargs.setdefault("entity_params", dict(config.fusion.entity_params or {}))
        kwargs.setdefault("needs_entities", spec is not None)
        kwargs.setdefault("read_options", config.imaging.read_options())
        return cls(tokenizer=module.model.tokenizer, **kwargs)

    # ------------------------------------------------------------------ entity store
    def entity_spec(self) -> EntitySpec | None:
        """What the model needs from the entity store (None: it reads no entity maps)."""
        if not self.needs_entities:
            return None
        from entitwist.entities.store import imaging_record

        imaging = imaging_record(self.read_options.get("bands"), self.read_options.get("stretch"))
        return EntitySpec(self.entity_generator, self.max_entities, self.entity_params, imaging)

    def entity_store(self) -> Path | None:
        """The entity store folder every split reads (resolved once; see ``entities``)."""
        if self._entity_store is None:
            spec = self.entity_spec()
            folder = None if spec is None else resolve_store(self.root, self.entities, spec)
            self._entity_store = (folder,)
        return self._entity_store[0]

    # ------------------------------------------------------------------ datasets
    def _load(self, stage: str) -> Any:
        from entitwist.data import ReferringTransform, load_dataset

        split = self.splits[stage]
        if split is None:
            raise ConfigError(f"no {stage} split configured; set data.{stage}_split")
        if self.tokenizer is None:
            raise ConfigError(
                "ReferringDataModule has no tokenizer; build it with "
                "ReferringDataModule.for_module(module, ...) or pass tokenizer=model.tokenizer"
            )
        store = self.entity_store()
        entities = None if store is None else str(store)
        dataset = load_dataset(
            self.dataset_name,
            self.root,
            split,
            transform=ReferringTransform(self.img_size, self.tokenizer),
            entities=entities,
            one_expression_per_ref=(stage == "train"),
            max_entities=self.max_entities,
            seed=self.seed,
            **self.dataset_options,
        )
        dataset.read_options = dict(self.read_options)  # the model's bands and stretch
        return dataset

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
            None: ["train", "val", "test"],
        }.get(stage, [])
        for name in wanted:
            if name not in self.datasets and self.splits[name] is not None:
                self.datasets[name] = self._load(name)

    def dataset(self, stage: str) -> Any:
        """The dataset of ``stage`` (``train``/``val``/``test``/``predict``), loaded on demand."""
        if stage not in self.datasets:
            self.datasets[stage] = self._load(stage)
        return self.datasets[stage]

    # ------------------------------------------------------------------ loaders
    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(self, dataset: Any, sampler: Any, batch_size: int) -> DataLoader:
        from entitwist.data import collate_referring

        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_referring,
            # own generator: creating an iterator never draws from the global RNG, so a
            # resumed run's random stream matches the uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=False,
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        replicas, rank = self._replicas()
        sampler = ResumableSampler(dataset, num_replicas=replicas, rank=rank, seed=self.seed)
        epoch, consumed = self._resume_position()
        sampler.set_epoch(epoch)
        steps_per_epoch = math.ceil(len(sampler) / self.batch_size)
        if 0 < consumed < steps_per_epoch:
            sampler.skip_next(consumed * self.batch_size)
        self._train_sampler = sampler
        return self._loader(dataset, sampler, self.batch_size)

    def train_steps_per_epoch(self) -> int:
        """Training batches per epoch on each process (loads the train split's index only).

        The module's learning-rate schedule uses this instead of
        ``trainer.estimated_stepping_batches``, which would build the train loader before
        Lightning restores a checkpoint's loop progress (and so defeat mid-epoch resumption).
        """
        replicas, _ = self._replicas()
        per_replica = math.ceil(len(self.dataset("train")) / replicas)
        return math.ceil(per_replica / self.batch_size)

    def _resume_position(self) -> tuple[int, int]:
        """(epoch, batches already trained in it) when resuming from a checkpoint, else (epoch, 0).

        Read from the trainer's restored loop progress (Lightning restores it before it asks
        for the train loader).
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        loop = trainer.fit_loop
        epoch = int(trainer.current_epoch)
        consumed = 0
        if loop.restarting:
            consumed = int(loop.epoch_loop.batch_progress.current.processed)
        return epoch, consumed

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self.dataset(stage)
        replicas, rank = self._replicas()
        return self._loader(
            dataset, ShardSampler(dataset, num_replicas=replicas, rank=rank), self.eval_batch_size
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


def check_data_args(
    *,
    dataset: str,
    root: str | os.PathLike,
    img_size: int = 480,
    batch_size: int = 8,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    max_entities: int = 40,
    entities: str | None = "auto",
    need: EntitySpec | None = None,
) -> None:
    """One-line :class:`ConfigError` / :class:`DataError` for a data setting that cannot work.

    Cheap (a ``stat`` and the entity stores' manifests), so the CLI calls it before building
    anything. With ``need`` (the model's :meth:`EntitySpec.of`), the entity store is
    resolved too: a missing or mismatched store stops here, before any step.
    """
    from entitwist.data import list_datasets
    from entitwist.entities.labelmap import check_max_entities

    if dataset not in list_datasets():
        raise ConfigError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(list_datasets())}"
        )
    path = Path(os.path.expanduser(str(root)))
    if not path.is_dir():
        raise DataError(
            f"dataset root {str(path)!r} does not exist; set data.root to the {dataset} folder"
            + (" (make one with `entitwist synth OUT`)" if dataset == "jsonl" else "")
        )
    if int(batch_size) < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1; set data.batch_size")
    if eval_batch_size is not None and int(eval_batch_size) < 1:
        raise ConfigError(
            f"eval batch size {eval_batch_size} must be at least 1; set data.eval_batch_size"
        )
    if int(num_workers) < 0:
        raise ConfigError(f"num_workers={num_workers} must be 0 or more")
    check_max_entities(max_entities)
    if int(img_size) < 32 or int(img_size) % 32:
        raise ConfigError(f"img_size={img_size} must be a positive multiple of 32")
    if need is not None:
        resolve_store(path, entities, need)
