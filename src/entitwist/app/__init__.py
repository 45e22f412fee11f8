"""``entitwist app``: a local web page for referring segmentation (Gradio, the ``app`` extra).

- :mod:`entitwist.app.inputs`: reading uploads and sentences within the page's limits (no
  Gradio).
- :mod:`entitwist.app.handlers`: :class:`~entitwist.app.handlers.PageHandlers` (segmenting,
  writing the downloads; no Gradio).
- :mod:`entitwist.app.page`: :func:`~entitwist.app.page.build_app` (the Gradio Blocks page);
  it re-exports the names of the two above.
- :mod:`entitwist.app.server`: the ``entitwist app`` command (loopback only, a temporary
  folder removed at exit, synthetic examples).

Nothing here is imported by the core; Gradio is imported only when the page is built.
"""
