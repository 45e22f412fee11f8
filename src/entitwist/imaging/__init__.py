"""One imaging contract: how any image file becomes the uint8 RGB picture the network and
the entity generators see, how labels and pictures are resized, and how pictures are
normalised.

>>> from entitwist.imaging import read_image
>>> rgb = read_image("scene.tif", bands="3,2,1")      # doctest: +SKIP
>>> rgb.shape, rgb.dtype                              # doctest: +SKIP
((1024, 1024, 3), dtype('uint8'))

- :mod:`entitwist.imaging.rules`: the band rule and the stretch rule (per-band 2-98 %
  percentiles over the valid pixels for non-8-bit imagery, measured on the whole image).
- :mod:`entitwist.imaging.read`: the decoders and :func:`read_image`, :func:`read_mask`,
  :func:`read_label_map`.
- :mod:`entitwist.imaging.resize`: the nearest rule for labels (PIL's pixel centres), the
  bilinear rule for pictures, the ImageNet normalisation.

Only numpy, PIL and torch are imported here; rasterio (TIFF / GeoTIFF) and tifffile when a
file needs them.
"""

from entitwist.imaging.read import (
    TIFF_SUFFIXES,
    decode_pil,
    read_array,
    read_image,
    read_label_map,
    read_mask,
    to_picture,
)
from entitwist.imaging.resize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    nearest_index,
    normalize,
    prepare_image,
    resize_image,
    resize_nearest,
)
from entitwist.imaging.rules import (
    DEFAULT_STRETCH,
    Stretch,
    apply_stretch,
    compute_stretch,
    parse_bands,
    parse_stretch,
    raw_to_rgb,
    read_options,
    resolve_stretch,
    stretch_to_json,
)

__all__ = [
    "DEFAULT_STRETCH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TIFF_SUFFIXES",
    "Stretch",
    "apply_stretch",
    "compute_stretch",
    "decode_pil",
    "nearest_index",
    "normalize",
    "parse_bands",
    "parse_stretch",
    "prepare_image",
    "raw_to_rgb",
    "read_array",
    "read_image",
    "read_label_map",
    "read_mask",
    "read_options",
    "resize_image",
    "resize_nearest",
    "resolve_stretch",
    "stretch_to_json",
    "to_picture",
]
