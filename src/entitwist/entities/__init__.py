"""Entity priors of the SEG module (paper section III-B, IV-B), computed offline.

- :func:`get_generator` ``(name, **params)``: ``felzenszwalb`` (default, weight-free),
  ``slic`` (weight-free), ``sam`` (segment-anything, ``checkpoint=``), ``hf-sam``
  (transformers, ``model=``); ``gen(image uint8 (H, W, 3)) -> list of bool (H, W) masks``.
- :func:`paint_label_map` ``(masks, max_entities=40) -> uint8 (H, W)``: the K largest masks,
  painted largest first; :func:`compute_entities` does generation and painting.
- :class:`EntityStore`: ``<root>/entities/<tag>/<image key>.png`` plus ``manifest.json``;
  K is 1..:data:`MAX_K` (uint8 labels).
- :func:`resolve_store` / :class:`EntitySpec`: the store whose manifest matches what a
  model was built for (generator, its recorded parameters, K, the bands and stretch its
  images are read with), the only way training and evaluation pick one;
  :func:`inference_generator`: the generator run on new images.
- ``entitwist entities ROOT``: fills a store for a dataset (``entitwist.entities.cli``).

Importing this package needs only numpy, Pillow and scikit-image.
"""

from entitwist.entities.base import MaskGenerator
from entitwist.entities.generators import (
    DEFAULT_GENERATOR,
    GENERATORS,
    compute_entities,
    get_generator,
    list_generators,
)
from entitwist.entities.labelmap import MAX_ENTITIES, MAX_K, paint_label_map
from entitwist.entities.resolve import (
    EntitySpec,
    InferenceEntities,
    inference_generator,
    list_stores,
    resolve_store,
)
from entitwist.entities.sam import SAM_MODEL_TYPES, register_sam_model_type
from entitwist.entities.store import (
    EntityStore,
    default_store_dir,
    image_fingerprint,
    image_key,
    store_tag,
)

__all__ = [
    "DEFAULT_GENERATOR",
    "GENERATORS",
    "MAX_ENTITIES",
    "MAX_K",
    "SAM_MODEL_TYPES",
    "EntitySpec",
    "EntityStore",
    "InferenceEntities",
    "MaskGenerator",
    "compute_entities",
    "default_store_dir",
    "get_generator",
    "image_fingerprint",
    "image_key",
    "inference_generator",
    "list_generators",
    "list_stores",
    "paint_label_map",
    "register_sam_model_type",
    "resolve_store",
    "store_tag",
]
