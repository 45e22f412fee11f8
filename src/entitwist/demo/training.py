"""Step 3 of ``entitwist demo``: train the tiny model on the CPU and export the best weights.

:func:`train_step` fits with one checkpoint per epoch chosen on the validation split,
resumes an interrupted run from ``<out>/run/checkpoints/last.ckpt`` (also after ``<out>``
was moved: :func:`movable_checkpoint_class`), refuses to mix runs of other settings
(:func:`run_settings`), and exports the best-on-validation weights as the
``save_pretrained`` folder ``<out>/model``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from entitwist.demo.common import cpu_seconds, read_json, say, write_json
from entitwist.errors import ConfigError


# ------------------------------------------------------------------------------ step 3: train
def run_settings(
    args: argparse.Namespace, model_name: str, root: Path, store: Path | None = None
) -> dict[str, Any]:
    """What a finished or interrupted run must share with this one to be reused.

    Besides the options: the entity store (its folder name is the generator and its
    parameters) and a digest of the model's full configuration, so a run made by another
    version of the code (another generator, another tiny-model default) is never taken
    for this one.
    """
    return {
        "model": model_name,
        "model_config": model_config_digest(args, model_name, store),
        "entities": None if store is None else store.name,
        "data": "<out>/scenes" if args.data is None else str(root),  # so <out> may move
        "size": args.size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "devices": args.devices,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "dice_weight": args.dice_weight,
        "grad_clip": args.grad_clip,
        "seed": args.seed,
        "train_text": bool(args.train_text),
        "scenes": None if args.data else args.scenes,
        "object_scale": None if args.data else args.object_scale,
        "density": None if args.data else args.density,
    }


def model_overrides(args: argparse.Namespace, store: Path | None) -> dict[str, Any]:
    """The demo's changes to the registered model: input size, and the entity generator
    that made the training maps, recorded so that ``entitwist segment`` and the app use the
    same one for ``--entities auto``."""
    overrides: dict[str, Any] = {"img_size": args.size}
    manifest = None if store is None else read_json(store / "manifest.json")
    if manifest is not None:
        overrides["fusion__entity_generator"] = manifest.get("generator")
        overrides["fusion__entity_params"] = manifest.get("params") or {}
    return overrides


def model_config_digest(args: argparse.Namespace, model_name: str, store: Path | None) -> str:
    import hashlib
    import json

    from entitwist.models.registry import get_config

    config = get_config(model_name, pretrained=False, **model_overrides(args, store))
    blob = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_module(args: argparse.Namespace, model_name: str, store: Path | None = None) -> Any:
    from entitwist.train.module import EntiTwistModule

    module = EntiTwistModule(
        model_name=model_name,
        model_overrides=model_overrides(args, store),
        lr=args.lr,
        pretrained=True,
        warmup_steps=args.warmup_steps,
        dice_weight=args.dice_weight,
    )
    pretrained_text = module.model.config.text.pretrained is not None
    if pretrained_text and not args.train_text:
        for param in module.model.text.parameters():
            param.requires_grad_(False)
    return module


def _datamodule(
    args: argparse.Namespace, module: Any, root: Path, ann: str | None, store: Path
) -> Any:
    from entitwist.train.datamodule import ReferringDataModule

    options = {"annotations": ann} if ann else {}
    return ReferringDataModule.for_module(
        module,
        dataset="jsonl",
        root=str(root),
        batch_size=args.batch_size // args.devices,  # per process; the step sees batch_size
        eval_batch_size=max(16, args.batch_size),
        num_workers=args.workers,
        entities=str(store.resolve()),
        seed=args.seed,
        dataset_options=options,
    )


def train_step(
    args: argparse.Namespace, out: Path, root: Path, ann: str | None, store: Path, model_name: str
) -> dict[str, Any]:
    import lightning
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from entitwist.train.export import ExportBestCallback

    run = out / "run"
    model_dir = out / "model"
    settings = run_settings(args, model_name, root, store)
    done_file = run / "done.json"
    done = read_json(done_file)
    if done is not None and (model_dir / "config.json").is_file():
        if done.get("settings") != settings:
            raise ConfigError(
                f"{run} holds a finished run with other settings; rerun with those or pass --fresh"
            )
        say(
            3,
            "train",
            f"done already: best val mIoU {done['best_val_mIoU']:.2f} at epoch {done['epoch']}, "
            f"model in {model_dir} (skipped)",
        )
        return done
    last = run / "checkpoints" / "last.ckpt"
    started = read_json(run / "settings.json")
    if started is not None and started != settings and last.is_file():
        raise ConfigError(
            f"{run} holds an unfinished run with other settings; rerun with those or pass --fresh"
        )
    write_json(run / "settings.json", settings)

    lightning.seed_everything(args.seed, workers=True, verbose=False)
    module = build_module(args, model_name, store)
    data = _datamodule(args, module, root, ann, store)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    resume = last.is_file()
    procs = f", {args.devices} processes (DDP)" if args.devices > 1 else ""
    say(
        3,
        "train",
        f"{'resuming from ' + str(last) if resume else 'training'} {model_name} at {args.size} px "
        f"on the CPU ({trainable / 1e6:.2f} M of {total / 1e6:.2f} M parameters trained), "
        f"{args.epochs} epochs, batch {args.batch_size}{procs}, lr {args.lr:g}",
    )
    ckpt = movable_checkpoint_class(ModelCheckpoint)(
        dirpath=run / "checkpoints",
        monitor="val/mIoU",
        mode="max",
        save_last=True,
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
    )
    export = ExportBestCallback(dirpath=str(model_dir))
    callbacks: list[Any] = [ckpt, export]
    if not args.quiet:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    if args.devices > 1:
        callbacks.append(die_with_parent_callback())
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=cpu_strategy(args.devices),
        max_epochs=args.epochs,
        max_time=None if args.max_minutes is None else {"minutes": args.max_minutes},
        deterministic=True,
        logger=False,
        default_root_dir=str(run),
        callbacks=callbacks,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=not args.quiet,
        log_every_n_steps=10,
        gradient_clip_val=args.grad_clip or None,
    )
    t0, c0 = time.perf_counter(), cpu_seconds()
    exported = model_dir / "training.json"
    before = exported.stat().st_mtime_ns if exported.is_file() else None
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    info: dict[str, Any] | None = export.info
    if export.exported is None:  # several processes: rank 0 exported; read its record back
        fresh = exported.is_file() and exported.stat().st_mtime_ns != before
        info = read_json(exported) if fresh else None
    if info is None:
        raise ConfigError("training ended without exporting a model; see the messages above")
    epochs_run = int(info.get("epochs_run", trainer.current_epoch))
    result = {
        "settings": settings,
        "best_val_mIoU": float("nan") if info.get("score") is None else float(info["score"]),
        "epoch": int(info.get("epoch", epochs_run)),
        "epochs_run": epochs_run,
        "global_step": int(info.get("steps_run", trainer.global_step)),
        "selected_on": info.get("selected_on"),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(cpu_seconds() - c0, 1),
        "resumed": resume,
        "stopped_by_max_minutes": epochs_run < args.epochs,
    }
    write_json(done_file, result)
    say(
        3,
        "train",
        f"done in {result['wall_s']:.0f} s wall ({result['cpu_s']:.0f} s CPU); best val mIoU "
        f"{result['best_val_mIoU']:.2f} at epoch {result['epoch']}; model exported to {model_dir}",
    )
    return result


def cpu_strategy(devices: int) -> str:
    """Lightning's strategy for ``devices`` CPU processes: DDP started by fork where the
    platform has it (no re-import, no pickling of the model), else by spawn."""
    if devices == 1:
        return "auto"
    import multiprocessing as mp

    # An exception to the rule of entitwist.utils.processes (fork only while torch is not
    # loaded): torch is loaded here, yet fork works because the demo runs torch with one
    # thread (its default --threads 1, set before any torch work), so there is no intra-op
    # worker thread whose locks a child could inherit, and the CPU trainer starts no CUDA.
    # The rule's hazard returns with --threads above 1 (pass --devices 1 then if the start
    # hangs); ddp_spawn would avoid it at the cost of a re-import and a pickled model per
    # process.
    return "ddp_fork" if "fork" in mp.get_all_start_methods() else "ddp_spawn"


def die_with_parent() -> None:
    """On Linux, ask the kernel to kill this process when its parent dies (a demo killed with
    SIGKILL must not leave training processes behind that go on writing checkpoints)."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl: nothing to arrange
        pass


