"""The web page of ``entitwist app``: upload an image, type sentences, see and download masks.

Three modules, so that the behaviour is testable without a browser or a server:

- :mod:`entitwist.app.inputs` (no Gradio): :func:`read_upload` reads an upload (PNG, JPEG,
  TIFF, GeoTIFF) within the page's :class:`PageLimits`; :func:`parse_sentences` splits the
  text into sentences.
- :mod:`entitwist.app.handlers` (no Gradio): :class:`PageHandlers` runs
  :meth:`Predictor.predict` once for all the sentences, and writes the downloads (mask PNG;
  mask GeoTIFF on the input's grid and CRS for TIFF input; polygons as GeoJSON) into a fresh
  folder under the page's output folder. Every problem a user can cause comes back as one
  line in the status text, never as a traceback.
- this module: :func:`build_app` (imports Gradio), the Blocks page wired to those handlers,
  with the preloaded examples and a progress bar. The names of the other two are
  importable from here as well.

The mask shown on the page and the mask PNG are ``Predictor.predict(rgb, sentence).mask``
for the image's RGB (uint8 as read; 16-bit and float imagery percentile-stretched as
``entitwist segment`` does) -- the same pixels, 0 / 255. Pixels the file marks as nodata are
never in the mask.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entitwist.app.handlers import (
    PageHandlers,
    PageOutput,
    SegmentResult,
    SentenceResult,
    colorize_probability,
)
from entitwist.app.inputs import UPLOAD_SUFFIXES, PageLimits, Upload, parse_sentences, read_upload

__all__ = [
    "PAGE_CSS",
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

PAGE_CSS = """
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
    limits: PageLimits = PageLimits(),  # noqa: B008 -- frozen, so one shared default is safe
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
        sentences.submit(run, inputs=[upload, sentences], outputs=outputs, api_name=False)  # type: ignore[arg-type]  # False: no API endpoint
        upload.upload(handlers.preview, inputs=upload, outputs=[preview, status], api_name=False)  # type: ignore[arg-type]
    return page
