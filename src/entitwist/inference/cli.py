"""``entitwist segment IMAGE "SENTENCE" -o OUT [options]``: segment an image or a GeoTIFF.

Outputs are chosen by ``-o`` (repeatable) from the file name, or by explicit flags:

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

Every output is written to a temporary file beside it and renamed only when the whole run
succeeded, so a failed run leaves nothing behind; an existing output is refused unless
``--overwrite``. Scenes larger than ``--max-side`` are localised on a reduced view and
refined with overlapping ``--tile-size`` tiles (see :mod:`entitwist.inference.tiling`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.errors import InputError
from entitwist.utils.cli_parser import OneLineArgumentParser

__all__ = ["main", "build_parser", "OutputPlan", "plan_outputs", "segment_to_files"]

_PNG = {".png"}
_TIF = {".tif", ".tiff"}
_VEC = {".geojson", ".json", ".gpkg"}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="entitwist segment",
        description="Segment the object a sentence refers to in an image or GeoTIFF.",
    )
    p.add_argument("image", help="PNG, JPEG, TIFF or GeoTIFF")
    p.add_argument("sentence", help='the referring sentence, e.g. "the largest storage tank"')
    p.add_argument("-m", "--model", required=True, help="a save_pretrained folder (or a hub id)")
    p.add_argument(
        "-o",
        "--output",
        action="append",
        default=[],
        metavar="OUT",
        help="output file, kind chosen by its name (repeatable); no suffix writes all kinds",
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
        help="generator for --entities auto (default: the one the model was trained with, "
        "as its config records, else felzenszwalb)",
    )
    p.add_argument("--sam-checkpoint", help="segment-anything checkpoint: SAM entities")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")
    return p


KINDS = ("mask_png", "mask_tif", "probability", "polygons", "overlay")


@dataclass
class OutputPlan:
    """The outputs to write: ``(kind, path)`` pairs, kind one of :data:`KINDS`.

    A kind may appear more than once (``-o roofs.geojson -o roofs.gpkg``).
    """

    outputs: list[tuple[str, Path]] = field(default_factory=list)

    def targets(self) -> list[tuple[str, Path]]:
        return list(self.outputs)

    def paths(self, kind: str) -> list[Path]:
        return [p for k, p in self.outputs if k == kind]

    @property
    def geo_outputs(self) -> list[str]:
        return [k for k in ("mask_tif", "probability", "polygons") if self.paths(k)]


def _classify(path: Path) -> str:
    suffix = path.suffix.lower()
    name = path.name.lower()
    if suffix in _PNG:
        return "overlay" if name.endswith("overlay.png") else "mask_png"
    if suffix in _TIF:
        return "probability" if "prob" in path.stem.lower() else "mask_tif"
    if suffix in _VEC:
        return "polygons"
    if suffix == "":
        return "stem"
    raise InputError(
        f"output {str(path)!r} has an unsupported suffix {path.suffix!r}; use .png, .tif, .geojson, .gpkg "
        "or no suffix (all outputs)"
    )


def plan_outputs(args: argparse.Namespace) -> OutputPlan:
    """Resolve ``-o`` names and flags into an :class:`OutputPlan` and check every target."""
    plan = OutputPlan()
    chosen: list[tuple[str, Path]] = []
    for out in args.output:
        path = Path(out)
        kind = _classify(path)
        if kind == "stem":
            chosen += [
                ("mask_png", path.with_name(path.name + "_mask.png")),
                ("mask_tif", path.with_name(path.name + "_mask.tif")),
                ("probability", path.with_name(path.name + "_probability.tif")),
                ("polygons", path.with_name(path.name + ".geojson")),
                ("overlay", path.with_name(path.name + "_overlay.png")),
            ]
        else:
            chosen.append((kind, path))
    required = {
        "mask_png": _PNG,
        "mask_tif": _TIF,
        "probability": _TIF,
        "polygons": _VEC,
        "overlay": _PNG,
    }
    for kind in required:
        value = getattr(args, kind)
        if value is not None:
            path = Path(value)
            if path.suffix.lower() not in required[kind]:
                flag = "--" + kind.replace("_", "-")
                raise InputError(
                    f"{flag} {value!r} must end in {' or '.join(sorted(required[kind]))}"
                )
            chosen.append((kind, path))
    if not chosen:
        raise InputError(
            "no output given; add -o OUT (e.g. -o mask.tif, -o roofs.gpkg, or -o run1 for all)"
        )
    image = Path(args.image).resolve()
    seen: dict[Path, str] = {}
    for kind, path in chosen:
        resolved = path.resolve()
        if resolved in seen:
            raise InputError(
                f"output {str(path)!r} is given twice; give each output its own file name"
            )
        if resolved == image:
            raise InputError(f"output {str(path)!r} is the input image; choose another file name")
        if path.is_dir():
            raise InputError(f"output {str(path)!r} is a directory; give a file name inside it")
        if not path.parent.exists() or not path.parent.is_dir():
            raise InputError(f"output folder {str(path.parent)!r} does not exist; create it first")
        if not os.access(path.parent, os.W_OK):
            raise InputError(
                f"output folder {str(path.parent)!r} is not writable; choose another folder"
            )
        if path.exists() and not args.overwrite:
            raise InputError(f"output {str(path)!r} exists; pass --overwrite to replace it")
        seen[resolved] = kind
        plan.outputs.append((kind, path))
    return plan


def _check_options(args: argparse.Namespace) -> None:
    if not args.sentence.strip():
        raise InputError(
            "the sentence is empty; give a referring sentence such as 'the largest building'"
        )
    if args.simplify < 0 or not math.isfinite(args.simplify):
        raise InputError(
            f"--simplify {args.simplify:g} must be a finite tolerance >= 0 (CRS units)"
        )
    if args.min_area < 0 or not math.isfinite(args.min_area):
        raise InputError(
            f"--min-area {args.min_area:g} must be a finite area >= 0 (CRS units squared)"
        )
    if args.nodata is not None and not math.isfinite(args.nodata):
        raise InputError(f"--nodata {args.nodata} must be a finite number")
    if args.overlay_max_side < 16:
        raise InputError(
            f"--overlay-max-side {args.overlay_max_side} is too small; use at least 16"
        )
    if args.sam_checkpoint is not None and not Path(args.sam_checkpoint).is_file():
        raise InputError(
            f"--sam-checkpoint {args.sam_checkpoint!r} does not exist; give a sam_vit_*.pth file"
        )


class _LabelMapSource:
    """An entity label-map file read by windows, checked against the image grid."""

    def __init__(self, path: str, shape: tuple[int, int], max_entities: int) -> None:
        import rasterio

        p = Path(path)
        if not p.is_file():
            raise InputError(
                f"--entities {path!r} does not exist; give a label-map file, 'auto' or 'none'"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.ds = rasterio.open(p)
        except Exception:
            raise InputError(
                f"--entities {path!r} is not a readable label-map image; recompute it"
            ) from None
        if (self.ds.height, self.ds.width) != shape:
            size = f"{self.ds.width}x{self.ds.height}"
            self.ds.close()
            raise InputError(
                f"--entities {path!r} is {size} but the image is {shape[1]}x{shape[0]}; give the image's label map"
            )
        if np.dtype(self.ds.dtypes[0]).kind not in "ui":
            self.ds.close()
            raise InputError(
                f"--entities {path!r} does not hold integer labels; give a uint8 label map"
            )
        self.path, self.max_entities = path, max_entities

    def read(self, window: Any, shape: tuple[int, int]) -> np.ndarray:
        from rasterio.enums import Resampling

        labels = self.ds.read(
            1, window=window, out_shape=shape, resampling=Resampling.nearest
        )  # (h, w)
        if labels.size and labels.max() > self.max_entities:
            raise InputError(
                f"--entities {self.path!r} holds label {int(labels.max())} > {self.max_entities} (the model's "
                "max_entities); recompute it with entitwist entities"
            )
        return labels.astype(np.int64)

    def close(self) -> None:
        self.ds.close()


def _warn_sentence_length(predictor: Any, sentence: str) -> None:
    tokenizer = getattr(predictor.model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        return
    n, limit = len(tokenizer.encode(sentence)), int(tokenizer.max_tokens)
    if n > limit:
        warnings.warn(
            f"the sentence has {n} tokens but the model reads at most {limit}; it was truncated "
            f"(the model sees: {tokenizer.decode(tokenizer(sentence)['input_ids'][0])!r})",
            UserWarning,
            stacklevel=2,
        )


def plan_paths(pairs: list[tuple[str, Path]], kind: str) -> list[Path]:
    """The paths of one kind in a list of ``(kind, path)`` pairs."""
    return [p for k, p in pairs if k == kind]


def segment_to_files(
    image: str | os.PathLike,
    sentence: str,
    predictor: Any,
    plan: OutputPlan,
    *,
    bands: str | None = None,
    stretch: str | None = None,
    nodata: float | None = None,
    entities: str = "auto",
    simplify: float = 0.0,
    min_area: float = 0.0,
    tiling: Any = None,
    overwrite: bool = False,
    overlay_max_side: int = 1600,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment ``image`` for ``sentence`` with ``predictor`` and write the planned outputs.

    All outputs are written to temporary files and renamed together at the end; on any
    error nothing is left behind. Returns a summary dict (shape, CRS, mask pixels, tiles).
    """
    import rasterio
    import rasterio.shutil

    from entitwist.inference.overlay import save_overlay
    from entitwist.inference.raster import RasterSource, gdal_env, open_writer, parse_stretch
    from entitwist.inference.tiling import TilingOptions, segment_scene
    from entitwist.inference.vector import filter_polygons, raster_to_polygons, write_polygons
    from entitwist.utils import atomic_path

    opts = tiling or TilingOptions()
    opts.validate()
    stretch_pct = parse_stretch(stretch)
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_env())
        source = stack.enter_context(
            RasterSource(image, bands=bands, stretch=stretch_pct, nodata=nodata)
        )
        if plan.geo_outputs and source.crs is None:
            warnings.warn(
                f"{image} has no CRS; {', '.join(plan.geo_outputs)} written without one "
                "(pixel-grid transform only)",
                UserWarning,
                stacklevel=2,
            )
        # Entities
        ent_mode = (entities or "auto").strip()
        labels: _LabelMapSource | None = None
        if ent_mode.lower() == "none":
            ent_mode = "none"
        elif ent_mode.lower() != "auto":
            labels = _LabelMapSource(ent_mode, source.shape, predictor.max_entities)
            stack.callback(labels.close)
        _warn_sentence_length(predictor, sentence)
        if ent_mode == "auto" and predictor.uses_entities:
            predictor.get_entity_generator()  # an unknown generator or bad checkpoint fails now

        def predict(rgb: np.ndarray, window: Any) -> np.ndarray:
            if labels is not None:
                ent: Any = labels.read(window, rgb.shape[:2])
            else:
                ent = None if ent_mode == "none" else "auto"
            # tiles come back at the network's resolution; tiling resamples them row band
            # by row band (the whole-scene view comes back at its own size)
            size = "image" if window is None else None
            return predictor.predict_probability(rgb, [sentence], entities=ent, output_size=size)[0]

        # Temporary targets: renamed onto the real paths only when everything succeeded.
        temps: list[tuple[str, Path]] = [
            (kind, stack.enter_context(atomic_path(path, overwrite=overwrite)))
            for kind, path in plan.targets()
        ]
        tmp: dict[str, Path] = {}  # the first temporary file of each kind
        for kind, path in temps:
            tmp.setdefault(kind, path)
        scratch = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix=".entitwist-", dir=plan.targets()[0][1].parent)
            )
        )
        mask_path = tmp.get("mask_tif", scratch / "mask.tif")
        writers: dict[str, Any] = {}
        writers["mask"] = open_writer(mask_path, source, dtype="uint8")
        if "probability" in tmp:
            writers["prob"] = open_writer(
                tmp["probability"], source, dtype="float32", nodata=float("nan")
            )
        if "mask_png" in tmp:
            writers["png"] = open_writer(
                scratch / "mask255.tif", source, dtype="uint8", georeference=False
            )
        for w in writers.values():
            stack.callback(w.close)
        counts = {"mask": 0, "valid": 0}

        def sink(r0: int, r1: int, prob: np.ndarray, mask: np.ndarray) -> None:
            from rasterio.windows import Window

            win = Window(0, r0, source.width, r1 - r0)
            m8 = mask.astype(np.uint8)
            writers["mask"].write(m8, 1, window=win)
            if "prob" in writers:
                writers["prob"].write(prob.astype(np.float32), 1, window=win)
            if "png" in writers:
                writers["png"].write(m8 * 255, 1, window=win)
            counts["mask"] += int(mask.sum())
            counts["valid"] += int(np.isfinite(prob).sum())

        started = time.perf_counter()
        result = segment_scene(source, predict, sink, opts, progress=progress)
        for w in writers.values():
            w.close()
        for kind, path in temps:
            if kind == "mask_png":
                path.unlink(missing_ok=True)
                rasterio.shutil.copy(scratch / "mask255.tif", path, driver="PNG")
            elif kind in {"mask_tif", "probability"} and path != tmp[kind]:
                shutil.copyfile(tmp[kind], path)
        n_polygons = None
        if "polygons" in tmp:
            polys = raster_to_polygons(
                mask_path, source.transform if source.georeferenced else None
            )
            polys = filter_polygons(polys, min_area=min_area, tolerance=simplify)
            for path in plan_paths(temps, "polygons"):
                write_polygons(path, polys, source.crs, sentence=sentence)
            n_polygons = len(polys)
        if "overlay" in tmp:
            from rasterio.enums import Resampling

            with rasterio.open(mask_path) as ds:
                small = (
                    ds.read(
                        1, out_shape=result.overview_rgb.shape[:2], resampling=Resampling.nearest
                    )
                    > 0
                )
            for path in plan_paths(temps, "overlay"):
                save_overlay(path, result.overview_rgb, small, sentence, max_side=overlay_max_side)
        seconds = time.perf_counter() - started
        umask = os.umask(0)
        os.umask(umask)
        for _, path in temps:  # mkstemp makes 0600 files; give outputs the usual mode
            path.chmod(0o666 & ~umask)
    return {
        "width": source.width,
        "height": source.height,
        "crs": None if source.crs is None else source.crs.to_string(),
        "mask_pixels": counts["mask"],
        "valid_pixels": counts["valid"],
        "polygons": n_polygons,
        "tiled": result.tiled,
        "tiles_refined": result.tiles_refined,
        "tiles_total": result.tiles_total,
        "seconds": seconds,
        "outputs": [(k, str(p)) for k, p in plan.targets()],
    }


