"""Entity-mask generators behind one interface (paper section III-B, IV-B).

``get_generator(name, **params)`` returns a callable ``gen(image) -> list[bool mask]``:

- ``felzenszwalb`` (default, weight-free): scikit-image graph segmentation run on a copy
  downscaled so that its longest side is ``work_size`` (256) and contrast-stretched,
  labels upsampled back with nearest neighbour (:func:`entitwist.imaging.resize_nearest`).
  A partition of the image: every pixel is in exactly one mask.
- ``felzenszwalb-rag`` (weight-free): a fine felzenszwalb cut whose adjacent segments of
  similar mean colour are merged again (scikit-image region adjacency graph); keeps small
  objects whole. The demo's generator.
- ``slic`` (weight-free): scikit-image SLIC superpixels, same downscale/upsample scheme.
- ``sam``: Meta's ``segment-anything`` automatic mask generator on the image upsampled to
  ``input_size`` x ``input_size`` (1024, as in the paper); masks resized back with nearest
  neighbour. ``checkpoint=`` a ``.pth`` state dict; ``model_type=`` a name of
  :data:`SAM_MODEL_TYPES` (``vit_b`` by default; the file name is never inspected).
- ``hf-sam``: the transformers ``SamModel`` through the ``mask-generation`` pipeline,
  ``model=`` a local ``save_pretrained`` folder or a hub id already in the local cache.

Every generator has ``.name``, ``.params`` (a JSON-able dict of everything that changes its
output, written to the store manifest), ``.checkpoint_sha256`` (``None`` for the
weight-free ones) and ``__call__(image uint8 (H, W, 3)) -> list[np.ndarray bool (H, W)]``.
The weight-free generators also offer ``label_map(image, max_entities)``, a fast path equal
to ``paint_label_map(gen(image), max_entities)`` (tested against it).

:func:`compute_entities` runs a generator and paints the K largest masks into one label map
(:func:`entitwist.entities.labelmap.paint_label_map`).

Imports go one way: :mod:`~entitwist.entities.labelmap` (K, painting) and
:mod:`~entitwist.entities.base` (the interface) <- :mod:`~entitwist.entities.sam` <- this
module (the registry). Only numpy, PIL, scikit-image and :mod:`entitwist.imaging` are
imported here; the SAM classes import torch, segment_anything and transformers only when
used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entitwist.entities.base import MaskGenerator, check_image, contrast_stretch, resize_image
from entitwist.entities.labelmap import MAX_ENTITIES, check_max_entities, paint_label_map
from entitwist.entities.sam import HfSamGenerator, SamGenerator
from entitwist.errors import ConfigError
from entitwist.imaging import resize_nearest

DEFAULT_GENERATOR = "felzenszwalb"


class _PartitionGenerator(MaskGenerator):
    """A generator whose masks partition the image (one integer label per pixel)."""

    def segment(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Integer segment ids (h, w) of ``image`` at working resolution, 0..n-1."""
        raise NotImplementedError

    def work_image(self, image: np.ndarray) -> np.ndarray:
        """The copy the segmentation runs on: longest side ``work_size``, contrast-stretched."""
        work = int(self.params["work_size"])
        h, w = image.shape[:2]
        if work > 0 and max(h, w) > work:
            s = work / max(h, w)
            image = resize_image(image, (max(1, round(h * s)), max(1, round(w * s))))
        return contrast_stretch(image) if self.params["stretch"] else image

    def _full_segments(self, image: np.ndarray) -> np.ndarray:
        small = self.segment(self.work_image(image))  # (h, w) int
        _, inverse = np.unique(small, return_inverse=True)  # contiguous ids 0..n-1
        small = inverse.reshape(small.shape).astype(np.int32)
        return resize_nearest(small, image.shape[:2])  # (H, W) int32

    def generate(self, image: np.ndarray) -> list[np.ndarray]:
        seg = self._full_segments(image)  # (H, W)
        return [seg == i for i in range(int(seg.max()) + 1)]

    def label_map(self, image: np.ndarray, max_entities: int = 40) -> tuple[np.ndarray, int]:
        """Fast ``paint_label_map(self(image), max_entities)`` for a partition.

        Returns ``(labels uint8 (H, W), number of masks before the K cap)``.
        """
        k = check_max_entities(max_entities)
        seg = self._full_segments(check_image(image))  # (H, W)
        areas = np.bincount(seg.ravel())  # (n,) masks in id order, as generate() lists them
        order = np.argsort(-areas, kind="stable")[:k]  # largest first, ties by id
        order = order[areas[order] > 0]
        lut = np.zeros(len(areas), dtype=np.uint8)
        lut[order] = np.arange(1, len(order) + 1, dtype=np.uint8)
        return lut[seg], int(len(areas))


