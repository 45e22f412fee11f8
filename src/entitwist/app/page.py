"""The web page of ``entitwist app``: upload an image, type sentences, see and download masks.

Two layers, so that the behaviour is testable without a browser or a server:

- :class:`PageHandlers` (no Gradio): reads an upload (PNG, JPEG, TIFF, GeoTIFF) within the
  page's :class:`PageLimits`, runs :meth:`Predictor.predict` once for all the sentences, and
  writes the downloads (mask PNG; mask GeoTIFF on the input's grid and CRS for TIFF input;
  polygons as GeoJSON) into a fresh folder under the page's output folder. Every problem a
  user can cause comes back as one line in the status text, never as a traceback.
- :func:`build_app` (imports Gradio): the Blocks page wired to those handlers, with the
  preloaded examples and a progress bar.

The mask shown on the page and the mask PNG are ``Predictor.predict(rgb, sentence).mask``
for the image's RGB (uint8 as read; 16-bit and float imagery percentile-stretched as
``entitwist segment`` does) -- the same pixels, 0 / 255. Pixels the file marks as nodata are
never in the mask.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from entitwist.errors import EntitwistError, InputError

__all__ = [
    "PageLimits",
    "PageOutput",
    "PageHandlers",
    "SegmentResult",
    "SentenceResult",
    "Upload",
    "build_app",
    "colorize_probability",
    "parse_sentences",
    "read_upload",
]

log = logging.getLogger("entitwist.app")

DISPLAY_SIDE = 1024  # overlay and probability pictures are reduced to this side for the page
TIFF_SUFFIXES = (".tif", ".tiff")
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# A perceptually ordered colour ramp (dark blue -> teal -> yellow), probability 0 -> 1.
_RAMP = np.array(
    [[48, 18, 59], [65, 69, 171], [57, 162, 252], [27, 229, 181], [164, 252, 60], [251, 185, 56]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class PageLimits:
    """What the page accepts.

    Attributes:
        max_upload_mb: the largest upload in megabytes (also given to Gradio).
        max_side: the longest image side in pixels (larger scenes: ``entitwist segment``).
        max_sentences: sentences per run.
        max_sentence_chars: characters per sentence.
    """

    max_upload_mb: float = 50.0
    max_side: int = 4096
    max_sentences: int = 8
    max_sentence_chars: int = 300

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass
class Upload:
    """An uploaded image read for the network.

    Attributes:
        name: the file's name as the user gave it.
        rgb: (H, W, 3) uint8.
        valid: (H, W) bool, False on nodata pixels.
        crs: ``rasterio.crs.CRS`` or None.
        transform: ``affine.Affine`` for TIFF input (identity without georeferencing), None
            for PNG / JPEG.
        georeferenced: the file has a non-identity transform.
        is_tiff: TIFF / GeoTIFF input (a GeoTIFF mask is offered).
        source: for TIFF input the closed :class:`RasterSource` (its grid, for
            :func:`open_writer`), else None.
    """

    name: str
    rgb: np.ndarray
    valid: np.ndarray
    crs: Any
    transform: Any
    georeferenced: bool
    is_tiff: bool
    source: Any


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


def parse_sentences(text: str | None, limits: PageLimits = PageLimits()) -> list[str]:
    """One sentence per non-blank line of ``text`` (stripped).

    Raises :class:`InputError` when there is none, too many, or one is too long.
    """
    sentences = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not sentences:
        raise InputError(
            "the sentence is empty; type a referring sentence such as 'the largest building' "
            "(one per line)"
        )
    if len(sentences) > limits.max_sentences:
        raise InputError(
            f"{len(sentences)} sentences given; the page segments at most {limits.max_sentences} "
            "at a time: remove some lines"
        )
    for s in sentences:
        if len(s) > limits.max_sentence_chars:
            raise InputError(
                f"a sentence has {len(s)} characters; the page takes at most "
                f"{limits.max_sentence_chars}: shorten it"
            )
    return sentences


def _display_name(path: Path) -> str:
    return path.name or "the upload"


def read_upload(path: str | os.PathLike | None, limits: PageLimits = PageLimits()) -> Upload:
    """Read an uploaded file as uint8 RGB within the page's limits.

    Checks, in order: a file was given; its size (``max_upload_mb``); its type (PNG, JPEG,
    TIFF); that it is an image (not corrupt); its pixel size (``max_side``, from the header,
    before decoding). PNG and JPEG are decoded by PIL like ``Predictor.predict(path)``
    (``entitwist.data.io.read_image``); TIFF and GeoTIFF by rasterio like ``entitwist
    segment`` (uint8 as is, 16-bit and float percentile-stretched 2-98 %, nodata pixels
    black and not valid, CRS and transform kept). Messages name the file by its own name,
    not the temporary path.
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        raise InputError("no image uploaded; upload a PNG, JPEG or GeoTIFF first")
    path = Path(path)
    name = _display_name(path)
    if not path.is_file():
        raise InputError(f"the upload {name!r} is missing on the server; upload it again")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise InputError(
            f"{name!r} is {size / 2**20:.1f} MB, larger than the page's upload limit of "
            f"{limits.max_upload_mb:g} MB; use a smaller file or restart with --max-upload-mb N"
        )
    if path.suffix.lower() not in UPLOAD_SUFFIXES:
        raise InputError(
            f"{name!r} is not a PNG, JPEG or TIFF file; upload one of {', '.join(UPLOAD_SUFFIXES)}"
        )
    is_tiff = path.suffix.lower() in TIFF_SUFFIXES
    try:
        if is_tiff:
            return _read_tiff_upload(path, name, limits)
        return _read_picture_upload(path, name, limits)
    except EntitwistError as exc:
        # the readers name the temporary path; the user knows the file by its name
        raise type(exc)(str(exc).replace(str(path), name)) from None


