"""``entitwist entities``: compute entity label maps for every image of a dataset root.

Finds the images in the dataset's own layout (DESIGN.md section 5), computes one label map
per image with the chosen generator, and writes it to the entity store
``<root>/entities/<tag>/<image key>.png`` (or ``<--out>/<tag>/...``). Resumable (images
whose map exists are skipped), shardable (``--shard i/n`` keeps the images whose key's
SHA-1 is i modulo n, stable across machines and listings), atomic (a killed run leaves no
partial map), with a progress bar and a summary.

Exit status: 0 when every image got its map; 1 when some images could not be read or
segmented (each is reported on stderr, the others are finished, rerunning retries only
those); 2 for bad options or inputs (via ``entitwist.cli``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.data.layouts import LAYOUT_CHOICES, list_images
from entitwist.errors import CheckpointError, ConfigError, DataError, EntitwistError
from entitwist.utils.cli_parser import (
    DEVICE_HELP,
    OneLineArgumentParser,
    add_device_option,
    add_quiet_option,
)

# --- sharding ------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    parts = text.split("/")
    try:
        i, n = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        i, n = None, None
    if i is None or n is None or n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r} is not i/n with 0 <= i < n (e.g. --shard 0/4)")
    return i, n


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """True when ``key`` belongs to shard i of n (SHA-1 of the key modulo n)."""
    i, n = shard
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % n == i


def parse_param(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (key, value), the value read as JSON when it is JSON, else a string."""
    if "=" not in text:
        raise ConfigError(f"--param {text!r} is not KEY=VALUE (e.g. --param scale=200)")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


# --- the work ------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(
    gen_name: str, gen_kwargs: dict[str, Any], store_dir: str, k: int, imaging: dict[str, Any]
) -> None:
    from entitwist.entities.generators import get_generator
    from entitwist.entities.store import EntityStore

    _STATE["generator"] = get_generator(gen_name, **gen_kwargs)
    _STATE["store"] = EntityStore(store_dir)
    _STATE["k"] = k
    _STATE["imaging"] = imaging


def _stored(store: Any, item: tuple[str, str]) -> bool:
    """Whether ``store`` holds the map of ``item`` (key, path) computed from that image file;
    an unreadable image counts as not stored (its failure is reported by the worker)."""
    from entitwist.entities.store import image_fingerprint

    key, path = item
    if not store.has(key):
        return False
    try:
        return store.has(key, image_fingerprint(path))
    except DataError:
        return False


def _work(item: tuple[str, str]) -> dict[str, Any]:
    from entitwist.entities.generators import compute_entities_with_count
    from entitwist.entities.labelmap import entity_count
    from entitwist.entities.store import image_fingerprint
    from entitwist.imaging import read_image

    key, path = item
    start = time.perf_counter()
    try:
        source = image_fingerprint(path)  # recorded with the map: a changed image is redone
        image = read_image(path, **_STATE.get("imaging", {}))  # the picture the network sees
        labels, n_masks = compute_entities_with_count(image, _STATE["generator"], _STATE["k"])
        _STATE["store"].save(key, labels, source=source)
    except (CheckpointError, ConfigError):
        raise  # the generator itself is broken: every image would fail, stop the run
    except EntitwistError as exc:
        return {"key": key, "path": path, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - report, count, and go on with the others
        return {"key": key, "path": path, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "key": key,
        "path": path,
        "masks": n_masks,
        "entities": entity_count(labels),
        "seconds": time.perf_counter() - start,
    }


def _stats(values: list[int]) -> str:
    if not values:
        return "n/a (no image processed)"
    return f"mean {np.mean(values):.1f}, min {min(values)}, max {max(values)}"


def build_parser() -> argparse.ArgumentParser:
    from entitwist.entities.generators import DEFAULT_GENERATOR, GENERATORS
    from entitwist.entities.labelmap import MAX_ENTITIES, MAX_K

    parser = OneLineArgumentParser(
        prog="entitwist entities",
        description="Compute entity label maps (uint8 PNG, 0 = none, 1..K) for every image "
        "of a dataset root into <ROOT>/entities/<tag>/ (resumable, shardable).",
        epilog="Exit status: 0 all maps written; 1 some images failed (listed on stderr, "
        "rerun to retry them); 2 bad options or inputs.",
    )
    parser.add_argument("root", help="dataset root (or any folder of images with --dataset folder)")
    parser.add_argument(
        "--dataset", default="auto", choices=LAYOUT_CHOICES, help="layout of ROOT (default: detect)"
    )
    parser.add_argument(
        "--generator", default=DEFAULT_GENERATOR, help=f"one of {', '.join(GENERATORS)}"
    )
    parser.add_argument(
        "--sam-checkpoint",
        metavar="PATH",
        help="sam: segment-anything checkpoint (sam_vit_b_01ec64.pth); hf-sam: SamModel folder "
        "or cached id",
    )
    parser.add_argument("--model-type", help="sam: builder name (vit_b default, vit_l, vit_h)")
    parser.add_argument("--points-per-side", type=int, help="sam/hf-sam: point grid per side (32)")
    add_device_option(parser, help=f"sam/hf-sam: {DEVICE_HELP}")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other generator parameter, repeatable (e.g. --param scale=200)",
    )
    parser.add_argument(
        "--max-entities",
        type=int,
        default=MAX_ENTITIES,
        help=f"K, masks kept per image (1..{MAX_K}, default {MAX_ENTITIES})",
    )
    parser.add_argument(
        "--bands", help="1-based bands for R,G,B, e.g. 3,2,1 (default 1,2,3; one band is copied)"
    )
    parser.add_argument(
        "--stretch",
        help="LOW,HIGH percentiles, auto (2,98 per band for non-8-bit imagery) or none; use the "
        "model's (entitwist segment does)",
    )
    parser.add_argument("--nodata", type=float, help="pixel value marking missing data")
    parser.add_argument("--shard", default="0/1", help="i/n: only images whose key hash mod n == i")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--limit", type=int, help="only the first N images of this shard")
    parser.add_argument("--out", help="store root instead of ROOT/entities (maps go to OUT/<tag>/)")
    add_quiet_option(parser)
    return parser


