"""Steps 1 and 2 of ``entitwist demo``: the dataset and its weight-free entity maps.

1. **data** (:func:`data_step`): synthetic scenes drawn into ``<out>/scenes``, or an
   existing JSONL folder given with ``--data``, read in place; when that folder has no
   validation split, :func:`external_data` holds out a seeded tenth of its training images
   in ``<out>/annotations.jsonl``;
2. **entities** (:func:`entities_step`): :data:`GENERATOR` label maps for every synthetic
   image (:data:`DATA_GENERATOR` for a ``--data`` folder of real images), in
   the dataset's own store, or under ``--entities-out`` (default ``<out>/entities``) with
   ``--data``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from entitwist.demo.common import read_json, say
from entitwist.errors import ConfigError, DataError

#: Entity generator of the synthetic scenes: keeps their small vehicles whole (entity-vote
#: ceiling 94.8 mIoU against 68.4 for ``felzenszwalb``; ``benchmarks/entity_vote.py``).
GENERATOR = "felzenszwalb-rag"
#: ... and of a ``--data`` folder: ``felzenszwalb``'s defaults were tuned on real aerial
#: crops; on ``rrsis-real-mini`` its entity-vote ceiling is 37-40 against 31-38 for
#: ``felzenszwalb-rag``, which cuts real photos into 500-870 pieces at 5x the CPU.
DATA_GENERATOR = "felzenszwalb"


# ------------------------------------------------------------------------------ step 1: data
def data_step(args: argparse.Namespace, out: Path) -> tuple[Path, str | None]:
    """Returns (dataset root, absolute annotation file to use or None for the root's own)."""
    if args.data is not None:
        return external_data(args, out)
    from entitwist.data.synthetic import write_dataset

    root = out / "scenes"
    params = {
        "n_scenes": args.scenes,
        "size": args.size,
        "seed": args.seed,
        "object_scale": float(args.object_scale),
        "density": float(args.density),
    }
    done = read_json(root / "synth.json")
    if done is not None and (root / "annotations.jsonl").is_file():
        have = {k: done.get("params", {}).get(k) for k in params}
        if have != params:
            raise ConfigError(
                f"{root} holds scenes made with other settings ({have}); rerun with those "
                "or pass --fresh"
            )
        say(
            1,
            "data",
            f"done already: {done['samples']} expressions on {done['scenes']} scenes in {root} (skipped)",
        )
        return root, None
    say(1, "data", f"drawing {args.scenes} synthetic scenes of {args.size} px into {root}")
    summary = write_dataset(
        root,
        args.scenes,
        size=args.size,
        seed=args.seed,
        object_scale=args.object_scale,
        density=args.density,
        overwrite=False,
        progress=not args.quiet,
        workers=max(1, min(2, os.cpu_count() or 1)),  # scenes are independent: use both cores
    )
    splits = ", ".join(f"{k} {v}" for k, v in sorted(summary["splits"].items()))
    say(
        1,
        "data",
        f"wrote {summary['samples']} expressions ({splits}) in {summary['seconds']:.0f} s",
    )
    return root, None


def external_data(args: argparse.Namespace, out: Path) -> tuple[Path, str | None]:
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
        say(1, "data", f"using {root} in place (train/val/test splits as given)")
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
    say(
        1,
        "data",
        f"using {root} in place; it has no val split, so {n_val} of its {len(images)} training "
        f"images ({n_val_expr} expressions) are held out for validation ({ann})",
    )
    return root, str(ann.resolve())


# ------------------------------------------------------------------------------ step 2: entities
def entities_step(args: argparse.Namespace, out: Path, root: Path) -> Path:
    """Compute (or find) the weight-free entity maps; returns the store folder."""
    from entitwist.data.layouts import list_images
    from entitwist.entities.cli import main as entities_main
    from entitwist.entities.generators import get_generator
    from entitwist.entities.store import (
        EntityStore,
        default_store_dir,
        image_fingerprint,
        image_key,
    )

    store_root = None
    if args.data is not None:
        store_root = str(Path(args.entities_out) if args.entities_out else out / "entities")
    name = GENERATOR if args.data is None else DATA_GENERATOR
    generator = get_generator(name)
    store_dir = default_store_dir(root, generator, 40, out=store_root)
    images = list_images(root, "jsonl")
    keys = [image_key(root, p) for p in images]
    if (store_dir / "manifest.json").is_file():
        store = EntityStore(store_dir)
        if all(store.has(k, image_fingerprint(p)) for k, p in zip(keys, images, strict=True)):
            say(2, "entities", f"done already: {len(keys)} maps in {store_dir} (skipped)")
            return store_dir
    say(2, "entities", f"weight-free {name} label maps for {len(keys)} images -> {store_dir}")
    workers = max(1, min(2, os.cpu_count() or 1))  # the graph merge is Python: use both cores
    argv = [str(root), "--dataset", "jsonl", "--generator", name, "--workers", str(workers)]
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