def main(argv: list[str]) -> int:
    """Run ``entitwist segment``; user errors raise :class:`~entitwist.errors.EntitwistError` (exit 2 via the dispatcher)."""
    from rasterio.errors import NotGeoreferencedWarning

    from entitwist.inference.tiling import TilingOptions

    args = build_parser().parse_args(argv)
    _check_options(args)
    tiling = TilingOptions(
        max_side=args.max_side,
        tile_size=args.tile_size,
        overlap=args.overlap,
        mode=args.tiling,
        roi_threshold=args.roi_threshold,
    )
    tiling.validate()
    from entitwist.inference.raster import parse_stretch

    parse_stretch(args.stretch)  # fail early on a malformed stretch
    plan = plan_outputs(args)
    # Check the image before loading the model (cheap, and the usual mistake).
    from entitwist.inference.raster import RasterSource, gdal_env

    with gdal_env(), RasterSource(args.image, bands=args.bands, nodata=args.nodata):
        pass
    from entitwist.inference.predictor import Predictor, resolve_device

    resolve_device(args.device)
    predictor = Predictor.from_pretrained(
        args.model,
        device=args.device,
        entity_generator=args.entity_generator,
        sam_checkpoint=args.sam_checkpoint,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings(
            "ignore", message="expression longer than"
        )  # reported by our own line
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # plain PNG/JPEG inputs
        try:
            summary = segment_to_files(
                args.image,
                args.sentence,
                predictor,
                plan,
                bands=args.bands,
                stretch=args.stretch,
                nodata=args.nodata,
                entities=args.entities,
                simplify=args.simplify,
                min_area=args.min_area,
                tiling=tiling,
                overwrite=args.overwrite,
                overlay_max_side=args.overlay_max_side,
                progress=not args.quiet,
            )
        finally:
            seen = set()
            for w in caught:
                msg = str(w.message).splitlines()[0]
                if msg not in seen and issubclass(w.category, UserWarning):
                    seen.add(msg)
                    print(f"entitwist: warning: {msg}", file=sys.stderr)
    if not args.quiet:
        share = 100.0 * summary["mask_pixels"] / max(1, summary["valid_pixels"])
        tiles = (
            f", {summary['tiles_refined']}/{summary['tiles_total']} tiles refined"
            if summary["tiled"]
            else ""
        )
        print(
            f"segmented {summary['width']}x{summary['height']} ({summary['crs'] or 'no CRS'}) in "
            f"{summary['seconds']:.1f} s{tiles}: {summary['mask_pixels']} mask pixels ({share:.2f} %)"
        )
        for kind, path in summary["outputs"]:
            print(f"  {kind:<12} {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from entitwist.cli import main as cli_main

    sys.exit(cli_main(["segment", *sys.argv[1:]]))
