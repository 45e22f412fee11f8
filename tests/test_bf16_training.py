"""Lightning training in bf16 mixed precision (CPU autocast): finite losses that fall.

Every bf16-mixed run without mamba-ssm's CUDA kernel runs the project's selective scan
inside autocast; the tiny model's Mamba layers are checked to run there.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import lightning as L
import torch

from entitwist.models.mamba import Mamba
from entitwist.train.datamodule import ReferringDataModule
from entitwist.train.module import EntiTwistModule

STEPS = 24


class LossLog(L.Callback):
    """Training losses per step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_bf16_mixed_training_losses_fall(tmp_path: Path) -> None:
    from entitwist.data.synthetic import write_dataset
    from entitwist.entities.cli import main as entities_main

    root = tmp_path / "scenes"
    write_dataset(root, 5, size=64, seed=3, splits=(0.6, 0.2, 0.2), progress=False,
                  expressions_per_scene=2)  # fmt: skip
    assert entities_main([str(root)]) == 0
    L.seed_everything(0)
    module = EntiTwistModule("entitwist_tiny", {"img_size": 64}, lr=1e-3)  # Mamba propagation
    data = ReferringDataModule.for_module(module, dataset="jsonl", root=str(root), batch_size=2)

    seen: list[tuple[bool, torch.dtype]] = []  # (autocast on, output dtype) of Mamba layers

    def record(layer: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        seen.append((torch.is_autocast_enabled("cpu"), out.dtype))

    layers = [m for m in module.model.modules() if isinstance(m, Mamba)]
    assert layers
    for layer in layers:
        layer.register_forward_hook(record)
    log = LossLog()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=STEPS,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[log],
    )
    trainer.fit(module, datamodule=data)
    assert len(log.losses) == STEPS
    assert all(math.isfinite(x) for x in log.losses), log.losses
    head, tail = statistics.mean(log.losses[:6]), statistics.mean(log.losses[-6:])
    assert tail < 0.9 * head, log.losses
    # the Mamba layers (and so the scan) ran inside bf16 autocast
    assert seen and all(on for on, _ in seen)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
