"""Training and evaluation engine (Lightning): module, datamodule, CLI, metrics reports.

Command line: ``entitwist fit | validate | test | predict --config NAME|FILE.yaml`` and
``entitwist evaluate``. From Python, the same YAML-shaped dict::

    from entitwist.train import train
    result = train({
        "model": {"model_name": "entitwist_tiny", "model_overrides": {"img_size": 64}},
        "data": {"dataset": "jsonl", "root": "scenes/", "batch_size": 4},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "default_root_dir": "runs/demo"},
    })
    result["test"]["lavt"]["mIoU"], result["export"]

Or build the parts yourself::

    from entitwist.train.module import EntiTwistModule
    from entitwist.train.datamodule import ReferringDataModule
    module = EntiTwistModule("entitwist_tiny", {"img_size": 64})
    data = ReferringDataModule.for_module(module, dataset="jsonl", root="scenes/")
    trainer = lightning.Trainer(max_epochs=2, use_distributed_sampler=False)
    trainer.fit(module, datamodule=data)

Lightning is imported only when these modules are.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train"]


def train(config: dict[str, Any], *, test: bool = True) -> dict[str, Any]:
    """Fit (then test, on the best-on-validation checkpoint) from a YAML-shaped dict.

    ``config`` takes the keys of a config file without a subcommand (``model``, ``data``,
    ``trainer``, ``checkpoint``, ``export``, ``seed_everything``); it is validated exactly as
    ``entitwist fit --config`` validates a file (one-line errors before any work).

    Returns a dict: ``best_checkpoint`` (path or None), ``last_checkpoint``, ``export`` (the
    ``save_pretrained`` folder), ``val`` and ``test`` (``{protocol: {metric: value}}``), and
    ``log_dir``.
    """
    from entitwist.train.cli import build
    from entitwist.train.export import ExportBestCallback

    cli = build(config)
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(module, datamodule=data)
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or None
    last = getattr(ckpt_cb, "last_model_path", "") or None
    export = next(
        (cb.exported for cb in trainer.callbacks if isinstance(cb, ExportBestCallback)),  # type: ignore[attr-defined]
        None,
    )
    result: dict[str, Any] = {
        "best_checkpoint": best,
        "last_checkpoint": last,
        "export": str(export) if export else None,
        "val": dict(module.val_results),
        "log_dir": trainer.log_dir,
    }
    if test:
        trainer.test(module, datamodule=data, ckpt_path=best, weights_only=True)
        result["test"] = dict(module.test_results)
    return result
