"""Entity priors of the SEG module (paper section III-B, IV-B), computed offline.

- :func:`get_generator` ``(name, **params)``: ``felzenszwalb`` (default, weight-free),
  ``slic`` (weight-free), ``sam`` (segment-anything, ``checkpoint=``), ``hf-sam``
  (transformers, ``model=``); ``gen(image uint8 (H, W, 3)) -> list of bool (H, W) masks``.
- :func:`paint_label_map` ``(masks, max_entities=40) -> uint8 (H, W)``: the K largest masks,
  painted largest first; :func:`compute_entities` does generation and painting.
- :class:`EntityStore`: ``<root>/entities/<tag>/<image key>.png`` plus ``manifest.json``.
- ``entitwist entities ROOT``: fills a store for a dataset (``entitwist.entities.cli``).

Importing this package needs only numpy, Pillow and scikit-image.
"""

from entitwist.entities.generators import (
    DEFAULT_GENERATOR,
    GENERATORS,
    SAM_MODEL_TYPES,
    MaskGenerator,
    get_generator,
    list_generators,
    register_sam_model_type,
)
from entitwist.entities.labelmap import MAX_ENTITIES, compute_entities, paint_label_map
from entitwist.entities.store import (
    EntityStore,
    default_store_dir,
    find_store,
    image_key,
    store_tag,
)

__all__ = [
    "DEFAULT_GENERATOR",
    "GENERATORS",
    "MAX_ENTITIES",
    "SAM_MODEL_TYPES",
    "EntityStore",
    "MaskGenerator",
    "compute_entities",
    "default_store_dir",
    "find_store",
    "get_generator",
    "image_key",
    "list_generators",
    "paint_label_map",
    "register_sam_model_type",
    "store_tag",
]
