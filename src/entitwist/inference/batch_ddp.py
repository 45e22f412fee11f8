"""A batch of images on Lightning's predict loop: several CPU processes or GPUs (DDP), on one
or several machines. Imported only for ``devices * num_nodes > 1`` (Lightning is an extra).

:class:`BatchDataModule` hands process ``r`` of ``W`` the chunks ``r, r + W, r + 2W, ...``
of :func:`~entitwist.inference.batch.chunks` (no padding, no repeats), so every chunk, and
therefore every output file, is the same whatever ``W``. :class:`BatchPredictModule` runs
:func:`~entitwist.inference.batch.run_chunk` on each; every process writes its statuses to
a file in the output folder, merged by the launching process.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import lightning
import torch

from entitwist.errors import InputError
from entitwist.inference.batch import BatchItem, BatchSettings, chunks, run_chunk

__all__ = ["BatchDataModule", "BatchPredictModule", "run_ddp", "check_devices"]


def _first(batch: list[Any]) -> Any:
    return batch[0]


class BatchDataModule(lightning.LightningDataModule):
    """The chunks of a list of :class:`BatchItem`, shared among the processes by position."""

    def __init__(self, items: list[BatchItem], batch_size: int) -> None:
        super().__init__()
        self.all_chunks = chunks(items, batch_size)

    def rank_chunks(self, rank: int, world: int) -> list[list[BatchItem]]:
        return self.all_chunks[rank::world]

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        trainer = self.trainer
        rank, world = (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)
        return torch.utils.data.DataLoader(
            self.rank_chunks(rank, world),  # type: ignore[arg-type]  # a list is a map-style dataset
            batch_size=1,
            collate_fn=_first,
            shuffle=False,
        )


class BatchPredictModule(lightning.LightningModule):
    """Runs :func:`run_chunk` on each chunk; the predictor's network is a submodule, so
    Lightning puts it on each process's device."""

    def __init__(self, predictor: Any, settings: BatchSettings, token: str) -> None:
        super().__init__()
        self.net = predictor.model
        self.predictor = predictor
        self.settings = settings
        self.token = token
        self.statuses: list[dict[str, Any]] = []

    def on_predict_start(self) -> None:
        self.predictor.device = self.device
        if self.settings.threads:  # else Lightning's share of the cores
            torch.set_num_threads(self.settings.threads)
        self.statuses = []

    def predict_step(self, batch: list[BatchItem], batch_idx: int) -> None:
        self.statuses += run_chunk(batch, self.predictor, self.settings)

    def on_predict_end(self) -> None:
        from entitwist.utils import atomic_write_bytes

        path = status_path(self.settings.out_dir, self.token, self.global_rank)
        atomic_write_bytes(path, json.dumps(self.statuses).encode("utf-8"))
        self.trainer.strategy.barrier()


def status_path(out_dir: Path, token: str, rank: int) -> Path:
    return out_dir / f".entitwist-batch-{token}-rank{rank}.json"


def check_devices(devices: int, num_nodes: int, accelerator: str) -> None:
    """One line when this machine has fewer processors (or GPUs) than ``devices``."""
    if devices < 1 or num_nodes < 1:
        raise InputError(f"--devices {devices} / --num-nodes {num_nodes} must be at least 1")
    if accelerator == "gpu":
        have = torch.cuda.device_count()
        if devices > have:
            raise InputError(
                f"--devices {devices} but this machine has {have} GPU(s); use --devices {max(1, have)}"
            )
        return
    have = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    if devices > (have or 1):
        raise InputError(
            f"--devices {devices} but this machine has {have} processor(s); "
            f"use --devices {have} or fewer"
        )


def run_ddp(
    items: list[BatchItem],
    predictor: Any,
    settings: BatchSettings,
    *,
    devices: int,
    num_nodes: int = 1,
    accelerator: str = "cpu",
    progress: bool = True,
) -> list[dict[str, Any]] | None:
    """Run the chunks on ``devices`` processes per machine (DDP started by fork where the
    platform has it) and return the merged statuses; the first machine merges the files of
    every process, the others return None."""
    import multiprocessing as mp

    check_devices(devices, num_nodes, accelerator)
    token = uuid.uuid4().hex[:12]
    strategy = "ddp_fork" if "fork" in mp.get_all_start_methods() else "ddp_spawn"
    trainer = lightning.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(settings.out_dir),
    )
    module = BatchPredictModule(predictor, settings, token)
    data = BatchDataModule(items, settings.batch_size)
    trainer.predict(module, datamodule=data, return_predictions=False)
    if trainer.node_rank != 0:
        return None
    statuses: list[dict[str, Any]] = []
    for rank in range(devices * num_nodes):
        path = status_path(settings.out_dir, token, rank)
        if path.is_file():
            statuses += json.loads(path.read_text(encoding="utf-8"))
            path.unlink()
    done = {s["index"] for s in statuses}
    for item in items:  # a process that died before reporting: its images are failures
        if item.index not in done:
            statuses.append(
                {
                    "index": item.index,
                    "image": str(item.image),
                    "sentence": item.sentence,
                    "output": str(item.stem),
                    "status": "failed",
                    "error": "the process segmenting it did not report; run again to resume",
                }
            )
    return statuses
