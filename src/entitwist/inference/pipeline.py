"""The inference pipeline: image -> entity map -> probability -> outputs.

One path serves ``entitwist segment`` (one image, or many through
:mod:`entitwist.inference.batch`), the page of ``entitwist app`` and the figures, through
public :class:`~entitwist.inference.Predictor` methods only:

- :func:`segment_to_files` / :func:`segment_source`: a file of any size (localised on the
  whole-scene view, refined with tiles, :mod:`entitwist.inference.tiling`) streamed into
  GeoTIFFs (:class:`~entitwist.inference.sinks.RasterSink`), then the mask PNG, polygons
  and overlay. Every output is written to a temporary file beside it and renamed only when
  the whole image succeeded (:func:`entitwist.utils.atomic_path`).
- :func:`segment_arrays`: an image in memory, several sentences in one batched forward pass
  (the page), results in memory; :mod:`entitwist.inference.sinks` writes the downloads.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.errors import InputError
from entitwist.inference.outputs import OutputPlan

__all__ = [
    "SegmentOptions",
    "segment_to_files",
    "segment_source",
    "segment_arrays",
    "scene_predict_fn",
    "warn_sentence_length",
]


@dataclass
class SegmentOptions:
    """How an image is read, segmented and written (the options of ``entitwist segment``).

    Attributes:
        bands: ``"3,2,1"`` (1-based) or None (see :func:`~entitwist.inference.raster.parse_bands`).
        stretch: ``"2,98"`` percentiles or None (the default rule).
        nodata: a value marking missing pixels (overrides the file's).
        entities: ``"auto"``, ``"none"`` or a label-map file of the image's size.
        simplify: polygon simplification tolerance (CRS units).
        min_area: polygons smaller than this are dropped (CRS units squared).
        tiling: :class:`~entitwist.inference.tiling.TilingOptions` (None: defaults).
        overlay_max_side: longer side of the overlay picture.
    """

    bands: str | None = None
    stretch: str | None = None
    nodata: float | None = None
    entities: str = "auto"
    simplify: float = 0.0
    min_area: float = 0.0
    tiling: Any = None
    overlay_max_side: int = 1600

    def validate(self) -> None:
        """Raise :class:`InputError` for an option out of range."""
        from entitwist.imaging import parse_stretch
        from entitwist.inference.tiling import TilingOptions

        if self.simplify < 0 or not math.isfinite(self.simplify):
            raise InputError(
                f"--simplify {self.simplify:g} must be a finite tolerance >= 0 (CRS units)"
            )
        if self.min_area < 0 or not math.isfinite(self.min_area):
            raise InputError(
                f"--min-area {self.min_area:g} must be a finite area >= 0 (CRS units squared)"
            )
        if self.nodata is not None and not math.isfinite(self.nodata):
            raise InputError(f"--nodata {self.nodata} must be a finite number")
        if self.overlay_max_side < 16:
            raise InputError(
                f"--overlay-max-side {self.overlay_max_side} is too small; use at least 16"
            )
        (self.tiling or TilingOptions()).validate()
        parse_stretch(self.stretch)


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
                f"--entities {path!r} is {size} but the image is {shape[1]}x{shape[0]}; "
                "give the image's label map"
            )
        if np.dtype(self.ds.dtypes[0]).kind not in "ui":
            self.ds.close()
            raise InputError(
                f"--entities {path!r} does not hold integer labels; give a uint8 label map"
            )
        self.path, self.max_entities = path, max_entities

    def read(self, window: Any, shape: tuple[int, int]) -> np.ndarray:
        from rasterio.enums import Resampling

        labels = self.ds.read(1, window=window, out_shape=shape, resampling=Resampling.nearest)
        if labels.size and labels.max() > self.max_entities:
            raise InputError(
                f"--entities {self.path!r} holds label {int(labels.max())} > {self.max_entities} "
                "(the model's max_entities); recompute it with entitwist entities"
            )
        return labels.astype(np.int64)  # (h, w)

    def close(self) -> None:
        self.ds.close()


def warn_sentence_length(predictor: Any, sentence: str) -> None:
    """Warn when the model's tokenizer truncates ``sentence`` (shows what it reads)."""
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


def entity_mode(entities: str | None) -> str:
    """``"auto"``, ``"none"`` or the label-map path."""
    mode = (entities or "auto").strip()
    return mode.lower() if mode.lower() in {"auto", "none"} else mode


def check_entity_generator(predictor: Any) -> None:
    """Build the ``auto`` generator now (an unknown name or a missing checkpoint fails
    before any output) and warn when it is not the model's own."""
    if predictor.uses_entities:
        predictor.get_entity_generator()
        if predictor.entity_note:
            warnings.warn(predictor.entity_note, UserWarning, stacklevel=2)


def scene_predict_fn(
    predictor: Any, sentence: str, mode: str, labels: _LabelMapSource | None = None
) -> Any:
    """The ``predict(rgb, window)`` of :func:`~entitwist.inference.tiling.segment_scene`:
    the whole-scene view comes back at its own size, tiles at the network's resolution
    (resampled row band by row band when blended)."""

    def predict(rgb: np.ndarray, window: Any) -> np.ndarray:
        if labels is not None:
            ent: Any = labels.read(window, rgb.shape[:2])
        else:
            ent = None if mode == "none" else "auto"
        size = "image" if window is None else None
        return predictor.predict_probability(rgb, [sentence], entities=ent, output_size=size)[0]

    return predict


def segment_to_files(
    image: str | os.PathLike,
    sentence: str,
    predictor: Any,
    plan: OutputPlan,
    options: SegmentOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment ``image`` for ``sentence`` with ``predictor`` and write the planned outputs.

    All outputs are written to temporary files and renamed together at the end; on any
    error nothing is left behind. Returns a summary dict (shape, CRS, mask pixels, tiles).
    """
    from entitwist.imaging import read_options
    from entitwist.inference.raster import RasterSource, gdal_env

    opts = options or SegmentOptions()
    opts.validate()
    # --bands / --stretch when given, else what the model was trained with
    reading = read_options(opts.bands, opts.stretch, getattr(predictor, "read_options", None))
    with (
        gdal_env(),
        RasterSource(image, **reading, nodata=opts.nodata) as source,
    ):
        return segment_source(
            source, sentence, predictor, plan, opts, overwrite=overwrite, progress=progress
        )


def segment_source(
    source: Any,
    sentence: str,
    predictor: Any,
    plan: OutputPlan,
    opts: SegmentOptions,
    *,
    overwrite: bool = False,
    progress: bool = True,
    view: Any = None,
    coarse: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`segment_to_files` on an opened :class:`~entitwist.inference.raster.RasterSource`.

    ``view`` (a :class:`~entitwist.inference.tiling.SceneView`) and ``coarse`` (its
    probability) skip reading and segmenting the whole-scene view again (the batch path
    segments several views in one forward pass).
    """
    import rasterio
    import rasterio.shutil

    from entitwist.inference.overlay import save_overlay
    from entitwist.inference.sinks import RasterSink
    from entitwist.inference.tiling import TilingOptions, segment_scene
    from entitwist.inference.vector import filter_polygons, raster_to_polygons, write_polygons
    from entitwist.utils import atomic_path

    tiling = opts.tiling or TilingOptions()
    image = source.path
    with contextlib.ExitStack() as stack:
        if plan.geo_outputs and source.crs is None:
            warnings.warn(
                f"{image} has no CRS; {', '.join(plan.geo_outputs)} written without one "
                "(pixel-grid transform only)",
                UserWarning,
                stacklevel=2,
            )
        mode = entity_mode(opts.entities)
        labels: _LabelMapSource | None = None
        if mode not in {"auto", "none"}:
            labels = _LabelMapSource(mode, source.shape, predictor.max_entities)
            stack.callback(labels.close)
        warn_sentence_length(predictor, sentence)
        if mode == "auto":
            check_entity_generator(predictor)
        predict = scene_predict_fn(predictor, sentence, mode, labels)
        if coarse is not None:
            fine = predict

            def predict(rgb: np.ndarray, window: Any) -> np.ndarray:
                return coarse if window is None else fine(rgb, window)

        # Temporary targets: renamed onto the real paths only when everything succeeded.
        temps = [
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
        sink = stack.enter_context(
            RasterSink(
                source,
                mask_path,
                probability=tmp.get("probability"),
                mask255=scratch / "mask255.tif" if "mask_png" in tmp else None,
            )
        )
        started = time.perf_counter()
        result = segment_scene(source, predict, sink, tiling, progress=progress, view=view)
        sink.close()
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
            polys = filter_polygons(polys, min_area=opts.min_area, tolerance=opts.simplify)
            for kind, path in temps:
                if kind == "polygons":
                    write_polygons(path, polys, source.crs, sentence=sentence)
            n_polygons = len(polys)
        if "overlay" in tmp:
            from rasterio.enums import Resampling

            with rasterio.open(mask_path) as ds:
                small = ds.read(
                    1, out_shape=result.overview_rgb.shape[:2], resampling=Resampling.nearest
                )
            for kind, path in temps:
                if kind == "overlay":
                    save_overlay(
                        path,
                        result.overview_rgb,
                        small > 0,
                        sentence,
                        max_side=opts.overlay_max_side,
                    )
        seconds = time.perf_counter() - started
        umask = os.umask(0)
        os.umask(umask)
        for _, path in temps:  # mkstemp makes 0600 files; give outputs the usual mode
            path.chmod(0o666 & ~umask)
    return {
        "image": str(image),
        "width": source.width,
        "height": source.height,
        "crs": None if source.crs is None else source.crs.to_string(),
        "mask_pixels": sink.mask_pixels,
        "valid_pixels": sink.valid_pixels,
        "polygons": n_polygons,
        "tiled": result.tiled,
        "tiles_refined": result.tiles_refined,
        "tiles_total": result.tiles_total,
        "tiles_wanted": result.tiles_wanted,
        "seconds": seconds,
        "outputs": [(k, str(p)) for k, p in plan.targets()],
    }


def segment_arrays(
    predictor: Any,
    rgb: np.ndarray,
    sentences: list[str],
    valid: np.ndarray | None = None,
    entities: Any = "auto",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """An image in memory, every sentence in one batched forward pass.

    Args:
        rgb: (H, W, 3) uint8. ``valid``: (H, W) bool (nodata is never in the mask).
        entities: ``"auto"``, None or an (H, W) label map.
    Returns: one ``(probability (H, W) float32, mask (H, W) bool)`` per sentence.
    """
    preds = predictor.predict(rgb, list(sentences), entities=entities)  # one batched forward
    ok = np.ones(rgb.shape[:2], dtype=bool) if valid is None else valid
    return [(p.probability, p.mask & ok) for p in preds]
