"""``entitwist figures``: the paper's figures from one command each.

::

    entitwist figures overlays -m runs/x/export --dataset jsonl --root scenes \\
        --split test --n 8 -o figs/overlays
    entitwist figures prx --results runs/a/eval/evaluate_jsonl_test.json b.json -o prx.png
    entitwist figures prx -m runs/x/export --dataset jsonl --root scenes -o prx.png
    entitwist figures ksweep --results runs/ -o ksweep.png          # Fig. 6
    entitwist figures stages -m full/ --compare baseline/ seg/ \\
        --image scene.png --sentence "the red car" -o stages.png   # Fig. 5
    entitwist figures pca -m full/ --image scene.png --sentence "..." -o pca.png  # Fig. 8

What each figure shows, and where its numbers come from:

- **overlays**: per sample the image (sentence as title), the ground truth (green) and the
  prediction (red) with its IoU, compared at the image's original size (the network output
  upsampled bilinearly, as ``entitwist evaluate --protocol original``). One PNG per sample
  plus ``grid.png`` and ``overlays.json`` (the IoUs).
- **prx**: Pr@X, the share of expressions with IoU >= X, for X in 0.50..0.90 in steps of
  ``--step``, from per-expression IoUs: the ``<stem>_per_sample.csv`` that ``entitwist
  evaluate --per-sample`` writes beside its JSON (found automatically), a per-sample CSV
  given directly, or computed here with ``-m/--model``. A JSON without them (``entitwist
  test``) gives its five Pr@ columns, drawn with markers.
- **ksweep**: mIoU (``--metric``) against K, one line per dataset. K is read from the JSON
  (``max_entities``), the checkpoint folder's ``config.json``, or a ``k<N>`` in the path
  (``runs/fig6_rrsisd_k10/...``); ``--k`` overrides.
- **stages** (Fig. 5): F^out of the four stages reduced to one map each (channel mean,
  first principal component, or L2 norm over channels), min-max normalised, beside the
  image; ``--compare`` adds a row per further model (baseline / SEG / full).
- **pca** (Fig. 8): the visual and textual halves of the tri-modal cube at one stage,
  before DAT = the two halves of F^cube (visual F^in + G, textual T^loc) and after DAT =
  the two halves of F^sem (after the channel-wise semantic propagation of eq. 7, the
  features eq. 8 splits into F^vis and F^txt; for the SA-only variant F^sem = F^cube).
  Each phase is projected to 3D by one PCA fitted on both clouds together; visual blue,
  textual red. The centroid distance of the clouds (in the full d channels, on every
  position) is printed raw and relative to the joint cloud's RMS radius.

Where the code lives (the names in ``__all__`` are importable from here):

- :mod:`~entitwist.evaluation.figures.results`: reading results JSONs and per-sample CSVs;
- :mod:`~entitwist.evaluation.figures.prx`: the Pr@X numbers;
- :mod:`~entitwist.evaluation.figures.ksweep`: the K-sweep numbers;
- :mod:`~entitwist.evaluation.figures.features`: stage maps and the DAT PCA (with :func:`pca`);
- :mod:`~entitwist.evaluation.figures.model`: loading a model, running it on one image;
- :mod:`~entitwist.evaluation.figures.overlays`: the overlay predictions and pictures;
- :mod:`~entitwist.evaluation.figures.cli`: the command (:func:`build_parser`, :func:`main`).

The drawing itself is in :mod:`entitwist.evaluation.plots`.
"""

from __future__ import annotations

from entitwist.evaluation.figures.features import dat_pca, feature_map, pca, separation, stage_maps
from entitwist.evaluation.figures.ksweep import ksweep_points
from entitwist.evaluation.figures.model import describe_model, run_single
from entitwist.evaluation.figures.overlays import overlay_items, write_overlays
from entitwist.evaluation.figures.prx import pr_curve, prx_curve_of, thresholds
from entitwist.evaluation.figures.results import find_result_files, read_results

__all__ = [
    "dat_pca",
    "describe_model",
    "feature_map",
    "find_result_files",
    "ksweep_points",
    "overlay_items",
    "pca",
    "pr_curve",
    "prx_curve_of",
    "read_results",
    "run_single",
    "separation",
    "stage_maps",
    "thresholds",
    "write_overlays",
]
