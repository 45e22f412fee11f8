"""The painter of synthetic aerial scenes: palettes, land cover, river, roads, ponds,
buildings, storage tanks, vehicles and trees.

:class:`ScenePainter` holds the image, the instance map and the occupancy of one scene
while :func:`entitwist.data.synthetic_scene.generate_scene` lays it out; each object method
tries one placement and returns whether it fit. Sizes are given for a 512-pixel scene and
scale with the image (``s = size / 512``).
"""

from __future__ import annotations

import math

import numpy as np
from skimage.draw import disk, polygon

__all__ = ["CATEGORIES", "COLOURS", "ScenePainter"]

#: Referable categories ("vehicle" groups car and truck in the expressions).
CATEGORIES: tuple[str, ...] = ("building", "car", "truck", "storage tank", "pond")
#: Colour words used in expressions.
COLOURS: tuple[str, ...] = ("red", "white", "blue", "yellow", "black")

# Base RGB per colour word and surface (cars are glossy, roofs and tanks duller).
_VEHICLE_RGB = {
    "red": (196, 34, 34),
    "white": (236, 236, 232),
    "blue": (38, 72, 196),
    "yellow": (232, 200, 36),
    "black": (26, 26, 30),
}
_ROOF_RGB = {
    "red": (172, 62, 46),
    "white": (224, 222, 214),
    "blue": (64, 96, 170),
    "black": (56, 56, 62),
}
_TANK_RGB = {
    "white": (232, 232, 226),
    "yellow": (222, 196, 70),
    "red": (180, 60, 50),
    "blue": (80, 120, 190),
}
# Land cover: (base RGB, texture amplitude, stripes?)
_COVER = (
    ((92, 128, 58), 10.0, True),  # green crop
    ((152, 150, 78), 10.0, True),  # ripening crop
    ((186, 166, 104), 9.0, True),  # stubble
    ((104, 138, 72), 14.0, False),  # grass
    ((148, 116, 86), 12.0, False),  # bare soil
    ((172, 160, 122), 10.0, False),  # dry grass
)
_COVER_P = np.array([0.22, 0.14, 0.12, 0.24, 0.16, 0.12])


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """float32 (h, w) smooth value noise, about unit variance, features ``cell`` px wide."""
    from PIL import Image

    gh, gw = max(2, int(h / max(cell, 1.0)) + 2), max(2, int(w / max(cell, 1.0)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(
        Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32
    )


def _rect(
    cy: float, cx: float, length: float, width: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Corner (rows, cols) of a rectangle centred at (cy, cx), ``length`` along ``angle``."""
    u = np.array([math.cos(angle), math.sin(angle)])  # (x, y) along the length
    v = np.array([-u[1], u[0]])
    pts = [
        (sa * length / 2) * u + (sb * width / 2) * v
        for sa, sb in ((1, 1), (1, -1), (-1, -1), (-1, 1))
    ]
    xs = np.array([cx + p[0] for p in pts])
    ys = np.array([cy + p[1] for p in pts])
    return ys, xs


def _hull(ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convex hull (monotone chain) of points, as (rows, cols) in order."""
    pts = sorted(set(zip(xs.tolist(), ys.tolist())))
    if len(pts) < 3:
        return ys, xs

    def cross(o, a, b):  # noqa: ANN001, ANN202
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    h = lower[:-1] + upper[:-1]
    return np.array([p[1] for p in h]), np.array([p[0] for p in h])


class ScenePainter:
    """Mutable state while painting one scene (image, masks, occupancy, objects)."""

    def __init__(self, rng: np.random.Generator, size: int, object_scale: float = 1.0) -> None:
        self.rng = rng
        self.n = size
        self.s = size / 512.0
        self.k = object_scale  # objects (and roads, so that cars fit their lanes) only
        self.img = np.zeros((size, size, 3), np.float32)
        self.inst = np.zeros((size, size), np.int32)
        self.blocked = np.zeros((size, size), bool)  # objects and their margins
        self.terrain = np.zeros((size, size), bool)  # road, river and banks
        self.road = np.zeros((size, size), bool)
        self.river = np.zeros((size, size), bool)
        self.roads: list[tuple[float, float, float, float]] = []  # (py, px, angle, width)
        self.objects: list[tuple[str, str | None, np.ndarray, np.ndarray]] = []
        ang = rng.uniform(0, 2 * math.pi)
        self.sun = (math.sin(ang), math.cos(ang))  # shadow direction (dy, dx)
        yy, xx = np.mgrid[0:size, 0:size]
        self.yy, self.xx = yy.astype(np.float32), xx.astype(np.float32)

    # --- helpers -------------------------------------------------------------------------
    def px(self, v: float, lo: float = 1.0) -> float:
        """``v`` pixels of a 512 scene at this size, at least ``lo``."""
        return max(lo, v * self.s)

    def op(self, v: float, lo: float = 1.0) -> float:
        """Like :meth:`px` for object and road dimensions (times the object scale)."""
        return max(lo, v * self.s * self.k)

    def free(self, rr: np.ndarray, cc: np.ndarray, *, allow_terrain: bool = False) -> bool:
        if rr.size == 0:
            return False
        bad = self.blocked[rr, cc] if allow_terrain else self.blocked[rr, cc] | self.terrain[rr, cc]
        return not bad.any()

    def inside(self, ys: np.ndarray, xs: np.ndarray, margin: float = 1.0) -> bool:
        hi = self.n - 1 - margin
        return bool(ys.min() >= margin and xs.min() >= margin and ys.max() <= hi and xs.max() <= hi)

    def shade(self, rr: np.ndarray, cc: np.ndarray, factor: float) -> None:
        keep = self.inst[rr, cc] == 0
        self.img[rr[keep], cc[keep]] *= factor

    def add(
        self, category: str, colour: str | None, rr: np.ndarray, cc: np.ndarray, margin: float
    ) -> None:
        self.objects.append((category, colour, rr, cc))
        self.inst[rr, cc] = len(self.objects)
        m = int(math.ceil(margin))
        y0, y1 = max(0, rr.min() - m), min(self.n, rr.max() + m + 1)
        x0, x1 = max(0, cc.min() - m), min(self.n, cc.max() + m + 1)
        self.blocked[y0:y1, x0:x1] = True

    def jitter(self, rgb: tuple[int, int, int], amount: float = 12.0) -> np.ndarray:
        return np.asarray(rgb, np.float32) + self.rng.uniform(-amount, amount, 3).astype(np.float32)

    # --- background ----------------------------------------------------------------------
    def land_cover(self) -> None:
        rng, n = self.rng, self.n
        k = int(rng.integers(5, 10))
        sy, sx = rng.uniform(0, n, k).astype(np.float32), rng.uniform(0, n, k).astype(np.float32)
        best = np.full((n, n), np.inf, np.float32)
        lab = np.zeros((n, n), np.int32)
        for i in range(k):
            d = (self.yy - sy[i]) ** 2 + (self.xx - sx[i]) ** 2
            closer = d < best
            best[closer] = d[closer]
            lab[closer] = i
        kinds = rng.choice(len(_COVER), size=k, p=_COVER_P)
        base = np.array([_COVER[t][0] for t in kinds], np.float32) + rng.uniform(
            -10, 10, (k, 3)
        ).astype(np.float32)
        amp = np.array([_COVER[t][1] for t in kinds], np.float32)
        striped = np.array([_COVER[t][2] for t in kinds], np.float32)
        theta = rng.uniform(0, math.pi, k).astype(np.float32)
        period = np.maximum(2.5, rng.uniform(6, 11, k) * self.s).astype(np.float32)
        img = base[lab]  # (H, W, 3)
        tex = (
            _noise(rng, n, n, self.px(5, 2)) * amp[lab] * 0.6
            + _noise(rng, n, n, self.px(70, 4)) * amp[lab]
        )
        phase = (self.xx * np.cos(theta)[lab] + self.yy * np.sin(theta)[lab]) / period[lab]
        tex += striped[lab] * 9.0 * np.sin(2 * math.pi * phase)
        img += tex[..., None]
        # hedges / tracks between fields
        edge = np.zeros((n, n), bool)
        edge[1:] |= lab[1:] != lab[:-1]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        if self.s >= 0.6:
            edge[1:] |= edge[:-1].copy()
            edge[:, 1:] |= edge[:, :-1].copy()
        img[edge] = img[edge] * 0.45 + np.array([50, 72, 40], np.float32) * 0.55
        self.img = img

    def river_band(self) -> None:
        rng, n = self.rng, self.n
        vertical = rng.random() < 0.5
        t, o = (self.yy, self.xx) if vertical else (self.xx, self.yy)
        base = rng.uniform(0.25, 0.75) * n
        amp, per = rng.uniform(0.04, 0.12) * n, rng.uniform(0.6, 1.4) * n
        centre = base + amp * np.sin(2 * math.pi * t / per + rng.uniform(0, 2 * math.pi))
        half = self.px(rng.uniform(11, 17), 1.5)
        dist = np.abs(o - centre)
        bank, water = dist < half + self.px(5, 1), dist < half
        self.img[bank] = self.img[bank] * 0.3 + np.array([150, 146, 108], np.float32) * 0.7
        tone = _noise(rng, n, n, self.px(30, 3))[water, None] * 5.0
        self.img[water] = self.jitter((42, 78, 92), 6) + tone
        self.river |= water
        self.terrain |= bank

    def road_line(self) -> None:
        rng, n = self.rng, self.n
        py, px = rng.uniform(0.2, 0.8, 2) * n
        if rng.random() < 0.7:
            angle = rng.choice([0.0, math.pi / 2]) + rng.normal(0, math.radians(6))
        else:
            angle = rng.uniform(0, math.pi)
        width = self.op(rng.uniform(36, 42), 4)
        ca, sa = math.cos(angle), math.sin(angle)
        perp = -(self.xx - px) * sa + (self.yy - py) * ca
        along = (self.xx - px) * ca + (self.yy - py) * sa
        surface = np.abs(perp) < width / 2
        verge = np.abs(perp) < width / 2 + self.op(2, 1)
        self.img[verge & ~surface] = (
            self.img[verge & ~surface] * 0.4 + np.array([150, 146, 132], np.float32) * 0.6
        )
        grey = self.jitter((104, 104, 106), 8)
        self.img[surface] = grey + _noise(rng, n, n, self.op(3, 1.5))[surface, None] * 5.0
        dash = self.op(14, 3)
        line = surface & (np.abs(perp) < self.op(1.0, 0.5)) & ((along % dash) < dash * 0.55)
        self.img[line] = (210, 206, 190)
        self.road |= surface
        self.river &= ~surface  # a bridge
        self.terrain |= verge
        self.roads.append((py, px, angle, width))

    # --- objects ------------------------------------------------------------------------
    def pond(self) -> bool:
        rng, n = self.rng, self.n
        r = self.op(rng.uniform(26, 54), 3)
        cy, cx = rng.uniform(r + 4, n - r - 4, 2)
        k = 28
        ang = np.linspace(0, 2 * math.pi, k, endpoint=False)
        wob = np.convolve(np.tile(rng.normal(0, 0.18, k), 3), np.ones(5) / 5, "same")[k : 2 * k]
        aspect, rot = rng.uniform(0.65, 1.0), rng.uniform(0, math.pi)
        rad = r * (1 + wob)
        ex, ey = rad * np.cos(ang), rad * aspect * np.sin(ang)
        xs = cx + ex * math.cos(rot) - ey * math.sin(rot)
        ys = cy + ex * math.sin(rot) + ey * math.cos(rot)
        bw = 1 + self.op(4, 1) / r
        by, bx = cy + (ys - cy) * bw, cx + (xs - cx) * bw
        if not self.inside(by, bx, 2):
            return False
        brr, bcc = polygon(by, bx, (n, n))
        if not self.free(brr, bcc):
            return False
        rr, cc = polygon(ys, xs, (n, n))
        if rr.size < 4:
            return False
        self.img[brr, bcc] = self.img[brr, bcc] * 0.3 + self.jitter((120, 132, 84), 10) * 0.7
        d = np.hypot(rr - cy, cc - cx) / r
        water = self.jitter((38, 84, 104), 8)
        self.img[rr, cc] = water[None] * (1.05 - 0.25 * np.clip(1 - d, 0, 1))[:, None]
        self.add("pond", None, rr, cc, self.op(4))
        self.terrain[brr, bcc] = True
        return True

    def building(self, near_road: bool) -> bool:
        rng, n = self.rng, self.n
        length = self.op(rng.uniform(44, 88), 3)
        width = max(2.0, length * rng.uniform(0.6, 0.92))
        if near_road and self.roads:
            py, px, angle, rw = self.roads[int(rng.integers(len(self.roads)))]
            t = rng.uniform(-0.7, 0.7) * n
            off = (rw / 2 + self.op(rng.uniform(6, 12)) + width / 2) * rng.choice([-1, 1])
            cx = px + t * math.cos(angle) - off * math.sin(angle)
            cy = py + t * math.sin(angle) + off * math.cos(angle)
        else:
            cy, cx = rng.uniform(0, n, 2)
            angle = (
                self.roads[0][2] if self.roads and rng.random() < 0.6 else rng.uniform(0, math.pi)
            )
        angle += rng.normal(0, 0.04)
        ys, xs = _rect(cy, cx, length, width, angle)
        if not self.inside(ys, xs, 2):
            return False
        rr, cc = polygon(ys, xs, (n, n))
        if rr.size < 4 or not self.free(rr, cc):
            return False
        colour = str(rng.choice(list(_ROOF_RGB), p=[0.32, 0.26, 0.2, 0.22]))
        h = self.op(rng.uniform(6, 14))
        hy, hx = _hull(np.r_[ys, ys + h * self.sun[0]], np.r_[xs, xs + h * self.sun[1]])
        srr, scc = polygon(hy, hx, (n, n))
        self.shade(srr, scc, 0.45)
        roof = self.jitter(_ROOF_RGB[colour], 10)
        along = (cc - cx) * math.cos(angle) + (rr - cy) * math.sin(angle)
        across = -(cc - cx) * math.sin(angle) + (rr - cy) * math.cos(angle)
        if rng.random() < 0.55:  # gable roof: two slopes lit differently, a ridge line
            light = np.where(across > 0, 1.0, 0.78).astype(np.float32)
            light[np.abs(across) < self.op(0.8, 0.5)] = 1.12
        else:  # flat roof: darker parapet, a rooftop unit
            light = np.ones(rr.size, np.float32)
            edge = (np.abs(across) > width / 2 - self.op(2.5)) | (
                np.abs(along) > length / 2 - self.op(2.5)
            )
            light[edge] = 0.8
            unit = (np.abs(along - length * 0.2) < self.op(5)) & (np.abs(across) < self.op(4))
            light[unit] = 0.66
        self.img[rr, cc] = np.clip(roof[None] * light[:, None], 0, 255)
        self.add("building", colour, rr, cc, self.op(5))
        return True

    def tank(self, cluster: bool) -> bool:
        rng, n = self.rng, self.n
        r = self.op(rng.uniform(13, 34), 1.5)
        tanks = [o for o in self.objects if o[0] == "storage tank"]
        if cluster and tanks:
            _, _, prr, pcc = tanks[int(rng.integers(len(tanks)))]
            pr = math.sqrt(prr.size / math.pi)
            a, gap = rng.uniform(0, 2 * math.pi), pr + r + self.op(rng.uniform(7, 14))
            cy, cx = prr.mean() + gap * math.sin(a), pcc.mean() + gap * math.cos(a)
        else:
            cy, cx = rng.uniform(0, n, 2)
        if not self.inside(np.array([cy - r, cy + r]), np.array([cx - r, cx + r]), 2):
            return False
        rr, cc = disk((cy, cx), r, shape=(n, n))
        if rr.size < 4 or not self.free(rr, cc):
            return False
        colour = str(rng.choice(list(_TANK_RGB), p=[0.45, 0.2, 0.15, 0.2]))
        h = r * 0.6
        srr, scc = disk((cy + h * self.sun[0], cx + h * self.sun[1]), r, shape=(n, n))
        self.shade(srr, scc, 0.5)
        base = self.jitter(_TANK_RGB[colour], 8)
        d = np.hypot(rr - cy, cc - cx)
        light = np.ones(rr.size, np.float32)
        light[d > r - self.op(2.2, 1)] = 0.62  # rim
        light[np.abs(d - 0.55 * r) < self.op(0.8, 0.5)] = 0.85  # floating-roof seam
        light *= 1.0 + 0.08 * ((cc - cx) * self.sun[1] + (rr - cy) * self.sun[0]) / r * -1
        self.img[rr, cc] = np.clip(base[None] * light[:, None], 0, 255)
        self.add("storage tank", colour, rr, cc, self.op(4))
        return True

    def vehicle(self, category: str, where: str) -> bool:
        rng, n = self.rng, self.n
        length = self.op(rng.uniform(27, 32) if category == "car" else rng.uniform(48, 58), 2.5)
        width = self.op(rng.uniform(13, 15) if category == "car" else rng.uniform(15, 17), 1.5)
        on_road = where == "road" and bool(self.roads)
        if on_road:
            py, px, angle, rw = self.roads[int(rng.integers(len(self.roads)))]
            t, lane = rng.uniform(-0.6, 0.6) * n, rng.choice([-1, 1]) * rw / 4
            cx = px + t * math.cos(angle) - lane * math.sin(angle)
            cy = py + t * math.sin(angle) + lane * math.cos(angle)
            angle += math.pi * (lane < 0)
        elif where == "pond" and any(o[0] == "pond" for o in self.objects):
            ponds = [o for o in self.objects if o[0] == "pond"]
            _, _, prr, pcc = ponds[int(rng.integers(len(ponds)))]
            i = int(rng.integers(prr.size))
            a = math.atan2(prr[i] - prr.mean(), pcc[i] - pcc.mean())
            dist = self.op(rng.uniform(10, 16)) + width
            cy, cx = prr[i] + dist * math.sin(a), pcc[i] + dist * math.cos(a)
            angle = a + math.pi / 2
        else:
            cy, cx = rng.uniform(0, n, 2)
            angle = rng.uniform(0, 2 * math.pi)
        ys, xs = _rect(cy, cx, length, width, angle)
        if not self.inside(ys, xs, 2):
            return False
        rr, cc = polygon(ys, xs, (n, n))
        if rr.size < 2 or not self.free(rr, cc, allow_terrain=on_road):
            return False
        if on_road and not self.road[rr, cc].all():
            return False
        colour = str(rng.choice(COLOURS))
        srr, scc = polygon(ys + self.op(2.5) * self.sun[0], xs + self.op(2.5) * self.sun[1], (n, n))
        self.shade(srr, scc, 0.55)
        body = self.jitter(_VEHICLE_RGB[colour], 10)
        u = (
            (cc - cx) * math.cos(angle) + (rr - cy) * math.sin(angle)
        ) / length  # -0.5 rear .. 0.5 front
        light = np.ones(rr.size, np.float32)
        glass = np.array([40, 48, 58], np.float32)
        if category == "car":
            win = ((u > 0.08) & (u < 0.26)) | ((u > -0.36) & (u < -0.26))
            light[np.abs(u) < 0.08] = 1.08  # roof
        else:
            win = (u > 0.3) & (u < 0.38)
            light[(u > 0.2) & (u < 0.24)] = 0.45  # cab / box gap
            light[(u < 0.2) & (np.round(u * 12) % 2 == 0)] = 0.93  # box ribs
        col = body[None] * light[:, None]
        col[win] = glass * 0.7 + body * 0.3 * (colour != "black")
        self.img[rr, cc] = np.clip(col, 0, 255)
        self.add(category, colour, rr, cc, self.op(3))
        return True

    def trees(self, count: int) -> None:
        rng, n = self.rng, self.n
        for _ in range(count):
            r = self.op(rng.uniform(3, 7), 1)
            cy, cx = rng.uniform(r, n - r, 2)
            rr, cc = disk((cy, cx), r + self.op(3, 1), shape=(n, n))
            if self.blocked[rr, cc].any() or self.terrain[rr, cc].any():
                continue
            srr, scc = disk(
                (cy + r * 0.7 * self.sun[0], cx + r * 0.7 * self.sun[1]), r, shape=(n, n)
            )
            self.shade(srr, scc, 0.55)
            rr, cc = disk((cy, cx), r, shape=(n, n))
            green = self.jitter((46, 80, 38), 10)
            d = np.hypot(rr - cy, cc - cx) / r
            self.img[rr, cc] = green[None] * (1.15 - 0.3 * d)[:, None]