def die_with_parent_callback() -> Any:
    """A callback that arms :func:`die_with_parent` in each training process Lightning starts."""
    import multiprocessing as mp

    import lightning

    class DieWithParent(lightning.Callback):
        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if mp.parent_process() is not None:  # a process started by the DDP launcher
                die_with_parent()

    return DieWithParent()


def movable_checkpoint_class(base: type) -> type:
    """``ModelCheckpoint`` whose restored state follows a moved output folder.

    Lightning restores the best score and paths only when the checkpoint folder is the
    one recorded in the checkpoint; the demo re-roots the recorded paths into the current
    folder first, so ``<out>`` can be moved between an interrupted run and its resumption.
    """

    class MovableCheckpoint(base):  # type: ignore[misc, valid-type]
        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            old = state_dict.get("dirpath")
            if old and self.dirpath and old != self.dirpath:

                def move(path: Any) -> Any:
                    return str(Path(self.dirpath) / Path(path).name) if path else path

                state_dict = {
                    **state_dict,
                    "dirpath": self.dirpath,
                    "best_model_path": move(state_dict.get("best_model_path")),
                    "kth_best_model_path": move(state_dict.get("kth_best_model_path")),
                    "last_model_path": move(state_dict.get("last_model_path")),
                    "best_k_models": {
                        move(k): v for k, v in (state_dict.get("best_k_models") or {}).items()
                    },
                }
            super().load_state_dict(state_dict)

    return MovableCheckpoint
