"""Scenes of any size: localise on the whole scene, refine with overlapping tiles.

A referring sentence speaks about the whole scene ("the largest tank"), so tiles are not
segmented blindly one by one. :func:`segment_scene` works in two stages:

1. **Localise.** The whole scene is reduced by an integer factor ``f`` so that its longer
   side is at most ``max_side`` (:meth:`RasterSource.overview`, strip by strip), and the
   sentence is segmented on that view: the coarse probability ``P_c``.
2. **Refine** (only when the scene is larger than ``max_side``, or ``mode="always"``). The
   region of interest (ROI) is ``P_c >= roi_threshold`` dilated by ``roi_margin`` pixels.
   Full-resolution tiles of ``tile_size`` with ``overlap`` (:func:`plan_tiles`) that touch
   the ROI are read as windows and segmented; their probabilities are blended with a
   smooth window (:func:`blend_window`: raised-cosine ramps over the overlap, weights
   normalised by their sum). Inside the ROI the result is the blended fine probability;
   elsewhere it is ``P_c`` upsampled bilinearly. So the whole-scene view decides *where*
   the referred object is and the tiles decide its exact outline.

Memory stays bounded whatever the scene size: tiles are read one window at a time and
each keeps only its probability at the network's resolution; the output is assembled
``block`` rows at a time (bilinear resampling of just those rows of each overlapping tile,
weighted sum) and handed to the ``sink`` (normally tiled GeoTIFF writers) as soon as no
later tile can touch those rows. Peak memory is about one tile's pixels plus a few
``block x width`` float buffers. Pixels that are nodata in the input are never in the mask
(probability NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from entitwist.errors import InputError
from entitwist.inference.raster import RasterSource

__all__ = [
    "TilingOptions",
    "SceneResult",
    "SceneView",
    "scene_view",
    "plan_tiles",
    "blend_window",
    "upsample_rows",
    "bilinear_rows",
    "segment_scene",
]

# (rows r0, r1, probability (h, W) float32 NaN on nodata, mask (h, W) bool) -> None
Sink = Callable[[int, int, np.ndarray, np.ndarray], None]
# (rgb (h, w, 3) uint8, window or None for the overview) -> probability (h, w) float32
PredictFn = Callable[[np.ndarray, Window | None], np.ndarray]


@dataclass
class TilingOptions:
    """How a scene is cut.

    Attributes:
        max_side: longer side of the whole-scene view; scenes up to this size are segmented
            in one piece (``mode="auto"``).
        tile_size: side of the full-resolution refinement tiles (pixels).
        overlap: pixels shared by neighbouring tiles (blended).
        mode: ``"auto"`` (tile when the scene is larger than ``max_side``), ``"always"``,
            ``"never"``.
        roi_threshold: coarse probability above which a place is refined.
        roi_margin: full-resolution pixels added around the ROI (None: ``overlap``).
        block: rows flushed at a time (the output GeoTIFF's block size).
        max_tiles: refine at most this many tiles (the first ones in row-major order; the
            rest keep the coarse probability); None refines all. For previews and
            benchmarks on bounded time.
    """

    max_side: int = 2048
    tile_size: int = 1024
    overlap: int = 256
    mode: str = "auto"
    roi_threshold: float = 0.3
    roi_margin: int | None = None
    block: int = 256
    max_tiles: int | None = None

    def validate(self) -> None:
        """Raise :class:`InputError` for an option out of range."""
        if self.mode not in {"auto", "always", "never"}:
            raise InputError(f"--tiling {self.mode!r}; use auto, always or never")
        if self.max_side < 32:
            raise InputError(f"--max-side {self.max_side} is too small; use at least 32 pixels")
        if self.tile_size < 32:
            raise InputError(f"--tile-size {self.tile_size} is too small; use at least 32 pixels")
        if not 0 <= self.overlap < self.tile_size // 2 + 1:
            raise InputError(
                f"--overlap {self.overlap} must be between 0 and half the tile size ({self.tile_size // 2})"
            )
        if not 0.0 < self.roi_threshold < 1.0:
            raise InputError(
                f"--roi-threshold {self.roi_threshold:g} must be between 0 and 1 (exclusive)"
            )
        if self.max_tiles is not None and self.max_tiles < 0:
            raise InputError(f"--max-tiles {self.max_tiles} is negative; give a count >= 0")
        if self.roi_margin is not None and self.roi_margin < 0:
            raise InputError(f"--roi-margin {self.roi_margin} is negative; give pixels >= 0")


@dataclass
class SceneResult:
    """What a run produced besides the streamed outputs.

    Attributes:
        overview_rgb: (h, w, 3) uint8 whole-scene view (for the overlay).
        overview_valid: (h, w) bool.
        coarse_probability: (h, w) float32 localisation result.
        factor: overview reduction factor.
        tiles_total: tiles in the full grid (0 when not tiled).
        tiles_refined: tiles actually segmented.
        tiled: whether the refinement stage ran.
        tiles_wanted: tiles touching the region of interest (``tiles_refined`` unless
            ``max_tiles`` cut them short).
    """

    overview_rgb: np.ndarray
    overview_valid: np.ndarray
    coarse_probability: np.ndarray
    factor: int
    tiles_total: int
    tiles_refined: int
    tiled: bool
    tiles_wanted: int = 0


@dataclass
class SceneView:
    """The whole-scene view the localisation stage segments.

    Attributes:
        rgb: (h, w, 3) uint8 (the scene's stretch, nodata black).
        valid: (h, w) bool.
        factor: reduction factor (``h = ceil(H / factor)``).
    """

    rgb: np.ndarray
    valid: np.ndarray
    factor: int


def scene_view(source: RasterSource, max_side: int, progress: bool = False) -> SceneView:
    """Read ``source`` reduced so that its longer side is at most ``max_side`` and measure
    the scene's stretch on it (raises :class:`InputError` for an all-nodata scene)."""
    from tqdm.auto import tqdm

    with tqdm(
        total=source.height,
        desc="reading scene",
        unit="row",
        disable=not progress,
        leave=False,
        delay=0.5,
    ) as bar:
        raw, valid, factor = source.overview(max_side, progress=bar)  # (3, h, w), (h, w)
    source.set_stretch_from(raw, valid)
    return SceneView(source.to_rgb(raw, valid), valid, factor)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile ends flush with the edge
    return starts


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tile windows ``(row, col, h, w)`` covering the image, row-major, neighbours sharing
    at least ``overlap`` pixels; tiles are clipped to the image when it is smaller."""
    stride = max(1, tile - overlap)
    rows = _starts(height, tile, stride)
    cols = _starts(width, tile, stride)
    return [(r, c, min(tile, height), min(tile, width)) for r in rows for c in cols]


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    w = np.ones(n, dtype=np.float32)
    k = min(overlap, n // 2)
    if k > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)).astype(np.float32)  # (0, 1)
        if not at_start:
            w[:k] = ramp
        if not at_end:
            w[n - k :] = ramp[::-1]
    return w


def blend_window(
    h: int,
    w: int,
    overlap: int,
    *,
    top: bool = False,
    bottom: bool = False,
    left: bool = False,
    right: bool = False,
) -> np.ndarray:
    """(h, w) float32 blending weights: raised-cosine ramps over ``overlap`` pixels on each
    side, 1 inside; a side flagged True (the scene's edge) is not ramped. All weights > 0."""
    return np.outer(_ramp(h, overlap, top, bottom), _ramp(w, overlap, left, right))


def bilinear_rows(
    src: np.ndarray, scale_y: float, scale_x: float, r0: int, r1: int, width: int
) -> np.ndarray:
    """Rows ``r0:r1`` (and columns ``0:width``) of a bilinear resampling of ``src`` (h, w).

    Output pixel centre ``y + 0.5`` samples ``src`` at ``(y + 0.5) * scale_y - 0.5`` (the
    ``align_corners=False`` convention of ``torch.nn.functional.interpolate``; ``scale`` is
    source size / output size), clamped at the borders. Returns (r1 - r0, width) float32.
    """
    h, w = src.shape

    def axis(idx: np.ndarray, n: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((idx + 0.5) * scale - 0.5, 0, n - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, fy = axis(np.arange(r0, r1), h, scale_y)
    x0, x1, fx = axis(np.arange(width), w, scale_x)
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx  # (rows, width)
    bot = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bot * fy[:, None]).astype(np.float32)


def upsample_rows(coarse: np.ndarray, factor: int, r0: int, r1: int, width: int) -> np.ndarray:
    """Rows ``r0:r1`` of the bilinear upsampling of ``coarse`` (h, w) by an integer ``factor``.

    Returns (r1 - r0, width) float32 (see :func:`bilinear_rows`).
    """
    if factor == 1:
        return coarse[r0:r1, :width].astype(np.float32, copy=True)
    return bilinear_rows(coarse, 1.0 / factor, 1.0 / factor, r0, r1, width)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0 or not mask.any():
        return mask.copy()
    from scipy.ndimage import maximum_filter

    return maximum_filter(mask.astype(np.uint8), size=2 * radius + 1) > 0


@dataclass
class _TileResult:
    row: int
    col: int
    height: int
    width: int
    prob: np.ndarray  # (ph, pw) float32, any resolution covering the tile
    wy: np.ndarray  # (height,) blend weights along rows
    wx: np.ndarray  # (width,) blend weights along columns


def segment_scene(
    source: RasterSource,
    predict: PredictFn,
    sink: Sink,
    options: TilingOptions | None = None,
    progress: bool = True,
    view: SceneView | None = None,
) -> SceneResult:
    """Segment a whole scene, streaming the full-resolution result to ``sink``.

    Args:
        source: the opened scene (bands, stretch and nodata already chosen).
        predict: ``predict(rgb (h, w, 3) uint8, window) -> probability``; ``window`` is the
            full-resolution ``Window`` of a tile, None for the whole-scene view. For the view
            the probability must be (h, w); for a tile it may have any size (ph, pw) covering
            the tile (e.g. the network's own S x S output), and is resampled bilinearly
            only row band by row band when blended, so a tile never costs full-resolution
            float buffers.
        sink: called with consecutive row bands ``(r0, r1, probability (h, W), mask (h, W))``
            covering the image top to bottom exactly once.
        options: see :class:`TilingOptions`.
        progress: show tqdm bars on stderr.
        view: the whole-scene view when already read (:func:`scene_view` with the same
            ``max_side``); ``predict(view.rgb, None)`` is still asked for its probability.
    """
    from tqdm.auto import tqdm

    opts = options or TilingOptions()
    opts.validate()
    height, width = source.shape
    view = view or scene_view(source, opts.max_side, progress)  # raises for all-nodata
    ov_rgb, ov_valid, factor = view.rgb, view.valid, view.factor  # (h, w, 3), (h, w)
    coarse = np.asarray(predict(ov_rgb, None), dtype=np.float32)  # (h, w)
    if coarse.shape != ov_valid.shape:
        raise ValueError(f"predict returned {coarse.shape} for a {ov_valid.shape} view")
    coarse = np.where(ov_valid, coarse, 0.0).astype(np.float32)

    tiled = opts.mode == "always" or (opts.mode == "auto" and max(height, width) > opts.max_side)
    tiles: list[tuple[int, int, int, int]] = []
    roi = np.zeros_like(ov_valid)
    total = 0
    if tiled:
        margin = opts.overlap if opts.roi_margin is None else opts.roi_margin
        roi = _dilate(coarse >= opts.roi_threshold, math.ceil(margin / factor)) & ov_valid
        grid = plan_tiles(height, width, opts.tile_size, opts.overlap)
        total = len(grid)
        for r, c, th, tw in grid:
            a, b = r // factor, math.ceil((r + th) / factor)
            cc, d = c // factor, math.ceil((c + tw) / factor)
            if roi[a:b, cc:d].any():
                tiles.append((r, c, th, tw))
    wanted = len(tiles)
    if opts.max_tiles is not None:
        tiles = tiles[: opts.max_tiles]

    block = opts.block
    done: list[_TileResult] = []  # tiles whose rows are not all flushed yet
    flushed = 0  # rows [0, flushed) went to the sink

    def flush(upto: int) -> None:
        nonlocal flushed, done
        col_roi = np.arange(width) // factor
        for r0 in range(flushed, upto, block):
            r1 = min(upto, r0 + block)
            prob = upsample_rows(coarse, factor, r0, r1, width)  # (h, W)
            valid = source.read_valid(Window(0, r0, width, r1 - r0))  # (h, W)
            num = np.zeros_like(prob)  # sum of weight * tile probability
            den = np.zeros_like(prob)  # sum of weights
            for t in done:
                a, b = max(r0, t.row), min(r1, t.row + t.height)
                if a >= b:
                    continue
                ph, pw = t.prob.shape
                p = bilinear_rows(
                    t.prob, ph / t.height, pw / t.width, a - t.row, b - t.row, t.width
                )
                wgt = np.outer(t.wy[a - t.row : b - t.row], t.wx)  # (b - a, tw)
                wgt *= valid[a - r0 : b - r0, t.col : t.col + t.width]
                num[a - r0 : b - r0, t.col : t.col + t.width] += wgt * p
                den[a - r0 : b - r0, t.col : t.col + t.width] += wgt
            if done:
                use = roi[np.arange(r0, r1) // factor][:, col_roi] & (den > 0)
                prob[use] = num[use] / den[use]
            prob[~valid] = np.nan
            sink(r0, r1, prob, (prob >= 0.5) & valid)
        flushed = max(flushed, upto)
        done = [t for t in done if t.row + t.height > flushed]

    with tqdm(
        total=len(tiles),
        desc="refining tiles",
        unit="tile",
        disable=not progress or not tiles,
        delay=0.5,
    ) as bar:
        for r, c, th, tw in tiles:
            if r - flushed >= block:  # no later tile starts above row r: those rows are final
                flush((r // block) * block)
            window = Window(c, r, tw, th)
            rgb, valid = source.read_rgb(window)  # (th, tw, 3), (th, tw)
            if valid.any():
                p = np.asarray(predict(rgb, window), dtype=np.float32)  # (ph, pw)
                done.append(
                    _TileResult(
                        r,
                        c,
                        th,
                        tw,
                        p,
                        _ramp(th, opts.overlap, r == 0, r + th == height),
                        _ramp(tw, opts.overlap, c == 0, c + tw == width),
                    )
                )
            del rgb, valid
            bar.update(1)
    flush(height)
    return SceneResult(
        overview_rgb=ov_rgb,
        overview_valid=ov_valid,
        coarse_probability=coarse,
        factor=factor,
        tiles_total=total,
        tiles_refined=len(tiles),
        tiled=tiled,
        tiles_wanted=wanted,
    )
