"""The offline demo as public steps: synthetic scenes -> entity maps -> train -> test.

``entitwist demo`` (:mod:`entitwist.demo.cli`) runs the steps in order and skips those whose
outputs already exist. Each step is a function of the parsed options and the output folder,
so a script can run one of them alone:

- :func:`entitwist.demo.data.data_step` draws (or points at) the JSONL scenes,
- :func:`entitwist.demo.data.entities_step` stores their entity label maps,
- :func:`entitwist.demo.training.train_step` trains the tiny model (Lightning),
- :func:`entitwist.demo.evaluation.test_step` scores it and runs the sentence-swap test,
- :func:`entitwist.demo.evaluation.overlays_step` draws overlays.
"""
