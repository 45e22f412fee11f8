"""``entitwist fit | validate | test | predict``: LightningCLI with YAML experiments.

::

    entitwist fit --config rrsisd_bert                       # a shipped config, by name
    entitwist fit --config synthetic_tiny --trainer.max_epochs 3
    entitwist fit --config my_experiment.yaml --ckpt_path runs/x/checkpoints/last.ckpt
    entitwist test --config synthetic_tiny --ckpt_path best.ckpt
    entitwist fit --config ... --trainer.devices 4 --trainer.strategy ddp     # multi-GPU
    entitwist fit --config ... --trainer.devices 8 --trainer.num_nodes 2 ...  # multi-node

What this adds to plain LightningCLI:

- ``--config`` takes a YAML file or the name of a config shipped in the package
  (``entitwist configs list``; :mod:`entitwist.configs`);
- the model (:class:`EntiTwistModule`) and data (:class:`ReferringDataModule`) are fixed;
  the datamodule receives the model's tokenizer, image size and K (argument links);
- forced callbacks, configurable under their own keys: ``checkpoint`` (a ModelCheckpoint
  on ``val/mIoU``, maximised, ``save_last=True`` so ``--ckpt_path .../last.ckpt`` resumes)
  and ``export`` (the best-on-validation weights as a ``save_pretrained`` folder, default
  ``<log_dir>/export``);
- every setting that can be checked cheaply (model name and overrides, K, dataset root,
  batch size, the checkpoint file) is checked before anything is built, and fails with one
  line (``entitwist: error: ...``, exit status 2);
- checkpoints are read with ``weights_only=True`` only; a tampered pickle is refused;
- ``validate`` and ``test`` print the results table (split and protocol named) and write
  ``<stage>_results.json`` / ``.csv`` into the log directory; ``predict`` writes one PNG
  mask (original size) per expression into ``<log_dir>/predictions``.

Python use (the same parser, from a dict): :func:`build` returns the CLI object with
``.model``, ``.datamodule`` and ``.trainer`` built; :func:`entitwist.train.train` runs
fit then test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from entitwist.errors import CheckpointError, ConfigError, EntitwistError
from entitwist.train.checkpoints import load_checkpoint
from entitwist.train.datamodule import ReferringDataModule, check_data_args
from entitwist.train.export import ExportBestCallback
from entitwist.train.module import EntiTwistModule

__all__ = ["EntiTwistCLI", "build", "check_config", "main"]

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 40,
    # the datamodule shards every split itself (resumable training order, no padded eval)
    "use_distributed_sampler": False,
    "log_every_n_steps": 10,
}


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node[part] if not hasattr(node, "get") else node.get(part, None)
        except (KeyError, TypeError):
            return default
    return default if node is None else node


def _signature_defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of ``cls.__init__`` (the one place they are stated)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _with_defaults(given: Any, cls: type) -> dict[str, Any]:
    """``given`` (a config mapping, maybe partial) over the defaults of ``cls.__init__``."""
    merged = _signature_defaults(cls)
    if hasattr(given, "items"):
        merged.update(given.items())
    return merged


def check_config(cfg: Any, subcommand: str | None = None) -> None:
    """Fail with one line on a setting that cannot work, before anything is built.

    Checks the model name, overrides and the resulting ModelConfig (K in 1..255, DAT order,
    ...), the ``save_pretrained`` folder, the dataset name and root, batch sizes, the entity
    store (it must match the model's generator and K: ``entitwist.entities.resolve_store``),
    and that ``ckpt_path`` (if any) is a checkpoint readable without executing pickled code.
    """
    from entitwist.entities.resolve import EntitySpec
    from entitwist.models.registry import get_config

    pretrained_dir = _get(cfg, "model.init_args.pretrained_dir") or _get(
        cfg, "model.pretrained_dir"
    )
    model_args = _with_defaults(
        _get(cfg, "model.init_args") or _get(cfg, "model") or {}, EntiTwistModule
    )
    if pretrained_dir:
        path = Path(os.path.expanduser(str(pretrained_dir)))
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"model.pretrained_dir {str(path)!r} is not a save_pretrained folder (no config.json)"
            )
        from entitwist.config import ModelConfig

        model_config = ModelConfig.from_json(path / "config.json")
    else:
        name = model_args["model_name"]
        overrides = dict(model_args["model_overrides"] or {})
        try:
            model_config = get_config(name, pretrained=bool(model_args["pretrained"]), **overrides)
        except TypeError as exc:  # e.g. a list where a tuple of the wrong length is expected
            raise ConfigError(
                f"model_overrides {overrides} do not fit the model config ({exc})"
            ) from None
    lr = model_args["lr"]
    if float(lr) <= 0:
        raise ConfigError(f"model.lr={lr} must be positive; the paper uses 5e-4")

    given = _get(cfg, "data.init_args") or _get(cfg, "data") or {}
    if hasattr(given, "get"):
        data = _with_defaults(given, ReferringDataModule)
        check_data_args(
            dataset=data["dataset"],
            root=data["root"],
            img_size=model_config.visual.img_size,
            batch_size=data["batch_size"],
            eval_batch_size=data.get("eval_batch_size"),
            num_workers=data["num_workers"],
            max_entities=model_config.fusion.max_entities,
            entities=data["entities"],
            need=EntitySpec.of(model_config),  # the entity store must match the model
        )
    ckpt_path = _get(cfg, "ckpt_path")
    if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
        load_checkpoint(ckpt_path)  # CheckpointError on a missing, corrupt or unsafe file


class EntiTwistCLI(LightningCLI):
    """LightningCLI for Enti-TwistNet (see the module docstring)."""

    def __init__(
        self, *args: Any, check: bool = True, instantiate: bool = True, **kwargs: Any
    ) -> None:
        """``check=False`` skips :func:`check_config`; ``instantiate=False`` only parses
        (``self.config``), for tools and tests that read experiments without building them."""
        self._check = check
        self._instantiate = instantiate
        kwargs.setdefault("model_class", EntiTwistModule)
        kwargs.setdefault("datamodule_class", ReferringDataModule)
        kwargs.setdefault("trainer_defaults", dict(TRAINER_DEFAULTS))
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # the module builds AdamW + poly
        # a bad option raises (one line from main) instead of printing the usage and exiting
        no_exit = {"exit_on_error": False}
        kwargs.setdefault(
            "parser_kwargs",
            {
                "prog": "entitwist",
                **no_exit,
                **{name: dict(no_exit) for name in self.subcommands()},
            },
        )
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mIoU",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ExportBestCallback, "export")
        # The data pipeline uses the model's own tokenizer, input size and entity priors.
        parser.link_arguments("model.tokenizer", "data.tokenizer", apply_on="instantiate")
        parser.link_arguments("model.img_size", "data.img_size", apply_on="instantiate")
        for name in (
            "max_entities",
            "entity_generator",
            "entity_params",
            "needs_entities",
            "read_options",
        ):
            parser.link_arguments(f"model.{name}", f"data.{name}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # --config takes a file or the name of a shipped config (entitwist configs list)
        from entitwist.configs import resolve_config_args

        if args is None:  # read from sys.argv: resolve there, which DDP ranks re-run too
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        elif isinstance(args, list):
            args = resolve_config_args(args)
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        if self._check:
            check_config(cfg, sub)
        if sub and "weights_only" in cfg and cfg["weights_only"] is None:
            cfg["weights_only"] = True  # Lightning's own resume: no pickled code either

    def instantiate_classes(self) -> None:
        if self._instantiate:
            super().instantiate_classes()

    # ------------------------------------------------------------------ reports
    def _report(self, stage: str) -> None:
        from entitwist.evaluation.tables import format_table, make_rows, write_reports

        out_dir = Path(
            self.trainer.log_dir or self.trainer.default_root_dir
        )  # collective: every rank
        results = getattr(self.model, f"{stage}_results", None) or {}
        if not results or not self.trainer.is_global_zero:
            return
        split_key = "val" if stage == "val" else "test"
        dm = self.datamodule
        split = dm.splits.get(split_key) or split_key
        n = len(dm.datasets[split_key]) if split_key in dm.datasets else None
        rows = make_rows(
            results,
            dataset=dm.dataset_name,
            split=str(split),
            model=self.model.model.config.name,
            expressions=n,
        )
        ckpt = _get(self.config[self.subcommand], "ckpt_path")
        json_path, csv_path = write_reports(
            out_dir, f"{stage}_results", rows, checkpoint=ckpt, root=str(dm.root)
        )
        print(
            format_table(
                rows,
                title=f"{dm.dataset_name} {split} split, {n} expressions, checkpoint: {ckpt or 'current weights'}",
            )
        )
        print(f"wrote {json_path} and {csv_path}")

    def after_validate(self) -> None:
        self._report("val")

    def after_test(self) -> None:
        self._report("test")

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        for cb in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, ExportBestCallback) and cb.exported is not None:
                how = (
                    f"best {cb.info.get('monitor')} on the validation split"
                    if cb.info.get("selected_on") == "val"
                    else "final weights; no validation checkpoint"
                )
                print(f"exported the model ({how}) to {cb.exported}")

    def after_predict(self) -> None:
        predictions = (
            self.trainer.predict_loop.predictions if hasattr(self.trainer, "predict_loop") else []
        )
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "predictions"
        n = write_prediction_masks(predictions, out)
        print(f"wrote {n} predicted masks to {out}")


def write_prediction_masks(predictions: Any, out_dir: Path) -> int:
    """PNG (0/255) per ``sample_id`` from ``predict_step`` outputs; returns the count."""
    import numpy as np
    from PIL import Image

    from entitwist.utils import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    batches = predictions or []
    if batches and isinstance(batches[0], list):  # several dataloaders
        batches = [b for group in batches for b in group]
    for batch in batches:
        for sid, mask in zip(batch["sample_id"], batch["mask"]):
            safe = str(sid).replace(os.sep, "_").replace("/", "_")
            with atomic_path(out_dir / f"{safe}.png") as tmp:
                Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(tmp)
            count += 1
    return count


def build(config: dict[str, Any] | list[str]) -> EntiTwistCLI:
    """Build model, datamodule and trainer from a config dict (or CLI-style argument list)
    exactly as the YAML path does, without running anything.

    ``config`` has the keys of a YAML experiment without a subcommand: ``model``, ``data``,
    ``trainer``, ``checkpoint``, ``export``, ``seed_everything``. Returns the CLI object;
    use ``cli.trainer.fit(cli.model, datamodule=cli.datamodule)``.
    """
    return EntiTwistCLI(args=config, run=False)


def main(argv: list[str] | None = None) -> int:
    """``entitwist fit|validate|test|predict ...``: argv includes the subcommand name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # From the console script, let LightningCLI read sys.argv itself: Lightning's DDP launcher
    # re-runs sys.argv for the other ranks. From Python (tests, tools), parse `argv`.
    args = None if argv == sys.argv[1:] else argv
    from jsonargparse import ArgumentError

    from entitwist.utils.cli_parser import one_line

    try:
        EntiTwistCLI(args=args)
    except ArgumentError as exc:  # a bad option or value: one line, like the other commands
        command = f"entitwist {argv[0]}" if argv and not argv[0].startswith("-") else "entitwist"
        print(f"entitwist: error: {one_line(str(exc))}; see '{command} --help'", file=sys.stderr)
        return 2
    except EntitwistError as exc:
        print(f"entitwist: error: {exc}", file=sys.stderr)
        return 2
    return 0
