"""Referring expressions for a synthetic scene: candidates, checks and wording.

The scenes come from :func:`entitwist.data.synthetic_scene.generate_scene`. For each scene
:func:`generate_expressions` lists every referring expression the grammar below can say
*unambiguously* about the scene's objects and picks a varied subset, spread over expression
types and over different targets:

========== ====================================================================
type       examples
========== ====================================================================
category   "the red car", "the truck that is white", "the only pond"
position   "the storage tank at the top right", "the car in the middle"
extreme    "the leftmost vehicle", "the topmost building", "the lowest red car"
size       "the largest tank", "the smallest building"
relation   "the car next to the pond", "the building beside the road",
           "the truck on the road", "the car not on the road", "the tank near the river"
group      "all the tanks", "all the red cars", "every building"
========== ====================================================================

Each expression picks exactly its target set, with margins so that it is clear to a human
as well (an extreme beats the runner-up by :data:`EXTREME_GAP` of the image, the largest is
:data:`SIZE_RATIO` times the next, a position lies :data:`POS_MARGIN` inside its ninth of
the image and every other candidate as far outside it, "next to" means within :data:`NEAR`
while every other candidate is beyond :data:`FAR`). All distances are fractions of the
image side, so the rules hold at any size.

The dataset writer that uses them is :func:`entitwist.data.synthetic.write_dataset`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from entitwist.data.scene_painter import COLOURS
from entitwist.data.synthetic_scene import Scene, SceneObject
from entitwist.errors import InputError

__all__ = [
    "EXPRESSION_TYPES",
    "Referral",
    "generate_expressions",
]

EXPRESSION_TYPES: tuple[str, ...] = ("category", "position", "extreme", "size", "relation", "group")
NEAR = 0.04  # "next to": at most this far (fraction of the image side) ...
FAR = 0.10  # ... while every other candidate is at least this far
POS_MARGIN = 0.04  # position cells: distance inside the target's cell / outside for others
EXTREME_GAP = 0.06  # leftmost etc.: lead over the runner-up
SIZE_RATIO = 1.35  # largest / smallest: area ratio to the runner-up
ON_ROAD, OFF_ROAD = 0.5, 0.05  # fraction of a vehicle's pixels on the road surface

# noun forms: category -> [(singular, plural), ...]; "vehicle" is car + truck
NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "car": (("car", "cars"),),
    "truck": (("truck", "trucks"),),
    "vehicle": (("vehicle", "vehicles"),),
    "building": (("building", "buildings"),),
    "storage tank": (("storage tank", "storage tanks"), ("tank", "tanks")),
    "pond": (("pond", "ponds"),),
}
COLOURED = ("car", "truck", "vehicle", "building", "storage tank")
# position name -> region (rows, cols) in thirds of the image: a corner is one ninth, a side
# ("on the left") the whole third, the center the middle ninth
POSITIONS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "top left": ((0, 1), (0, 1)),
    "top right": ((0, 1), (2, 3)),
    "bottom left": ((2, 3), (0, 1)),
    "bottom right": ((2, 3), (2, 3)),
    "top": ((0, 1), (0, 3)),
    "bottom": ((2, 3), (0, 3)),
    "left": ((0, 3), (0, 1)),
    "right": ((0, 3), (2, 3)),
    "center": ((1, 2), (1, 2)),
}

Cls = tuple[str | None, str]  # (colour or None, category)


@dataclass
class Referral:
    """One referring expression and what it refers to.

    Attributes:
        expression: the sentence, lower case.
        expression_type: one of :data:`EXPRESSION_TYPES`.
        target_ids: sorted ids of the target objects (:attr:`Scene.instances` values).
        mask: bool (H, W), union of the targets' masks.
        category: the noun's category ("car", ..., or "vehicle").
    """

    expression: str
    expression_type: str
    target_ids: tuple[int, ...]
    mask: np.ndarray
    category: str


@dataclass
class _Candidate:
    kind: str
    cls: Cls
    targets: tuple[int, ...]
    detail: str = ""  # direction, "largest", position name, landmark
    weight: float = 1.0  # < 1 for redundant phrasings (a colour where none is needed)
    extra: dict = field(default_factory=dict)


def _members(objs: list[SceneObject], cls: Cls) -> list[SceneObject]:
    colour, cat = cls
    cats = ("car", "truck") if cat == "vehicle" else (cat,)
    return [o for o in objs if o.category in cats and (colour is None or o.colour == colour)]


def _classes(objs: list[SceneObject]) -> tuple[list[Cls], list[Cls]]:
    """(plain classes present, colour classes present)."""
    cats = sorted({o.category for o in objs})
    if "car" in cats and "truck" in cats:
        cats.append("vehicle")
    plain: list[Cls] = [(None, c) for c in cats]
    coloured: list[Cls] = [
        (col, c) for c in cats if c in COLOURED for col in COLOURS if _members(objs, (col, c))
    ]
    return plain, coloured


def _crop(a: np.ndarray, o: SceneObject) -> np.ndarray:
    y0, x0, y1, x1 = o.bbox
    return a[y0:y1, x0:x1]


def _facts(scene: Scene) -> dict[str, dict[int, float]]:
    """Per object: distance (px) to the nearest pond / road / river, fraction on the road."""
    from scipy import ndimage

    ids = [o.id for o in scene.objects]
    out: dict[str, dict[int, float]] = {}
    pond_ids = [o.id for o in scene.objects if o.category == "pond"]
    for name, mask in (
        ("pond", scene.mask(pond_ids)),
        ("road", scene.road_mask),
        ("river", scene.river_mask),
    ):
        if not ids or not mask.any():
            out[name] = {i: float("inf") for i in ids}
            continue
        edt = ndimage.distance_transform_edt(~mask)
        out[name] = {
            o.id: float(_crop(edt, o)[_crop(scene.instances, o) == o.id].min())
            for o in scene.objects
        }
    road = scene.road_mask
    out["on_road"] = {
        o.id: float(_crop(road, o)[_crop(scene.instances, o) == o.id].mean()) for o in scene.objects
    }
    return out


def _outside(v: float, lo: float, hi: float) -> float:
    """Distance of v outside [lo, hi] (0 inside)."""
    return max(lo - v, v - hi, 0.0)


def _candidates(scene: Scene) -> list[_Candidate]:
    objs, n = scene.objects, scene.size
    plain, coloured = _classes(objs)
    facts = _facts(scene)
    out: list[_Candidate] = []
    single_cat = {cat for _, cat in plain if len(_members(objs, (None, cat))) == 1}
    for cls in plain + coloured:
        mem = _members(objs, cls)
        ids = tuple(sorted(o.id for o in mem))
        colour, cat = cls
        # category (and colour)
        if len(mem) == 1:
            redundant = colour is not None and cat in single_cat
            out.append(_Candidate("category", cls, ids, weight=0.3 if redundant else 1.0))
        if len(mem) >= 2:
            out.append(_Candidate("group", cls, ids, weight=1.0 if colour is None else 0.8))
        # position: the only member inside a region (by a margin), the others outside it
        m = POS_MARGIN * n
        for name, ((r0, r1), (c0, c1)) in POSITIONS.items():
            y0, y1, x0, x1 = r0 * n / 3, r1 * n / 3, c0 * n / 3, c1 * n / 3
            # a margin only on the region's inner edges (the image border needs none)
            lo_y, hi_y = (y0 + m if r0 > 0 else 0), (y1 - m if r1 < 3 else n)
            lo_x, hi_x = (x0 + m if c0 > 0 else 0), (x1 - m if c1 < 3 else n)
            inside = [
                o for o in mem if lo_y <= o.centroid[0] <= hi_y and lo_x <= o.centroid[1] <= hi_x
            ]
            if len(inside) != 1:
                continue
            out_d = [
                max(_outside(p.centroid[0], y0, y1), _outside(p.centroid[1], x0, x1)) for p in mem
            ]
            if all(d >= m for p, d in zip(mem, out_d) if p is not inside[0]):
                w = (1.0 if len(mem) >= 2 else 0.4) * (0.7 if colour else 1.0)
                out.append(_Candidate("position", cls, (inside[0].id,), name, weight=w))
        if len(mem) >= 2:
            # extremes along each axis
            for detail, key in (
                ("left", lambda o: o.centroid[1]),
                ("right", lambda o: -o.centroid[1]),
                ("top", lambda o: o.centroid[0]),
                ("bottom", lambda o: -o.centroid[0]),
            ):
                srt = sorted(mem, key=key)
                if key(srt[1]) - key(srt[0]) >= EXTREME_GAP * n:
                    out.append(
                        _Candidate(
                            "extreme", cls, (srt[0].id,), detail, weight=0.8 if colour else 1.0
                        )
                    )
            srt = sorted(mem, key=lambda o: o.area)
            if srt[-1].area >= SIZE_RATIO * srt[-2].area:
                out.append(
                    _Candidate("size", cls, (srt[-1].id,), "largest", weight=0.8 if colour else 1.0)
                )
            if srt[1].area >= SIZE_RATIO * srt[0].area:
                out.append(
                    _Candidate("size", cls, (srt[0].id,), "smallest", weight=0.8 if colour else 1.0)
                )
        # relations (plain classes only)
        if colour is None:
            rels: list[tuple[str, list[SceneObject]]] = []
            near, far = NEAR * n, FAR * n
            for land in ("pond", "river") + (
                ("road",) if cat in ("building", "storage tank", "pond") else ()
            ):
                if cat == "pond" and land == "pond":
                    continue
                d = facts[land]
                close = [o for o in mem if d[o.id] <= near]
                if len(close) == 1 and all(d[o.id] >= far for o in mem if o is not close[0]):
                    rels.append((land, close))
            if cat in ("car", "truck", "vehicle"):
                f = facts["on_road"]
                on = [o for o in mem if f[o.id] >= ON_ROAD]
                off = [o for o in mem if f[o.id] <= OFF_ROAD]
                if len(on) == 1 and len(off) == len(mem) - 1:
                    rels.append(("on road", on))
                if len(off) == 1 and len(on) == len(mem) - 1 and len(mem) >= 2:
                    rels.append(("off road", off))
            for land, tgt in rels:
                extra = {"ponds": len(scene.of("pond"))}
                out.append(_Candidate("relation", cls, (tgt[0].id,), land, extra=extra))
    return out


def _noun(rng: np.random.Generator, cat: str, plural: bool = False) -> str:
    forms = NOUNS[cat]
    sing, plur = forms[int(rng.integers(len(forms)))]
    return plur if plural else sing


def _render(c: _Candidate, rng: np.random.Generator) -> str:
    """A sentence for a candidate; the templates vary the wording, never the meaning."""

    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    colour, cat = c.cls
    n = _noun(rng, cat)
    np_ = f"{colour} {n}" if colour else n
    if c.kind == "category":
        if colour:
            return pick([f"the {np_}", f"the {n} that is {colour}", f"the {np_} in the image"])
        return pick([f"the {n}", f"the only {n}", f"the {n} in the image"])
    if c.kind == "group":
        pl = _noun(rng, cat, plural=True)
        np_pl = f"{colour} {pl}" if colour else pl
        return pick([f"all the {np_pl}", f"all {np_pl}", f"every {np_}", f"all of the {np_pl}"])
    if c.kind == "position":
        p = c.detail
        if " " in p:  # corner
            return pick([f"the {np_} at the {p}", f"the {np_} in the {p} corner", f"the {p} {np_}"])
        if p == "center":
            return pick([f"the {np_} in the center", f"the {np_} in the middle"])
        if p in ("top", "bottom"):
            return pick([f"the {np_} at the {p}", f"the {np_} at the {p} of the image"])
        return pick([f"the {np_} on the {p}", f"the {np_} on the {p} side"])
    if c.kind == "extreme":
        words = {
            "left": ["leftmost"],
            "right": ["rightmost"],
            "top": ["topmost", "uppermost"],
            "bottom": ["lowest"],
        }[c.detail]
        return pick([f"the {w} {np_}" for w in words] + [f"the {np_} farthest to the {c.detail}"])
    if c.kind == "size":
        words = ["largest", "biggest"] if c.detail == "largest" else ["smallest"]
        return pick([f"the {w} {np_}" for w in words])
    # relation
    if c.detail == "pond":
        art = "a" if c.extra.get("ponds", 1) > 1 else "the"
        return pick(
            [
                f"the {np_} next to {art} pond",
                f"the {np_} near {art} pond",
                f"the {np_} beside {art} pond",
            ]
        )
    if c.detail == "river":
        return pick(
            [f"the {np_} next to the river", f"the {np_} near the river", f"the {np_} by the river"]
        )
    if c.detail == "road":
        return pick(
            [
                f"the {np_} beside the road",
                f"the {np_} next to the road",
                f"the {np_} along the road",
            ]
        )
    if c.detail == "on road":
        return pick([f"the {np_} on the road", f"the {np_} that is on the road"])
    return pick([f"the {np_} not on the road", f"the {np_} that is not on the road"])


def generate_expressions(
    scene: Scene,
    rng: np.random.Generator,
    n: int = 8,
    *,
    types: tuple[str, ...] | list[str] | None = None,
) -> list[Referral]:
    """Up to ``n`` verified, distinct referring expressions for ``scene``.

    Types are taken in turn (in a random order, so each gets about the same share where the
    scene allows it), and within a type a target not yet used is preferred, so the sentences
    of a scene refer to several different objects.

    Args:
        scene: from :func:`~entitwist.data.synthetic_scene.generate_scene`.
        rng: the generator that chooses candidates and wordings.
        n: how many expressions at most.
        types: restrict to these :data:`EXPRESSION_TYPES` (default all).

    Returns:
        list of :class:`Referral`, each with a bool (H, W) mask.
    """
    types = tuple(types or EXPRESSION_TYPES)
    unknown = sorted(set(types) - set(EXPRESSION_TYPES))
    if unknown:
        raise InputError(
            f"unknown expression type(s) {unknown}; choose from {', '.join(EXPRESSION_TYPES)}"
        )
    pool: dict[str, list[_Candidate]] = {t: [] for t in types}
    for c in _candidates(scene):
        if c.kind in pool:
            pool[c.kind].append(c)
    for t in pool:  # random order, heavier weights first on average
        keys = rng.random(len(pool[t])) ** (1.0 / np.array([c.weight for c in pool[t]] or [1.0]))
        pool[t] = [pool[t][i] for i in np.argsort(-keys, kind="stable")]
    order = [t for t in types if pool[t]]
    order = [order[i] for i in rng.permutation(len(order))]
    used: Counter[tuple[int, ...]] = Counter()
    texts: set[str] = set()
    out: list[Referral] = []
    while len(out) < n and any(pool[t] for t in order):
        for t in order:
            if len(out) >= n or not pool[t]:
                continue
            i = min(
                range(len(pool[t])), key=lambda j: used[pool[t][j].targets]
            )  # least-used target first
            c = pool[t].pop(i)
            text = _render(c, rng)
            if text in texts:
                continue
            texts.add(text)
            used[c.targets] += 1
            out.append(Referral(text, c.kind, c.targets, scene.mask(c.targets), c.cls[1]))
    return out
