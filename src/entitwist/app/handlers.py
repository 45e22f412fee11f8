"""The actions of the page of ``entitwist app``, free of Gradio: :class:`PageHandlers`.

:meth:`PageHandlers.segment_upload` reads an upload (:mod:`entitwist.app.inputs`), runs
the inference pipeline once for all the sentences
(:func:`entitwist.inference.pipeline.segment_arrays`, one batched forward pass), and writes
the downloads with the pipeline's writers (:mod:`entitwist.inference.sinks`: mask PNG; mask
GeoTIFF on the input's grid and CRS for TIFF input; polygons as GeoJSON) into a fresh folder
under the page's output folder. :meth:`PageHandlers.segment` and
:meth:`PageHandlers.preview` turn that into the values of the page's components
(:class:`PageOutput`), every problem a user can cause as one line in the status text, never
as a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from entitwist.app.inputs import PageLimits, Upload, parse_sentences, read_upload
from entitwist.errors import EntitwistError

__all__ = [
    "DISPLAY_SIDE",
    "PageHandlers",
    "PageOutput",
    "SegmentResult",
    "SentenceResult",
    "colorize_probability",
]

log = logging.getLogger("entitwist.app")

DISPLAY_SIDE = 1024  # overlay and probability pictures are reduced to this side for the page

# A perceptually ordered colour ramp (dark blue -> teal -> yellow), probability 0 -> 1.
_RAMP = np.array(
    [[48, 18, 59], [65, 69, 171], [57, 162, 252], [27, 229, 181], [164, 252, 60], [251, 185, 56]],
    dtype=np.float32,
)


@dataclass
class SentenceResult:
    """One sentence's outputs.

    Attributes:
        sentence: the sentence.
        mask: (H, W) bool.
        probability: (H, W) float32 in [0, 1].
        overlay: (h, w, 3) uint8, the image with the mask and the sentence (reduced).
        mask_png: 0 / 255 PNG of ``mask``.
        mask_tif: 0 / 1 GeoTIFF on the input's grid (TIFF input only).
        polygons: GeoJSON of the mask's regions (map coordinates for georeferenced input,
            pixel coordinates otherwise).
        n_polygons: how many regions.
    """

    sentence: str
    mask: np.ndarray
    probability: np.ndarray
    overlay: np.ndarray
    mask_png: Path
    mask_tif: Path | None
    polygons: Path
    n_polygons: int


@dataclass
class SegmentResult:
    """The outputs of one run of the page."""

    upload: Upload
    results: list[SentenceResult]
    seconds: float
    folder: Path
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """A Markdown paragraph for the status line."""
        up = self.upload
        h, w = up.rgb.shape[:2]
        crs = up.crs.to_string() if up.crs is not None else "no CRS"
        lines = [
            f"Segmented **{_md(up.name)}** ({w}x{h}, {crs}) for {len(self.results)} "
            f"sentence(s) in {self.seconds:.1f} s."
        ]
        for r in self.results:
            share = 100.0 * float(r.mask.mean())
            lines.append(
                f"- *{_md(r.sentence)}*: {share:.1f} % of the image, {r.n_polygons} polygon(s)"
            )
        return "\n".join(lines)


class PageOutput(NamedTuple):
    """The values of the page's output components, in order.

    ``overlays``, ``masks`` and ``probabilities`` are gallery values (lists of
    ``(picture, caption)``); ``files`` are the download paths.
    """

    status: str
    preview: np.ndarray | None
    overlays: list[tuple[Any, str]] | None
    masks: list[tuple[Any, str]] | None
    probabilities: list[tuple[Any, str]] | None
    files: list[str] | None


def _md(text: str) -> str:
    """Escape Markdown's active characters in user text."""
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", text)


def _error_status(message: str) -> str:
    return f"**Error:** {_md(message)}"


