"""Exporting a trained Enti-TwistNet as a ``save_pretrained`` folder.

- :func:`export_pretrained` writes ``model.save_pretrained`` atomically (a temporary folder
  renamed into place), with an optional ``training.json``;
- :class:`ExportBestCallback` exports the best-on-validation weights when fitting ends.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from entitwist.train.checkpoints import load_checkpoint

__all__ = ["ExportBestCallback", "export_pretrained"]


class ExportBestCallback(Callback):
    """At the end of ``fit``, write the best-on-validation weights as a ``save_pretrained`` folder.

    The best checkpoint is the trainer's ``ModelCheckpoint.best_model_path`` (selected on
    the validation split's metric, never the test split). Without one (no validation, or
    ``fast_dev_run``) the final weights are exported and ``selected_on`` says ``"last"``.
    Beside the weights, ``training.json`` records the checkpoint, monitor and score.

    Args:
        dirpath: target folder; default ``<trainer.log_dir>/export``. Replaced atomically.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.exported: Path | None = None
        self.info: dict[str, Any] = {}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # trainer.log_dir is a collective under DDP: read it on every rank, then leave rank > 0
        target = (
            Path(self.dirpath)
            if self.dirpath
            else Path(trainer.log_dir or trainer.default_root_dir) / "export"
        )
        if not trainer.is_global_zero:
            return
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        model = copy.deepcopy(pl_module.model).cpu()
        run = {"epochs_run": int(trainer.current_epoch), "steps_run": int(trainer.global_step)}
        info: dict[str, Any] = {"selected_on": "last", "global_step": int(trainer.global_step)}
        if best and getattr(ckpt_cb, "monitor", None):
            data = load_checkpoint(best)
            state = {
                k[len("model.") :]: v
                for k, v in data["state_dict"].items()
                if k.startswith("model.")
            }
            model.load_state_dict(state, strict=True)
            score = ckpt_cb.best_model_score
            info = {
                "selected_on": "val",
                "monitor": ckpt_cb.monitor,
                "score": None if score is None else float(score),
                "checkpoint": str(best),
                "epoch": int(data.get("epoch", -1)),
                "global_step": int(data.get("global_step", -1)),
            }
        info.update(run)
        dataset = getattr(getattr(trainer, "datamodule", None), "dataset_name", None)
        if dataset:
            info["dataset"] = str(dataset)
        self.info = info
        self.exported = export_pretrained(model, target, info)


def export_pretrained(
    model: Any, target: str | os.PathLike, info: dict[str, Any] | None = None
) -> Path:
    """``model.save_pretrained`` into ``target`` atomically (a temporary folder renamed into place)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if info is not None:  # first: the model card quotes it
            (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        model.save_pretrained(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
