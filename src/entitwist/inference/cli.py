"""``entitwist segment IMAGE "SENTENCE" -o OUT [options]``: segment an image or a GeoTIFF,
or many (a folder, a glob, or a CSV / JSONL list) with the model loaded once.

Outputs of one image are chosen by ``-o`` (repeatable) from the file name, or by explicit
flags:

======================  =================================================================
``-o x.png``            mask PNG (0/255)            (``--mask-png``)
``-o x_overlay.png``    overlay PNG with the sentence (a name ending in ``overlay.png``;
                        ``--overlay``)
``-o x.tif``            mask GeoTIFF (uint8 0/1) on the input's grid, CRS and transform
                        (``--mask-tif``)
``-o x_prob.tif``       probability GeoTIFF (float32, NaN on nodata) (a ``.tif`` whose
                        name contains ``prob``; ``--probability``)
``-o x.geojson|.gpkg``  polygons in the image's CRS (``--polygons``; ``--simplify``,
                        ``--min-area``); an empty valid layer when nothing is found
``-o stem``             (no suffix) all five: ``stem_mask.png``, ``stem_mask.tif``,
                        ``stem_probability.tif``, ``stem.geojson``, ``stem_overlay.png``
======================  =================================================================

Every output is written to a temporary file beside it and renamed only when the whole image
succeeded; an existing output is refused unless ``--overwrite``. Scenes larger than
``--max-side`` are localised on a reduced view and refined with overlapping ``--tile-size``
tiles (:mod:`entitwist.inference.tiling`).

Many images: ``-o`` names the output folder; each image gets ``<folder>/<image stem>`` (or
the row's ``output``) with the ``--kinds`` outputs. Images whose outputs all exist are
skipped (``--overwrite`` redoes them); an image that fails is written to
``<folder>/failures.jsonl`` and the others go on (exit status 1 when any failed).
``--devices N`` runs on Lightning's predict loop in N processes (or GPUs).

This module only parses the command line; the work is :mod:`entitwist.inference.pipeline`
and :mod:`entitwist.inference.batch`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from entitwist.errors import InputError
from entitwist.utils.cli_parser import (
    OneLineArgumentParser,
    add_device_option,
    add_precision_option,
)

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="entitwist segment",
        description="Segment the object a sentence refers to in an image or GeoTIFF.",
    )
    p.add_argument(
        "image",
        help="PNG, JPEG, TIFF or GeoTIFF; or, for many images, a folder, a quoted glob "
        "('tiles/*.tif') or a CSV / JSONL list with columns image,sentence[,output]",
    )
    p.add_argument(
        "sentence",
        nargs="?",
        help='the referring sentence, e.g. "the largest storage tank" (for a list: the '
        "sentence of rows without one)",
    )
    p.add_argument("-m", "--model", required=True, help="a save_pretrained folder (or a hub id)")
    p.add_argument(
        "-o",
        "--output",
        action="append",
        default=[],
        metavar="OUT",
        help="output file, kind chosen by its name (repeatable); no suffix writes all kinds; "
        "for many images: the output folder",
    )
    p.add_argument("--mask-png", metavar="PATH", help="mask PNG (0/255)")
    p.add_argument("--mask-tif", metavar="PATH", help="mask GeoTIFF (uint8 0/1) on the input grid")
    p.add_argument("--probability", metavar="PATH", help="probability GeoTIFF (float32)")
    p.add_argument("--polygons", metavar="PATH", help="polygons, .geojson or .gpkg")
    p.add_argument("--overlay", metavar="PATH", help="overlay PNG with the sentence")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--bands", help="1-based bands for R,G,B, e.g. 3,2,1 (one band is copied to three)"
    )
    p.add_argument(
        "--stretch", help="percentile stretch LOW,HIGH (default 2,98 for non-8-bit imagery)"
    )
    p.add_argument(
        "--nodata", type=float, help="pixel value marking missing data (overrides the file's)"
    )
    p.add_argument(
        "--entities",
        default="auto",
        help="auto (computed for the image, default), none, or a label-map file of the image's size",
    )
    p.add_argument(
        "--entity-generator",
        default=None,
        help="generator for --entities auto (default: the one the model was built for, as its "
        "config records, e.g. sam for the paper's models; another one is reported)",
    )
    p.add_argument(
        "--sam-checkpoint",
        help="segment-anything checkpoint (sam_vit_b_01ec64.pth): needed for models built for "
        "SAM entity maps",
    )
    add_device_option(p)
    add_precision_option(p)
    p.add_argument(
        "--simplify", type=float, default=0.0, help="polygon simplification tolerance (CRS units)"
    )
    p.add_argument(
        "--min-area", type=float, default=0.0, help="drop polygons smaller than this (CRS units^2)"
    )
    p.add_argument(
        "--max-side", type=int, default=2048, help="longer side of the whole-scene view (pixels)"
    )
    p.add_argument("--tile-size", type=int, default=1024, help="refinement tile side (pixels)")
    p.add_argument("--overlap", type=int, default=256, help="pixels shared by neighbouring tiles")
    p.add_argument(
        "--tiling",
        default="auto",
        choices=["auto", "always", "never"],
        help="auto: tile scenes larger than --max-side",
    )
    p.add_argument(
        "--roi-threshold", type=float, default=0.3, help="coarse probability that gets refined"
    )
    p.add_argument(
        "--overlay-max-side", type=int, default=1600, help="longer side of the overlay picture"
    )
    p.add_argument(
        "--max-tiles",
        type=int,
        help="refine at most this many tiles, the rest keep the coarse result (previews, "
        "benchmarks)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")
    g = p.add_argument_group("many images")
    g.add_argument(
        "--kinds",
        default="all",
        help="outputs per image: all, or some of mask_png,mask_tif,probability,polygons,overlay",
    )
    g.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    g.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes (CPU) or GPUs on Lightning's predict loop; outputs are the same for any",
    )
    g.add_argument("--num-nodes", type=int, default=1, help="machines of a multi-machine run")
    g.add_argument(
        "--threads",
        type=int,
        help="CPU threads per process (default: the cores shared among the processes); "
        "outputs are bit-identical for any --devices at equal --threads",
    )
    return p


def _options(args: argparse.Namespace) -> Any:
    from entitwist.inference.pipeline import SegmentOptions
    from entitwist.inference.tiling import TilingOptions

    opts = SegmentOptions(
        bands=args.bands,
        stretch=args.stretch,
        nodata=args.nodata,
        entities=args.entities,
        simplify=args.simplify,
        min_area=args.min_area,
        tiling=TilingOptions(
            max_side=args.max_side,
            tile_size=args.tile_size,
            overlap=args.overlap,
            mode=args.tiling,
            roi_threshold=args.roi_threshold,
            max_tiles=args.max_tiles,
        ),
        overlay_max_side=args.overlay_max_side,
    )
    opts.validate()
    if args.sam_checkpoint is not None and not Path(args.sam_checkpoint).is_file():
        raise InputError(
            f"--sam-checkpoint {args.sam_checkpoint!r} does not exist; give a sam_vit_*.pth file"
        )
    return opts


def _load(args: argparse.Namespace, device: str | None = None) -> Any:
    from entitwist.inference.inputs import resolve_device
    from entitwist.inference.predictor import Predictor

    resolve_device(args.device)
    return Predictor.from_pretrained(
        args.model,
        device=device or args.device,
        entity_generator=args.entity_generator,
        sam_checkpoint=args.sam_checkpoint,
        batch_size=max(8, args.batch_size),
        precision=args.precision,
    )


@contextlib.contextmanager
def _reported_warnings() -> Iterator[None]:
    """Show each distinct user warning once, as ``entitwist: warning: ...``."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="expression longer than")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # plain PNG/JPEG
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                msg = str(w.message).splitlines()[0]
                if msg not in seen and issubclass(w.category, UserWarning):
                    seen.add(msg)
                    print(f"entitwist: warning: {msg}", file=sys.stderr)