def colorize_probability(probability: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8 through a dark-blue-to-yellow ramp."""
    p = np.clip(np.nan_to_num(probability, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)  # (H, W)
    lo = np.minimum(p.astype(np.int64), len(_RAMP) - 2)  # (H, W)
    t = (p - lo)[..., None]  # (H, W, 1)
    rgb = (1.0 - t) * _RAMP[lo] + t * _RAMP[lo + 1]  # (H, W, 3)
    return np.rint(rgb).astype(np.uint8)


def _reduce(picture: np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """Shrink (H, W[, 3]) uint8 to fit ``max_side`` (area filter); smaller pictures unchanged."""
    h, w = picture.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return picture
    from PIL import Image

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BOX))


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "image"
    return stem[:60]


Progress = Callable[..., Any]


def _no_progress(*args: Any, **kwargs: Any) -> None:
    return None


class PageHandlers:
    """The page's actions, free of Gradio.

    Args:
        predictor: a :class:`entitwist.inference.Predictor`.
        output_dir: where each run's downloads go (a fresh sub-folder per run); the server
            makes it inside its temporary folder.
        limits: :class:`PageLimits`.
        keep_seconds: run folders older than this are removed when a new run starts (Gradio
            serves its own copies of the downloads), so a long-lived page does not fill the
            disk.
    """

    def __init__(
        self,
        predictor: Any,
        output_dir: str | os.PathLike,
        limits: PageLimits = PageLimits(),  # noqa: B008 -- frozen, so one shared default is safe
        keep_seconds: float = 3600.0,
    ) -> None:
        self.predictor = predictor
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self.keep_seconds = float(keep_seconds)

    def _prune(self) -> None:
        """Remove the run folders older than ``keep_seconds``."""
        cutoff = time.time() - self.keep_seconds
        for folder in self.output_dir.glob("run-*"):
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:  # removed meanwhile
                pass

    # ------------------------------------------------------------------------------------
    def segment_upload(
        self, path: str | os.PathLike | None, text: str | None, progress: Progress = _no_progress
    ) -> SegmentResult:
        """Read ``path``, segment it for every line of ``text``, write the downloads.

        Raises :class:`EntitwistError` (one line) for anything the user can fix; nothing is
        left in the output folder when it fails.
        """
        from entitwist.inference.overlay import render_overlay
        from entitwist.inference.pipeline import segment_arrays
        from entitwist.inference.sinks import write_mask_png, write_mask_polygons, write_mask_tif

        sentences = parse_sentences(text, self.limits)
        self._prune()
        progress(0.05, desc="reading the image")
        upload = read_upload(path, self.limits, getattr(self.predictor, "read_options", None))
        started = time.perf_counter()
        progress(0.15, desc=f"segmenting {len(sentences)} sentence(s)")
        # one batched forward; nodata is never the object
        outputs = segment_arrays(self.predictor, upload.rgb, sentences, valid=upload.valid)
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=self.output_dir))
        stem = _safe_stem(upload.name)
        results: list[SentenceResult] = []
        files: list[Path] = []
        try:
            for i, (sentence, (probability, mask)) in enumerate(zip(sentences, outputs), start=1):
                progress(
                    0.6 + 0.4 * (i - 1) / len(outputs), desc=f"writing the outputs of sentence {i}"
                )
                tag = f"{stem}_{i}" if len(outputs) > 1 else stem
                mask_png = folder / f"{tag}_mask.png"
                write_mask_png(mask_png, mask)
                files.append(mask_png)
                mask_tif = None
                if upload.is_tiff:
                    mask_tif = folder / f"{tag}_mask.tif"
                    write_mask_tif(mask_tif, mask, upload.source)
                    files.append(mask_tif)
                poly_path = folder / f"{tag}_polygons.geojson"
                n_polygons = write_mask_polygons(
                    poly_path,
                    mask,
                    upload.transform if upload.georeferenced else None,
                    upload.crs,
                    sentence,
                    quiet_crs=True,  # pixel coordinates without a CRS: said on the page instead
                )
                files.append(poly_path)
                overlay = np.asarray(
                    render_overlay(upload.rgb, mask, sentence, max_side=DISPLAY_SIDE)
                )
                results.append(
                    SentenceResult(
                        sentence=sentence,
                        mask=mask,
                        probability=probability,
                        overlay=overlay,
                        mask_png=mask_png,
                        mask_tif=mask_tif,
                        polygons=poly_path,
                        n_polygons=n_polygons,
                    )
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        progress(1.0, desc="done")
        return SegmentResult(
            upload=upload,
            results=results,
            seconds=time.perf_counter() - started,
            folder=folder,
            files=files,
        )

    def segment(
        self, path: str | None, text: str | None, progress: Progress = _no_progress
    ) -> PageOutput:
        """The Segment button: :meth:`segment_upload`, turned into the page's values.

        A user error becomes ``**Error:** <one line>`` in the status and empty outputs; an
        unexpected failure is logged on the server with its traceback and shown as one line.
        """
        try:
            result = self.segment_upload(path, text, progress)
        except EntitwistError as exc:
            return PageOutput(_error_status(str(exc)), None, None, None, None, None)
        except Exception as exc:  # a bug, not the user's doing: one line here, details in the log
            log.exception("segmentation failed")
            first = (str(exc).splitlines() or [""])[0][:200]
            msg = f"segmentation failed ({type(exc).__name__}: {first}); see the server's log"
            return PageOutput(_error_status(msg), None, None, None, None, None)
        status = result.summary()
        if not result.upload.georeferenced:
            status += "\n\nThe image has no georeferencing: the polygons are in pixel coordinates."
        return PageOutput(
            status=status,
            preview=_reduce(result.upload.rgb),
            overlays=[(r.overlay, r.sentence) for r in result.results],
            masks=[(str(r.mask_png), r.sentence) for r in result.results],
            probabilities=[
                (_reduce(colorize_probability(r.probability)), r.sentence) for r in result.results
            ],
            files=[str(p) for p in result.files],
        )

    def preview(self, path: str | None) -> tuple[np.ndarray | None, str]:
        """On upload: the image as the network will see it (reduced) and a status line."""
        if path is None:
            return None, ""
        try:
            up = read_upload(path, self.limits, getattr(self.predictor, "read_options", None))
        except EntitwistError as exc:
            return None, _error_status(str(exc))
        except Exception as exc:  # pragma: no cover - a bug
            log.exception("reading the upload failed")
            return None, _error_status(f"reading the upload failed ({type(exc).__name__})")
        h, w = up.rgb.shape[:2]
        crs = up.crs.to_string() if up.crs is not None else "no CRS"
        return _reduce(up.rgb), (
            f"Loaded **{_md(up.name)}** ({w}x{h}, {crs}). Type sentences and press Segment."
        )
