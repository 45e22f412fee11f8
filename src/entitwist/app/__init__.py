"""``entitwist app``: a local web page for referring segmentation (Gradio, the ``app`` extra).

- :mod:`entitwist.app.page`: :class:`~entitwist.app.page.PageHandlers` (reading uploads,
  segmenting, writing the downloads; no Gradio) and
  :func:`~entitwist.app.page.build_app` (the Gradio Blocks page).
- :mod:`entitwist.app.server`: the ``entitwist app`` command (loopback only, a temporary
  folder removed at exit, synthetic examples).

Nothing here is imported by the core; Gradio is imported only when the page is built.
"""