def _single(args: argparse.Namespace) -> int:
    from entitwist.inference.outputs import plan_outputs
    from entitwist.inference.pipeline import segment_to_files
    from entitwist.inference.raster import RasterSource, gdal_env

    if args.sentence is None:
        raise InputError(
            "the sentence is required: entitwist segment IMAGE SENTENCE -m MODEL -o OUT"
        )
    if not args.sentence.strip():
        raise InputError(
            "the sentence is empty; give a referring sentence such as 'the largest building'"
        )
    opts = _options(args)
    flags = {
        k: getattr(args, k) for k in ("mask_png", "mask_tif", "probability", "polygons", "overlay")
    }
    plan = plan_outputs(args.output, flags, image=args.image, overwrite=args.overwrite)
    # Check the image before loading the model (cheap, and the usual mistake).
    with gdal_env(), RasterSource(args.image, bands=args.bands, nodata=args.nodata):
        pass
    predictor = _load(args)
    with _reported_warnings():
        summary = segment_to_files(
            args.image,
            args.sentence,
            predictor,
            plan,
            opts,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    if not args.quiet:
        share = 100.0 * summary["mask_pixels"] / max(1, summary["valid_pixels"])
        tiles = (
            f", {summary['tiles_refined']}/{summary['tiles_total']} tiles refined"
            if summary["tiled"]
            else ""
        )
        if summary["tiles_wanted"] > summary["tiles_refined"]:
            tiles += f" (--max-tiles; {summary['tiles_wanted']} touch the object)"
        print(
            f"segmented {summary['width']}x{summary['height']} ({summary['crs'] or 'no CRS'}) in "
            f"{summary['seconds']:.1f} s{tiles}: {summary['mask_pixels']} mask pixels ({share:.2f} %)"
        )
        for kind, path in summary["outputs"]:
            print(f"  {kind:<12} {path}")
    return 0


def _accelerator(device: str) -> str:
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "gpu"
    return "cpu"


def _many(args: argparse.Namespace) -> int:
    from entitwist.inference.batch import BatchSettings, collect_items, segment_batch
    from entitwist.inference.outputs import check_output_folder, parse_kinds

    if len(args.output) != 1 or any(
        getattr(args, k) for k in ("mask_png", "mask_tif", "probability", "polygons", "overlay")
    ):
        raise InputError(
            "for many images give one output folder with -o DIR (and --kinds to choose outputs)"
        )
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size} must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    out_dir = Path(args.output[0])
    if out_dir.suffix.lower() in {".png", ".tif", ".tiff", ".geojson", ".json", ".gpkg"}:
        what = "a directory" if Path(args.image).is_dir() else "a list or glob"
        raise InputError(
            f"{args.image!r} is {what} of images, so -o names an output folder, not the file "
            f"{args.output[0]!r}; give e.g. -o results"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder {str(out_dir)!r} is a file; give a folder")
    if not out_dir.exists() and out_dir.parent.is_dir():
        with contextlib.suppress(OSError):
            out_dir.mkdir()
    check_output_folder(out_dir)
    kinds = parse_kinds(args.kinds)
    opts = _options(args)
    accelerator = _accelerator(args.device)
    if args.devices * args.num_nodes > 1:
        from entitwist.inference.batch_ddp import check_devices

        check_devices(args.devices, args.num_nodes, accelerator)
    items = collect_items(args.image, args.sentence, out_dir)
    # several processes: load on the CPU (Lightning puts the network on each process's
    # device; CUDA must not start before the processes are forked)
    predictor = _load(args, "cpu" if args.devices * args.num_nodes > 1 else None)
    settings = BatchSettings(
        out_dir=out_dir,
        options=opts,
        kinds=kinds,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    with _reported_warnings():
        statuses = segment_batch(
            items,
            predictor,
            settings,
            devices=args.devices,
            num_nodes=args.num_nodes,
            accelerator=accelerator,
            progress=not args.quiet,
        )
    counts = {k: sum(s["status"] == k for s in statuses) for k in ("done", "skipped", "failed")}
    report = out_dir / "failures.jsonl"
    if not args.quiet and statuses:
        print(
            f"{len(statuses)} image(s): {counts['done']} segmented, {counts['skipped']} skipped "
            f"(finished), {counts['failed']} failed; outputs in {out_dir}"
        )
    if counts["failed"]:
        print(
            f"entitwist: {counts['failed']} of {len(statuses)} image(s) failed; see {report}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Run ``entitwist segment``; user errors raise :class:`~entitwist.errors.EntitwistError`
    (exit 2 via the dispatcher); a batch in which some images failed exits 1."""
    from entitwist.inference.batch import is_batch_input

    args = build_parser().parse_args(argv)
    if is_batch_input(args.image):
        return _many(args)
    if args.devices != 1 or args.num_nodes != 1:
        raise InputError("--devices and --num-nodes are for many images (a folder, glob or list)")
    return _single(args)


if __name__ == "__main__":  # pragma: no cover
    from entitwist.cli import main as cli_main

    sys.exit(cli_main(["segment", *sys.argv[1:]]))
