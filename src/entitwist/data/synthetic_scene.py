"""Synthetic aerial scenes: land cover, water, roads, buildings, vehicles and storage tanks.

:func:`generate_scene` paints one top-down scene from a seed with numpy and scikit-image
(no download): Voronoi fields with crop stripes, grass and bare soil, hedges between them,
an optional river, one or two roads, ponds, buildings with gable or flat roofs and cast
shadows, cars and trucks on the roads and in yards, storage tanks with a rim, and trees.
Every referable object gets an id in the instance map; the list of objects carries its
category, colour word, bounding box, area and centroid, which is all the expression
generator (:mod:`entitwist.data.synthetic_expressions`) needs besides the road and river masks.

Sizes are given for a 512-pixel scene and scale with the image (``s = size / 512``), so a
car stays about 6% of the image long at any size: at a 128-pixel network input it still
covers several pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from entitwist.data.scene_painter import ScenePainter
from entitwist.errors import InputError

MIN_SIZE = 32


@dataclass(frozen=True)
class SceneObject:
    """One referable object of a scene.

    Attributes:
        id: its value in :attr:`Scene.instances` (1..n).
        category: one of :data:`~entitwist.data.scene_painter.CATEGORIES`.
        colour: one of :data:`~entitwist.data.scene_painter.COLOURS`, or None (ponds).
        bbox: (y0, x0, y1, x1), end-exclusive pixel box.
        area: pixels in its mask.
        centroid: (y, x) mean pixel position.
    """

    id: int
    category: str
    colour: str | None
    bbox: tuple[int, int, int, int]
    area: int
    centroid: tuple[float, float]


@dataclass
class Scene:
    """A painted scene.

    Attributes:
        image: uint8 (H, W, 3).
        instances: int32 (H, W); 0 = no object, k = object with id k.
        objects: the referable objects, ids 1..n in order.
        road_mask: bool (H, W), road surface.
        river_mask: bool (H, W), river water (ponds are objects, not in this mask).
        seed: the seed it was drawn from.
    """

    image: np.ndarray
    instances: np.ndarray
    objects: list[SceneObject]
    road_mask: np.ndarray
    river_mask: np.ndarray
    seed: int = 0
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = int(self.image.shape[0])

    def mask(self, ids: tuple[int, ...] | list[int]) -> np.ndarray:
        """bool (H, W): union of the masks of the objects ``ids``."""
        return np.isin(self.instances, np.asarray(list(ids), dtype=np.int32))

    def of(self, category: str) -> list[SceneObject]:
        """The objects of one category."""
        return [o for o in self.objects if o.category == category]


def _place(fn, tries: int, *args) -> bool:  # noqa: ANN001
    return any(fn(*args) for _ in range(tries))


def _fewer(n: int, density: float, least: int = 0) -> int:
    """``n`` objects thinned to ``density`` (1.0 keeps ``n``), never below ``least``."""
    return n if density >= 1.0 else max(least, int(round(n * density)))


def generate_scene(
    seed: int, size: int = 512, *, object_scale: float = 1.0, density: float = 1.0
) -> Scene:
    """Paint one aerial-looking scene, deterministically from ``seed``.

    Args:
        seed: any non-negative integer; the same seed and size give the same bytes.
        size: the image side in pixels (square), at least 32; objects scale with it.
        object_scale: multiplies object and road sizes (1.0: a car is ~6% of the image
            side; 1.5 makes every object larger and fewer of them fit).
        density: in (0, 1]; the share of the usual number of objects and trees that is
            drawn (0.5: about half as many of each kind, at least one building, one tank and
            two cars). Uncluttered scenes make an easier task (the offline demo uses them).

    Returns:
        :class:`Scene` with ``image`` uint8 (size, size, 3), ``instances`` int32
        (size, size) and the object list (3-5 buildings, 3-7 cars, 1-3 trucks, 2-4 storage
        tanks, 0-2 ponds, fewer where they do not fit).
    """
    if int(size) < MIN_SIZE:
        raise InputError(
            f"synthetic scene size {size} is too small; use a size of at least {MIN_SIZE}"
        )
    if int(seed) < 0:
        raise InputError(f"synthetic scene seed {seed} is negative; use a seed >= 0")
    if not 0.5 <= float(object_scale) <= 2.5:
        raise InputError(f"object_scale {object_scale} is out of range; use a value in [0.5, 2.5]")
    if not 0.0 < float(density) <= 1.0:
        raise InputError(f"density {density} is out of range; use a value in (0, 1]")
    d = float(density)
    rng = np.random.default_rng(int(seed))
    p = ScenePainter(rng, int(size), float(object_scale))
    p.land_cover()
    if rng.random() < 0.35:
        p.river_band()
    for _ in range(1 if rng.random() < 0.45 else 2):
        p.road_line()
    for _ in range(_fewer(int(rng.choice([0, 1, 2], p=[0.15, 0.5, 0.35])), d)):
        _place(p.pond, 30)
    for i in range(_fewer(int(rng.integers(3, 6)), d, 1)):
        _place(p.building, 30, i == 0 or rng.random() < 0.3)
    for i in range(_fewer(int(rng.integers(2, 5)), d, 1)):
        _place(p.tank, 30, i > 0 and rng.random() < 0.6)
    for i in range(_fewer(int(rng.integers(3, 8)), d, 2)):
        where = (
            "pond" if i == 0 and rng.random() < 0.5 else ("road" if rng.random() < 0.5 else "land")
        )
        _place(p.vehicle, 30, "car", where)
    for _ in range(_fewer(int(rng.integers(1, 4)), d)):
        _place(p.vehicle, 30, "truck", "road" if rng.random() < 0.5 else "land")
    p.trees(_fewer(int(rng.integers(8, 30)), d))
    # sensor: slight global tint and grain
    img = p.img * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(img, 0, 255, out=img).astype(np.uint8)
    objects = []
    for k, (cat, colour, rr, cc) in enumerate(p.objects, start=1):
        objects.append(
            SceneObject(
                id=k,
                category=cat,
                colour=colour,
                bbox=(int(rr.min()), int(cc.min()), int(rr.max()) + 1, int(cc.max()) + 1),
                area=int(rr.size),
                centroid=(float(rr.mean()), float(cc.mean())),
            )
        )
    return Scene(
        image=image,
        instances=p.inst,
        objects=objects,
        road_mask=p.road,
        river_mask=p.river,
        seed=int(seed),
    )