class FelzenszwalbGenerator(_PartitionGenerator):
    """Felzenszwalb-Huttenlocher graph segmentation (scikit-image), weight-free.

    Parameters (all at the working resolution, longest side ``work_size``; 0 = full size):
    ``scale`` (larger = bigger segments), ``sigma`` (pre-smoothing), ``min_size`` (pixels),
    ``stretch`` (2-98 percentile contrast stretch first). The defaults, tuned on 47 real
    512x512 aerial crops (DOTA/iSAID, LoveDA, Potsdam, Vaihingen, SpaceNet), give about 65
    segments per image (min 23, max 107): fields, roofs, roads, water, tree stands,
    shadows; the 40 largest cover ~94% of the pixels. About 60 ms of CPU per 512x512 image.
    """

    name = "felzenszwalb"
    DEFAULTS = {"scale": 400.0, "sigma": 0.8, "min_size": 80, "work_size": 256, "stretch": True}

    def segment(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        p = self.params
        return felzenszwalb(image, scale=p["scale"], sigma=p["sigma"], min_size=p["min_size"])


class FelzenszwalbRagGenerator(FelzenszwalbGenerator):
    """Felzenszwalb over-segmentation, then a region-adjacency-graph merge, weight-free.

    The image is first cut finely (a small ``scale``, so that a small object with its own
    colour, a car on a road, is never absorbed by a large neighbour); then adjacent
    segments whose mean colours in the working image differ by less than ``merge`` (0-255
    RGB, Euclidean) are merged (scikit-image's ``graph.rag_mean_color`` + ``cut_threshold``, computed on arrays by
    :func:`merge_similar_neighbours`),
    so uniform background pieces join again and the K cap keeps the objects. Other
    parameters as for :class:`FelzenszwalbGenerator`.

    The defaults were chosen on the demo's synthetic scenes (128 px; 80 test images, 640
    referring expressions): an entity vote (each segment of the K = 40 map set to the
    ground truth's majority) reaches 94.8 mIoU against the referred masks, against 68.4 for
    ``felzenszwalb`` with its defaults, which absorbs small vehicles into roads; ~64
    segments before the K cap, ~25 ms per image (~100 ms with scikit-image's graph). Scripts:
    ``benchmarks/entity_vote.py``. Not for real photos with these defaults: on the 512 px
    crops of ``rrsis-real-mini`` it leaves 500-870 pieces (the cap keeps the 40 largest),
    costs ~360 ms per image and its vote ceiling (31-38) is below ``felzenszwalb``'s (37-40).
    """

    name = "felzenszwalb-rag"
    DEFAULTS = {
        "scale": 30.0,
        "sigma": 0.5,
        "min_size": 5,
        "work_size": 256,
        "stretch": True,
        "merge": 40.0,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["merge"] <= 0:
            raise ConfigError(
                f"parameter merge={self.params['merge']} of entity generator {self.name!r} must "
                "be > 0 (a mean-colour distance, 0-255); use --generator felzenszwalb for no merge"
            )

    def segment(self, image: np.ndarray) -> np.ndarray:
        seg = super().segment(image)  # (h, w) fine segments
        if seg.max() == 0:
            return seg
        return merge_similar_neighbours(image, seg, self.params["merge"])


def merge_similar_neighbours(image: np.ndarray, labels: np.ndarray, thresh: float) -> np.ndarray:
    """Merge 8-adjacent segments whose mean colours differ by less than ``thresh``.

    The array version of scikit-image's ``graph.cut_threshold(labels,
    graph.rag_mean_color(image, labels), thresh)``: the same merged segments with the same
    ids, in ~2 % of its time (the graph version visits every pixel in Python). Edges join
    labels that touch in a 3x3 window; an edge's weight is the Euclidean distance of the two
    mean colours (sums in float64, in raster order, as scikit-image accumulates them), and
    edges with weight < ``thresh`` are kept. Merged segments are numbered in the order in
    which scikit-image's graph first meets one of their pieces: raster order of the
    window's centre pixel, then window position, the centre's label before its neighbour's.

    Args:
        image: (h, w, C) colours the means are taken of.
        labels: (h, w) integer segment ids 0..n-1 (every id present).
        thresh: merge threshold on the mean-colour distance.

    Returns:
        (h, w) int64 merged ids 0..m-1.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h, w = labels.shape
    seg = labels.astype(np.int64)
    n = int(seg.max()) + 1
    colours = image.reshape(h * w, -1).astype(np.float64)
    counts = np.bincount(seg.ravel(), minlength=n).astype(np.float64)
    sums = np.stack(
        [
            np.bincount(seg.ravel(), weights=colours[:, c], minlength=n)
            for c in range(colours.shape[1])
        ],
        axis=1,
    )
    means = sums / counts[:, None]  # (n, C)
    padded = np.pad(seg, 1, mode="edge")  # scipy.ndimage mode "nearest"
    pixel = np.arange(h * w, dtype=np.int64).reshape(h, w)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    pairs = []
    for o, (dy, dx) in enumerate((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
        other = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        differ = other != seg
        centre, neighbour = seg[differ], other[differ]
        event = (pixel[differ] * 9 + o) * 2  # the order in which the graph sees the pair
        np.minimum.at(first, centre, event)
        np.minimum.at(first, neighbour, event + 1)
        pairs.append(np.minimum(centre, neighbour) * n + np.maximum(centre, neighbour))
    code = np.unique(np.concatenate(pairs))  # undirected edges, each once
    edges = np.stack([code // n, code % n], axis=1)  # (E, 2)
    weight = np.linalg.norm(means[edges[:, 0]] - means[edges[:, 1]], axis=1)
    keep = edges[weight < thresh]
    graph = coo_matrix((np.ones(len(keep)), (keep[:, 0], keep[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    seen = np.full(int(component.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(seen, component, first)
    rank = np.empty_like(seen)
    rank[np.argsort(seen, kind="stable")] = np.arange(len(seen))
    return rank[component][seg]


class SlicGenerator(_PartitionGenerator):
    """SLIC superpixels (scikit-image), weight-free; ``n_segments`` approximate count.

    ``work_size`` and ``stretch`` as for :class:`FelzenszwalbGenerator`.
    """

    name = "slic"
    DEFAULTS = {
        "n_segments": 60,
        "compactness": 10.0,
        "sigma": 1.0,
        "work_size": 256,
        "stretch": True,
    }

    def segment(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import slic

        p = self.params
        return slic(
            image,
            n_segments=p["n_segments"],
            compactness=p["compactness"],
            sigma=p["sigma"],
            start_label=0,
            channel_axis=-1,
        )


GENERATORS: dict[str, type[MaskGenerator]] = {
    "felzenszwalb": FelzenszwalbGenerator,
    "felzenszwalb-rag": FelzenszwalbRagGenerator,
    "slic": SlicGenerator,
    "sam": SamGenerator,
    "hf-sam": HfSamGenerator,
}


def list_generators() -> list[str]:
    """Names accepted by :func:`get_generator`."""
    return list(GENERATORS)


def get_generator(name: str = DEFAULT_GENERATOR, **params: Any) -> MaskGenerator:
    """Build the entity-mask generator ``name`` with ``params`` (see the module docstring).

    Raises:
        ConfigError: unknown name or parameter, or a parameter of the wrong type.
        CheckpointError: a SAM checkpoint that is missing.
    """
    if name not in GENERATORS:
        raise ConfigError(
            f"unknown entity generator {name!r}; choose one of {', '.join(GENERATORS)}"
        )
    return GENERATORS[name](**params)


def compute_entities_with_count(
    image: np.ndarray, generator: Any = None, max_entities: int = MAX_ENTITIES
) -> tuple[np.ndarray, int]:
    """Like :func:`compute_entities`, also returning how many masks the generator made."""
    k = check_max_entities(max_entities)
    image = check_image(image)
    if generator is None:
        generator = _default_generator()
    elif isinstance(generator, str):
        generator = get_generator(generator)
    fast = getattr(generator, "label_map", None)
    if fast is not None:
        return fast(image, k)
    masks = generator(image)
    return paint_label_map(masks, k, shape=image.shape[:2]), len(masks)


def compute_entities(
    image: np.ndarray, generator: Any = None, max_entities: int = MAX_ENTITIES
) -> np.ndarray:
    """Entity label map of one image.

    Args:
        image: uint8 (H, W, 3) RGB.
        generator: ``None`` (the default weight-free ``felzenszwalb``), a generator name for
            :func:`entitwist.entities.get_generator`, or a generator object.
        max_entities: K (1..255).

    Returns:
        uint8 (H, W) label map, see :func:`paint_label_map`.
    """
    return compute_entities_with_count(image, generator, max_entities)[0]


_DEFAULT: list[MaskGenerator] = []


def _default_generator() -> MaskGenerator:
    if not _DEFAULT:
        _DEFAULT.append(get_generator())
    return _DEFAULT[0]