def _generator_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(parse_param(p) for p in args.param)
    sam_like = args.generator in {"sam", "hf-sam"}
    for flag, value, key in (
        ("--sam-checkpoint", args.sam_checkpoint, "checkpoint"),
        ("--model-type", args.model_type, "model_type"),
        ("--points-per-side", args.points_per_side, "points_per_side"),
        ("--device", None if args.device == "auto" else args.device, "device"),
    ):
        if value is None:
            continue
        if not sam_like or (key == "model_type" and args.generator != "sam"):
            raise ConfigError(f"{flag} does not apply to --generator {args.generator}")
        kwargs[key] = value
    return kwargs


def _imaging_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``read_image`` options from --bands/--stretch/--nodata (their syntax checked now)."""
    import math

    from entitwist.imaging import parse_bands, parse_stretch

    if args.bands is not None:
        parse_bands(args.bands, 255)  # malformed lists fail here, out-of-range bands per image
    if args.nodata is not None and not math.isfinite(args.nodata):
        raise ConfigError(f"--nodata {args.nodata} must be a finite number")
    return {"bands": args.bands, "stretch": parse_stretch(args.stretch), "nodata": args.nodata}


def main(argv: list[str] | None = None) -> int:
    """Run ``entitwist entities``; returns the exit status (see the module docstring)."""
    from entitwist.entities.generators import get_generator
    from entitwist.entities.labelmap import check_max_entities
    from entitwist.entities.store import (
        EntityStore,
        default_store_dir,
        image_key,
        imaging_record,
    )

    args = build_parser().parse_args(argv)
    k = check_max_entities(args.max_entities)
    shard = parse_shard(args.shard)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    root = Path(args.root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder; check the path")

    imaging = _imaging_kwargs(args)
    gen_kwargs = _generator_kwargs(args)
    generator = get_generator(args.generator, **gen_kwargs)
    recorded = imaging_record(imaging["bands"], imaging["stretch"])  # in the manifest
    store_dir = default_store_dir(root, generator, k, out=args.out, imaging=recorded)
    exclude = [store_dir.parent] if args.out else []
    images = list_images(root, args.dataset, exclude=exclude)
    items = [(image_key(root, p), str(p)) for p in images]
    items = [it for it in items if in_shard(it[0], shard)]
    if args.limit is not None:
        items = items[: args.limit]

    store = EntityStore(store_dir, generator=generator, max_entities=k, imaging=recorded)
    store.remove_stale_temporaries()
    # a stored map counts only when computed from the image as it is now
    todo = [it for it in items if not _stored(store, it)]
    skipped = len(items) - len(todo)

    print(
        f"entitwist entities: {len(items)} images (shard {shard[0]}/{shard[1]}), "
        f"{skipped} already stored, generator {generator.name} {json.dumps(generator.params)}, "
        f"K={k} -> {store_dir}",
        file=sys.stderr,
    )
    results = _run(todo, args, gen_kwargs, str(store_dir), k, generator, imaging)

    done = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    print(
        f"images: {len(items)} in shard, {len(done)} done, {skipped} skipped (stored), {len(failed)} failed"
    )
    print(f"masks per image: {_stats([r['masks'] for r in done])}")
    print(f"entities per map (K={k}): {_stats([r['entities'] for r in done])}")
    wall = results.wall
    per = [r["seconds"] for r in done]
    print(
        f"seconds per image: {np.mean(per) if per else 0.0:.3f} compute, "
        f"{wall / max(len(results), 1):.3f} wall ({args.workers} worker(s), {wall:.1f} s total)"
    )
    print(f"store: {store_dir}")
    if failed:
        print(
            f"entitwist: {len(failed)} image(s) failed; fix or remove them and rerun",
            file=sys.stderr,
        )
        return 1
    return 0


class _Results(list):
    wall: float = 0.0


def _run(
    todo: list[tuple[str, str]],
    args: argparse.Namespace,
    gen_kwargs: dict[str, Any],
    store_dir: str,
    k: int,
    generator: Any,
    imaging: dict[str, Any],
) -> _Results:
    from tqdm import tqdm

    results = _Results()
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc="entities", disable=args.quiet or not todo)

    def collect(r: dict[str, Any]) -> None:
        results.append(r)
        if "error" in r:
            tqdm.write(f"entitwist: warning: {r['path']}: {r['error']}", file=sys.stderr)
        bar.update(1)

    try:
        if args.workers == 1 or len(todo) <= 1:
            from entitwist.entities.store import EntityStore

            _STATE.update(generator=generator, store=EntityStore(store_dir), k=k, imaging=imaging)
            for item in todo:
                collect(_work(item))
        else:
            from entitwist.utils.processes import pool_context

            # fork while torch is not loaded (weight-free generators), spawn once it is (SAM)
            with pool_context().Pool(
                processes=args.workers,
                initializer=_init_worker,
                initargs=(args.generator, gen_kwargs, store_dir, k, imaging),
            ) as pool:
                for r in pool.imap_unordered(_work, todo, chunksize=1):
                    collect(r)
    finally:
        bar.close()
        _STATE.clear()
    results.wall = time.perf_counter() - start
    return results


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
