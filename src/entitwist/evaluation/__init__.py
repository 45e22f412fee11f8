"""Evaluation: scoring a model on a split, result tables, the paper's figures and plots.

- :mod:`.evaluate` ``entitwist evaluate`` (a model folder or checkpoint on a dataset split)
- :mod:`.tables` result rows in the paper's columns, their JSON and CSV files
- :mod:`.figures` ``entitwist figures`` (overlays, Pr@X curves, K sweep, stage maps, PCA)
- :mod:`.plots` the matplotlib drawing the figures share
"""
