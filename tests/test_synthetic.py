"""Synthetic referring scenes: determinism, verified expressions, the JSONL writer, the CLI."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from entitwist.data import synthetic as syn
from entitwist.data import synthetic_expressions as rules
from entitwist.data.scene_painter import CATEGORIES, COLOURS
from entitwist.data.synthetic import scene_seed, write_dataset
from entitwist.data.synthetic_expressions import EXPRESSION_TYPES, generate_expressions
from entitwist.data.synthetic_scene import generate_scene
from entitwist.errors import DataError, EntitwistError, InputError

# ---------------------------------------------------------------------------------------
# An independent checker: parse the sentence with its own grammar, recompute every
# geometric fact from the instance map (not from the generator's object list), resolve.
# ---------------------------------------------------------------------------------------
_COL = "red|white|blue|yellow|black"
_NP = rf"(?:(?P<col>{_COL}) )?(?P<noun>storage tanks?|tanks?|cars?|trucks?|vehicles?|buildings?|ponds?)"
_POS = "top left|top right|bottom left|bottom right|top|bottom|left|right|center|middle"
_PATTERNS = [
    ("group", rf"(?:all the|all of the|all|every) {_NP}"),
    ("extreme", rf"the (?P<d>leftmost|rightmost|topmost|uppermost|lowest) {_NP}"),
    ("extreme", rf"the {_NP} farthest to the (?P<d>left|right|top|bottom)"),
    ("size", rf"the (?P<d>largest|biggest|smallest) {_NP}"),
    ("relation", rf"the {_NP} (?:next to|near|beside|by|along) (?:the|a) (?P<d>pond|road|river)"),
    ("relation", rf"the {_NP} (?:that is )?(?P<d>on|not on) the road"),
    ("position", rf"the {_NP} (?:at|in|on) the (?P<d>{_POS})(?: corner| side| of the image)?"),
    ("position", rf"the (?P<d>top left|top right|bottom left|bottom right) {_NP}"),
    ("category", rf"the (?:only )?{_NP}(?: in the image)?"),
    ("category", rf"the {_NP} that is (?P<col2>{_COL})"),
]
_NOUN_CAT = {"tank": "storage tank", "storage tank": "storage tank"}


def _parse(text: str) -> tuple[str, str, str | None, str | None]:
    for kind, pat in _PATTERNS:
        m = re.fullmatch(pat, text)
        if m:
            g = m.groupdict()
            noun = g["noun"]
            noun = noun[:-1] if noun.endswith("s") and kind == "group" else noun
            assert not (kind != "group" and noun.endswith("s")), text
            cat = _NOUN_CAT.get(noun, noun)
            return kind, cat, g.get("col") or g.get("col2"), g.get("d")
    raise AssertionError(f"unparseable expression {text!r}")


_GEO: dict[int, tuple] = {}


def _geometry(scene):
    """id -> (category, colour, pixel coords (P, 2), centroid (y, x), area) from the maps."""
    key = id(scene.instances)
    if key in _GEO and _GEO[key][0] is scene.instances:
        return _GEO[key][1]
    meta = {o.id: (o.category, o.colour) for o in scene.objects}
    out = {}
    for k, (cat, col) in meta.items():
        pix = np.argwhere(scene.instances == k)
        out[k] = (cat, col, pix, pix.mean(0), len(pix))
    _GEO.clear()
    _GEO[key] = (scene.instances, out)
    return out


def _resolve(scene, text: str) -> tuple[str, set[int]]:
    kind, cat, col, d = _parse(text)
    n = scene.size
    geo = _geometry(scene)
    cats = {"car", "truck"} if cat == "vehicle" else {cat}
    mem = [k for k, g in geo.items() if g[0] in cats and (col is None or g[1] == col)]
    assert mem, text
    if kind == "group":
        assert len(mem) >= 2, text
        return kind, set(mem)
    if kind == "category":
        assert len(mem) == 1, text
        return kind, set(mem)
    if kind == "extreme":
        axis, sign = {
            "leftmost": (1, 1),
            "left": (1, 1),
            "rightmost": (1, -1),
            "right": (1, -1),
            "topmost": (0, 1),
            "uppermost": (0, 1),
            "top": (0, 1),
            "lowest": (0, -1),
            "bottom": (0, -1),
        }[d]
        vals = sorted((sign * geo[k][3][axis], k) for k in mem)
        assert len(vals) >= 2 and vals[1][0] - vals[0][0] >= rules.EXTREME_GAP * n - 1e-6, text
        return kind, {vals[0][1]}
    if kind == "size":
        vals = sorted((geo[k][4], k) for k in mem)
        if d == "smallest":
            assert vals[1][0] >= rules.SIZE_RATIO * vals[0][0], text
            return kind, {vals[0][1]}
        assert vals[-1][0] >= rules.SIZE_RATIO * vals[-2][0], text
        return kind, {vals[-1][1]}
    if kind == "position":
        d = "center" if d == "middle" else d
        rows = {"top": (0, 1), "bottom": (2, 3)}
        cols = {"left": (0, 1), "right": (2, 3)}
        words = d.split()
        r = next((rows[w] for w in words if w in rows), (1, 2) if d == "center" else (0, 3))
        c = next((cols[w] for w in words if w in cols), (1, 2) if d == "center" else (0, 3))
        y0, y1, x0, x1 = r[0] * n / 3, r[1] * n / 3, c[0] * n / 3, c[1] * n / 3
        m = rules.POS_MARGIN * n

        def depth(k):  # > 0 inside (distance to the nearest inner edge), < 0 outside
            y, x = geo[k][3]
            inner = [
                v
                for v, edge in (
                    (y - y0, r[0]),
                    (y1 - y, 3 - r[1]),
                    (x - x0, c[0]),
                    (x1 - x, 3 - c[1]),
                )
                if edge
            ]
            if min(y - y0, y1 - y, x - x0, x1 - x) < 0:
                return -max(y0 - y, y - y1, x0 - x, x - x1, 0)
            return min(inner) if inner else np.inf

        inside = [k for k in mem if depth(k) >= m - 1e-6]
        assert len(inside) == 1, text
        assert all(depth(k) <= -m + 1e-6 for k in mem if k != inside[0]), text
        return kind, set(inside)
    # relations
    if d in ("on", "not on"):
        frac = {k: scene.road_mask[tuple(geo[k][2].T)].mean() for k in mem}
        chosen = [
            k for k in mem if (frac[k] >= rules.ON_ROAD if d == "on" else frac[k] <= rules.OFF_ROAD)
        ]
        rest = [k for k in mem if k not in chosen]
        assert len(chosen) == 1, text
        assert all(
            (frac[k] <= rules.OFF_ROAD if d == "on" else frac[k] >= rules.ON_ROAD) for k in rest
        ), text
        return kind, set(chosen)
    if d == "pond":
        land = np.argwhere(np.isin(scene.instances, [k for k, g in geo.items() if g[0] == "pond"]))
    else:
        land = np.argwhere(scene.road_mask if d == "road" else scene.river_mask)
    tree = cKDTree(land)
    dist = {k: tree.query(geo[k][2])[0].min() for k in mem}
    close = [k for k in mem if dist[k] <= rules.NEAR * n + 1e-6]
    assert len(close) == 1, text
    assert all(dist[k] >= rules.FAR * n - 1e-6 for k in mem if k != close[0]), text
    return kind, set(close)


# ---------------------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------------------
def test_scene_is_deterministic_and_seed_dependent():
    a, b, c = generate_scene(11, 128), generate_scene(11, 128), generate_scene(12, 128)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.instances, b.instances) and a.objects == b.objects
    assert a.image.tobytes() != c.image.tobytes()
    assert a.image.dtype == np.uint8 and a.image.shape == (128, 128, 3)


def test_object_list_matches_instance_map():
    scene = generate_scene(3, 256)
    assert [o.id for o in scene.objects] == list(range(1, len(scene.objects) + 1))
    assert set(np.unique(scene.instances)) == {0, *[o.id for o in scene.objects]}
    for o in scene.objects:
        pix = np.argwhere(scene.instances == o.id)
        assert o.area == len(pix)
        assert o.bbox == (
            pix[:, 0].min(),
            pix[:, 1].min(),
            pix[:, 0].max() + 1,
            pix[:, 1].max() + 1,
        )
        assert np.allclose(o.centroid, pix.mean(0))
        assert o.category in CATEGORIES and (o.colour is None or o.colour in COLOURS)
        assert (o.colour is None) == (o.category == "pond")
    counts = Counter(o.category for o in scene.objects)
    assert (
        counts["building"] >= 2
        and counts["car"] + counts["truck"] >= 3
        and counts["storage tank"] >= 1
    )
    # the road and river masks are not under any object except vehicles on the road
    for o in scene.objects:
        on = scene.road_mask[scene.instances == o.id].mean()
        assert on == 0 or o.category in ("car", "truck")


@pytest.mark.parametrize("size", [64, 200, 512])
def test_any_size_scales_objects(size):
    scene = generate_scene(4, size)
    assert scene.image.shape == (size, size, 3) and scene.instances.shape == (size, size)
    assert len(scene.objects) >= 5
    cars = [o for o in scene.objects if o.category == "car"]
    buildings = [o for o in scene.objects if o.category == "building"]
    # objects keep their share of the image: a car's long side is ~6% of the image side
    for o in cars:
        side = max(o.bbox[2] - o.bbox[0], o.bbox[3] - o.bbox[1]) / size
        assert 0.03 <= side <= 0.10, (size, side)
    assert all(o.area / size**2 > 0.002 for o in buildings)
    refs = generate_expressions(scene, np.random.default_rng(0), 8)
    assert len(refs) >= 4
    for r in refs:
        assert _resolve(scene, r.expression) == (r.expression_type, set(r.target_ids))


def test_object_scale_enlarges_objects():
    def mean_area(scale, cat):
        areas = [
            o.area
            for s in range(6)
            for o in generate_scene(s, 160, object_scale=scale).objects
            if o.category == cat
        ]
        return np.mean(areas)

    for cat in ("car", "building"):
        ratio = mean_area(1.6, cat) / mean_area(1.0, cat)
        assert 1.9 < ratio < 3.4, (cat, ratio)  # area grows ~ scale**2
    scene = generate_scene(2, 160, object_scale=1.6)
    for r in generate_expressions(scene, np.random.default_rng(2), 100):
        assert _resolve(scene, r.expression) == (r.expression_type, set(r.target_ids))
    with pytest.raises(InputError, match="object_scale"):
        generate_scene(0, 64, object_scale=5)


def test_bad_scene_arguments():
    with pytest.raises(InputError, match="at least 32"):
        generate_scene(0, 16)
    with pytest.raises(InputError, match="negative"):
        generate_scene(-1, 64)
    with pytest.raises(InputError, match="unknown expression type"):
        generate_expressions(generate_scene(0, 64), np.random.default_rng(0), types=["colour"])


# ---------------------------------------------------------------------------------------
# expressions
# ---------------------------------------------------------------------------------------
def test_every_expression_is_unambiguous_and_masks_match():
    seen: Counter[str] = Counter()
    for seed in range(24):
        scene = generate_scene(seed, 256)
        refs = generate_expressions(scene, np.random.default_rng(seed), 100)  # all it can say
        assert len({r.expression for r in refs}) == len(refs)
        for r in refs:
            kind, ids = _resolve(scene, r.expression)
            assert kind == r.expression_type, r.expression
            assert ids == set(r.target_ids), (seed, r.expression, ids, r.target_ids)
            assert np.array_equal(r.mask, np.isin(scene.instances, list(ids)))
            assert r.mask.any()
            seen[kind] += 1
    assert set(seen) == set(EXPRESSION_TYPES), seen
    assert min(seen.values()) >= 10, seen


def test_vocabulary_fits_the_tiny_tokenizer():
    import entitwist

    vocab = set((Path(entitwist.__file__).parent / "assets" / "tiny_vocab.txt").read_text().split())
    words = set()
    for seed in range(40):
        scene = generate_scene(seed, 128)
        words.update(
            w
            for r in generate_expressions(scene, np.random.default_rng(seed), 100)
            for w in r.expression.split()
        )
    assert len(words) > 40
    assert words <= vocab, sorted(words - vocab)  # no [UNK] for the tiny text encoder


def test_selection_balances_types_and_targets():
    types: Counter[str] = Counter()
    for seed in range(20):
        scene = generate_scene(seed, 192)
        refs = generate_expressions(scene, np.random.default_rng(seed), 8)
        assert len(refs) == 8
        assert len({r.target_ids for r in refs}) >= 4  # many different targets per scene
        types.update(r.expression_type for r in refs)
    assert set(types) == set(EXPRESSION_TYPES)
    assert max(types.values()) <= 3 * min(types.values()), types
    only = generate_expressions(
        generate_scene(1, 128), np.random.default_rng(0), 8, types=("group", "size")
    )
    assert only and {r.expression_type for r in only} <= {"group", "size"}


# ---------------------------------------------------------------------------------------
# writer and CLI
# ---------------------------------------------------------------------------------------
def _read(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]


def test_write_dataset_files_match_annotations(tmp_path):
    root = tmp_path / "ds"
    summary = write_dataset(root, 8, size=96, seed=5, expressions_per_scene=6, progress=False)
    lines = _read(root)
    assert summary["samples"] == len(lines) and summary["scenes"] == 8
    assert sum(summary["types"].values()) == len(lines)
    keys = {
        "sample_id",
        "image",
        "mask",
        "expression",
        "split",
        "ref_id",
        "category",
        "expression_type",
        "target_ids",
    }
    assert all(keys <= set(line) for line in lines)
    assert len({line["sample_id"] for line in lines}) == len(lines)
    assert sorted(p.name for p in root.iterdir()) == [
        "annotations.jsonl",
        "images",
        "masks",
        "synth.json",
    ]
    assert len(list((root / "masks").iterdir())) == len(lines)
    by_image: dict[str, list[dict]] = {}
    for line in lines:
        by_image.setdefault(line["image"], []).append(line)
    assert len(by_image) == 8 and len(list((root / "images").iterdir())) == 8
    assert {line["split"] for line in lines} == {"train", "val", "test"}
    for image, group in by_image.items():
        assert len({g["split"] for g in group}) == 1  # split by scene
        index = int(Path(image).stem.split("_")[1])
        scene = generate_scene(scene_seed(5, index), 96)
        img = np.asarray(Image.open(root / image))
        assert np.array_equal(img, scene.image)
        refs = {}
        for g in group:
            mask = np.asarray(Image.open(root / g["mask"]))
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask > 0, np.isin(scene.instances, g["target_ids"]))
            assert _resolve(scene, g["expression"]) == (g["expression_type"], set(g["target_ids"]))
            refs.setdefault(g["ref_id"], set()).add(tuple(g["target_ids"]))
        assert all(len(v) == 1 for v in refs.values())  # a ref_id is one target set
        assert len({next(iter(v)) for v in refs.values()}) == len(refs)  # and distinct per target
        # the swap test's partner: same image, different ref, disjoint targets
        assert len(refs) >= 2
        ids = {g["sample_id"]: g for g in group}
        for g in group:
            if g["swap_id"] is not None:
                p = ids[g["swap_id"]]
                assert p["ref_id"] != g["ref_id"] and not set(p["target_ids"]) & set(
                    g["target_ids"]
                )
        if group[0]["split"] == "test":
            assert any(g["swap_id"] for g in group)
    # deterministic: a second run gives the same annotations and bytes
    write_dataset(tmp_path / "again", 8, size=96, seed=5, expressions_per_scene=6, progress=False)
    assert (tmp_path / "again" / "annotations.jsonl").read_bytes() == (
        root / "annotations.jsonl"
    ).read_bytes()


def test_jsonl_loader_reads_it(tmp_path):
    from entitwist.data import load_dataset

    write_dataset(tmp_path, 5, size=64, seed=1, expressions_per_scene=4, progress=False)
    lines = _read(tmp_path)
    test = [line for line in lines if line["split"] == "test"]
    ds = load_dataset("jsonl", tmp_path, split="test", entities=None, one_expression_per_ref=False)
    assert len(ds) == len(test)
    got = {ds[i]["sample_id"]: ds[i] for i in range(len(ds))}
    for line in test:
        s = got[line["sample_id"]]
        assert s["expression"] == line["expression"] and s["image"].shape == (64, 64, 3)
        assert s["ref_id"] == line["ref_id"] and s["image_id"] == line["image_id"]
        assert np.array_equal(
            s["mask"], (np.asarray(Image.open(tmp_path / line["mask"])) > 0).astype(np.uint8)
        )
    train = load_dataset("jsonl", tmp_path, split="train", entities=None)  # one expression per ref
    assert len(train) == len({line["ref_id"] for line in lines if line["split"] == "train"})


def test_refuses_non_empty_output_and_overwrites_only_its_own(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        write_dataset(tmp_path, 2, size=64, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written
    write_dataset(tmp_path, 2, size=64, overwrite=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    first = _read(tmp_path)
    write_dataset(tmp_path, 3, size=64, seed=9, overwrite=True, progress=False)
    assert len({line["image"] for line in _read(tmp_path)}) == 3 and _read(tmp_path) != first
    assert len(list((tmp_path / "images").iterdir())) == 3

    from entitwist.cli import main as cli

    assert cli(["synth", str(tmp_path), "--scenes", "2", "--size", "64", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("entitwist: error:") and "--overwrite" in err and "\n" not in err
    out = tmp_path / "fresh"
    assert cli(["synth", str(out), "--scenes", "3", "--size", "64", "--seed", "2", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out and len({line["image"] for line in _read(out)}) == 3
    assert cli(["synth", str(tmp_path / "x"), "--scenes", "2", "--splits", "0.5,0.5"]) == 2
    assert cli(["synth", str(tmp_path / "y"), "--scenes", "2", "--types", "color"]) == 2
    assert cli(["synth", str(tmp_path / "z"), "--scenes", "0"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


class _Killed(BaseException):
    pass


def test_killed_run_resumes_and_matches(tmp_path, monkeypatch):
    write_dataset(tmp_path / "ref", 6, size=64, seed=3, progress=False)
    calls = []
    real = syn._scene_records

    die = [True]

    def dying(out, index, *args):
        calls.append(index)
        if index == 4 and die[0]:
            raise _Killed  # killed midway
        return real(out, index, *args)

    monkeypatch.setattr(syn, "_scene_records", dying)
    with pytest.raises(_Killed):
        write_dataset(tmp_path / "run", 6, size=64, seed=3, progress=False)
    assert not (tmp_path / "run" / "annotations.jsonl").exists()
    assert not [p for p in (tmp_path / "run").rglob("*") if ".tmp" in p.name]  # no partial file
    # other parameters on the unfinished folder are refused
    with pytest.raises(DataError, match="unfinished"):
        write_dataset(tmp_path / "run", 6, size=64, seed=4, progress=False)
    stray = tmp_path / "run" / "images" / ".scene_00004.png.x1y2.tmp.png"  # as SIGKILL leaves it
    stray.write_bytes(b"partial")
    calls.clear()
    die[0] = False
    write_dataset(tmp_path / "run", 6, size=64, seed=3, progress=False)
    assert calls == [4, 5]  # finished scenes were skipped
    assert not stray.exists()
    assert (tmp_path / "run" / "annotations.jsonl").read_bytes() == (
        tmp_path / "ref" / "annotations.jsonl"
    ).read_bytes()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "annotations.jsonl",
        "images",
        "masks",
        "synth.json",
    ]


def test_two_workers_write_the_same_files(tmp_path, monkeypatch):
    write_dataset(tmp_path / "one", 9, size=64, seed=5, progress=False)
    write_dataset(tmp_path / "two", 9, size=64, seed=5, progress=False, workers=2)
    # a run killed at scene 4 in this process, resumed by a pool of two
    real = syn._scene_records

    def dying(out, index, *args):
        if index == 4:
            raise _Killed
        return real(out, index, *args)

    monkeypatch.setattr(syn, "_scene_records", dying)
    with pytest.raises(_Killed):
        write_dataset(tmp_path / "resumed", 9, size=64, seed=5, progress=False)
    monkeypatch.setattr(syn, "_scene_records", real)
    assert len(list((tmp_path / "resumed" / syn._RECORDS).glob("*.json"))) == 4
    write_dataset(tmp_path / "resumed", 9, size=64, seed=5, progress=False, workers=2)

    def files(root):
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "synth.json"  # synth.json holds the seconds taken
        }

    one = files(tmp_path / "one")
    assert len(one) > 9 and "annotations.jsonl" in one
    for other in ("two", "resumed"):
        got = files(tmp_path / other)
        assert sorted(got) == sorted(one)
        assert all(got[k] == one[k] for k in one), other
    with pytest.raises(EntitwistError, match="workers=0"):
        write_dataset(tmp_path / "bad", 2, size=64, progress=False, workers=0)
    assert not (tmp_path / "bad").exists()


def test_bad_writer_arguments(tmp_path):
    for kwargs, msg in (
        ({"n_scenes": 0}, "at least 1 scene"),
        ({"n_scenes": 2, "size": 8}, "at least 32"),
        ({"n_scenes": 2, "splits": (0.5, 0.6, 0.1)}, "summing to 1"),
        ({"n_scenes": 2, "expressions_per_scene": 0}, "at least 1"),
        ({"n_scenes": 2, "types": ("colour",)}, "unknown expression type"),
    ):
        with pytest.raises(EntitwistError, match=msg):
            write_dataset(tmp_path / "d", progress=False, **kwargs)
        assert not (tmp_path / "d").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_dataset(tmp_path / "file", 2, progress=False)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "entitwist.cli",
        "synth",
        str(out),
        "--scenes",
        "40",
        "--size",
        "64",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / ".synth_records").glob("*.json"))) >= 3:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "annotations.jsonl").exists()
    write_dataset(out, 40, size=64, progress=False)  # same arguments: resumes
    write_dataset(tmp_path / "ref", 40, size=64, progress=False)
    assert (out / "annotations.jsonl").read_bytes() == (
        tmp_path / "ref" / "annotations.jsonl"
    ).read_bytes()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    for line in _read(out)[::23]:
        for key in ("image", "mask"):
            assert (out / line[key]).read_bytes() == (tmp_path / "ref" / line[key]).read_bytes()


def test_density_thins_the_scene_and_one_keeps_it() -> None:
    from entitwist.data.synthetic_scene import generate_scene

    full = [generate_scene(s, 128, object_scale=2.0) for s in range(6)]
    same = [generate_scene(s, 128, object_scale=2.0, density=1.0) for s in range(6)]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(full, same))
    thin = [generate_scene(s, 128, object_scale=2.0, density=0.3) for s in range(6)]
    n_full = sum(len(sc.objects) for sc in full)
    n_thin = sum(len(sc.objects) for sc in thin)
    assert n_thin < 0.6 * n_full
    for sc in thin:  # the floors: a building, a tank and two cars are always tried
        cats = [o.category for o in sc.objects]
        assert cats.count("building") >= 1 and cats.count("car") >= 1
        ids = np.unique(sc.instances)
        assert set(ids[ids > 0]) == {o.id for o in sc.objects}
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(InputError, match="density"):
            generate_scene(0, 128, density=bad)