def _too_large(name: str, width: int, height: int, limits: PageLimits) -> InputError:
    return InputError(
        f"{name!r} is {width}x{height} pixels, larger than the page's limit of "
        f"{limits.max_side} pixels a side; crop or reduce it, use 'entitwist segment' "
        "(it tiles large scenes), or restart with --max-side N"
    )


def _read_picture_upload(path: Path, name: str, limits: PageLimits) -> Upload:
    """PNG / JPEG: decoded by PIL exactly as ``Predictor.predict(path)`` decodes it."""
    from PIL import Image, UnidentifiedImageError

    from entitwist.data.io import read_image

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError(
            f"cannot read image {name!r}: it is not a PNG or JPEG image, or it is truncated; "
            "re-export or re-download it"
        ) from None
    if max(width, height) > limits.max_side:
        raise _too_large(name, width, height, limits)
    rgb = read_image(path)  # (H, W, 3) uint8
    return Upload(
        name=name,
        rgb=rgb,
        valid=np.ones(rgb.shape[:2], dtype=bool),
        crs=None,
        transform=None,
        georeferenced=False,
        is_tiff=False,
        source=None,
    )


def _read_tiff_upload(path: Path, name: str, limits: PageLimits) -> Upload:
    """TIFF / GeoTIFF: read with rasterio as ``entitwist segment`` reads it (CRS, nodata)."""
    from rasterio.errors import NotGeoreferencedWarning

    from entitwist.inference.raster import RasterSource, gdal_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with gdal_env(), RasterSource(path) as source:
            if max(source.width, source.height) > limits.max_side:
                raise _too_large(name, source.width, source.height, limits)
            data, valid = source.read_raw()  # (3, H, W) float32, (H, W) bool
            source.set_stretch_from(data, valid)
            rgb = source.to_rgb(data, valid)  # (H, W, 3) uint8
    return Upload(
        name=name,
        rgb=rgb,
        valid=valid,
        crs=source.crs,
        transform=source.transform,
        georeferenced=source.georeferenced,
        is_tiff=True,
        source=source,
    )


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
        limits: PageLimits = PageLimits(),
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
        from PIL import Image

        from entitwist.inference.overlay import render_overlay
        from entitwist.inference.raster import open_writer
        from entitwist.inference.vector import mask_to_polygons, write_polygons

        sentences = parse_sentences(text, self.limits)
        self._prune()
        progress(0.05, desc="reading the image")
        upload = read_upload(path, self.limits)
        started = time.perf_counter()
        progress(0.15, desc=f"segmenting {len(sentences)} sentence(s)")
        preds = self.predictor.predict(upload.rgb, sentences)  # one batched forward
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=self.output_dir))
        stem = _safe_stem(upload.name)
        results: list[SentenceResult] = []
        files: list[Path] = []
        try:
            for i, pred in enumerate(preds, start=1):
                progress(
                    0.6 + 0.4 * (i - 1) / len(preds), desc=f"writing the outputs of sentence {i}"
                )
                mask = pred.mask & upload.valid  # (H, W) bool; nodata is never the object
                tag = f"{stem}_{i}" if len(preds) > 1 else stem
                mask_png = folder / f"{tag}_mask.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_png)  # 8-bit grey
                files.append(mask_png)
                mask_tif = None
                if upload.is_tiff:
                    mask_tif = folder / f"{tag}_mask.tif"
                    with open_writer(mask_tif, upload.source, dtype="uint8") as dst:
                        dst.write(mask.astype(np.uint8), 1)
                    files.append(mask_tif)
                polygons = mask_to_polygons(
                    mask, upload.transform if upload.georeferenced else None
                )
                poly_path = folder / f"{tag}_polygons.geojson"
                with warnings.catch_warnings():
                    # pixel coordinates without a CRS: said on the page instead
                    warnings.simplefilter("ignore", UserWarning)
                    write_polygons(poly_path, polygons, upload.crs, sentence=pred.sentence)
                files.append(poly_path)
                overlay = np.asarray(
                    render_overlay(upload.rgb, mask, pred.sentence, max_side=DISPLAY_SIDE)
                )
                results.append(
                    SentenceResult(
                        sentence=pred.sentence,
                        mask=mask,
                        probability=pred.probability,
                        overlay=overlay,
                        mask_png=mask_png,
                        mask_tif=mask_tif,
                        polygons=poly_path,
                        n_polygons=len(polygons),
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
            up = read_upload(path, self.limits)
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


# ----------------------------------------------------------------------------------------
# the Gradio page
# ----------------------------------------------------------------------------------------
_CSS = """
#status { min-height: 2.5em; }
#status p { margin: 0.2em 0; }
#overlay .grid-wrap, #mask .grid-wrap, #probability .grid-wrap { padding-top: 2.2em; }
"""

_INTRO = """# entitwist: referring segmentation
Upload an image (PNG, JPEG or GeoTIFF), type what to find (one sentence per line), press
**Segment**. You get the overlay, the mask and the probability map of each sentence, and
downloads: the mask (PNG; GeoTIFF on the input's grid and CRS for TIFF input) and the
polygons (GeoJSON). Limits: {mb:g} MB, {side} pixels a side, {n} sentences.
Model: `{model}`."""


def build_app(
    predictor: Any,
    examples_dir: str | os.PathLike | None = None,
    *,
    output_dir: str | os.PathLike,
    limits: PageLimits = PageLimits(),
    examples: Sequence[tuple[str, str]] | None = None,
    model_name: str = "",
    delete_cache: tuple[int, int] | None = (3600, 3600),
) -> Any:
    """The Gradio Blocks page.

    Args:
        predictor: a :class:`entitwist.inference.Predictor`.
        examples_dir: a folder of example images; each ``<name>.png`` with a
            ``<name>.txt`` beside it (its sentences, one per line) becomes an example.
        output_dir: where the runs' downloads are written.
        limits: :class:`PageLimits`.
        examples: explicit ``(image path, sentences)`` pairs (added after the folder's).
        model_name: shown on the page.
        delete_cache: Gradio's cache clean-up ``(every s, older than s)``; Gradio also
            empties its cache when the server closes.
    Returns: ``gradio.Blocks`` (call ``.launch``; the caller sets ``GRADIO_TEMP_DIR``).
    """
    import gradio as gr

    handlers = PageHandlers(predictor, output_dir, limits)
    pairs: list[tuple[str, str]] = []
    if examples_dir is not None:
        for image in sorted(Path(examples_dir).glob("*.png")):
            text = image.with_suffix(".txt")
            if text.is_file():
                pairs.append((str(image), text.read_text(encoding="utf-8").strip()))
    pairs.extend((str(p), t) for p, t in (examples or []))

    def run(file: str | None, text: str | None, progress: Any = gr.Progress()) -> PageOutput:  # noqa: B008
        return handlers.segment(file, text, progress=progress)

    # the outputs are made first (not rendered) so that the examples can sit in the left column
    overlays = gr.Gallery(
        label="Overlay",
        format="png",
        columns=2,
        height=400,
        object_fit="contain",
        elem_id="overlay",
        render=False,
    )
    masks = gr.Gallery(
        label="Mask",
        format="png",
        columns=2,
        height=270,
        object_fit="contain",
        elem_id="mask",
        render=False,
    )
    probabilities = gr.Gallery(
        label="Probability (blue 0 -> yellow 1)",
        format="png",
        columns=2,
        height=270,
        object_fit="contain",
        elem_id="probability",
        render=False,
    )
    downloads = gr.File(
        label="Downloads: masks and polygons",
        file_count="multiple",
        interactive=False,
        elem_id="downloads",
        render=False,
    )
    with gr.Blocks(title="entitwist", analytics_enabled=False, delete_cache=delete_cache) as page:
        gr.Markdown(
            _INTRO.format(
                mb=limits.max_upload_mb,
                side=limits.max_side,
                n=limits.max_sentences,
                model=model_name or type(predictor.model).__name__,
            )
        )
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(
                    label="Image (PNG, JPEG, GeoTIFF)",
                    file_types=list(UPLOAD_SUFFIXES),
                    type="filepath",
                    elem_id="upload",
                )
                preview = gr.Image(
                    label="Image", interactive=False, format="png", elem_id="preview", height=260
                )
                sentences = gr.Textbox(
                    label="Sentences (one per line)",
                    placeholder="the largest building\nthe red car on the road",
                    lines=3,
                    max_lines=limits.max_sentences + 2,
                    elem_id="sentences",
                )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown("", elem_id="status")
                outputs = [status, preview, overlays, masks, probabilities, downloads]
                if pairs:
                    gr.Examples(
                        examples=[[p, t] for p, t in pairs],
                        inputs=[upload, sentences],
                        outputs=outputs,
                        fn=run,
                        run_on_click=True,
                        cache_examples=False,
                        label="Examples (synthetic scenes; click one to run it)",
                        elem_id="examples",
                    )
            with gr.Column(scale=3):
                overlays.render()
                with gr.Row():
                    masks.render()
                    probabilities.render()
                downloads.render()
        button.click(run, inputs=[upload, sentences], outputs=outputs, api_name="segment")
        sentences.submit(run, inputs=[upload, sentences], outputs=outputs, api_name=False)
        upload.upload(handlers.preview, inputs=upload, outputs=[preview, status], api_name=False)
    return page
