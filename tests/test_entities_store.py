"""Label-map painting (against a per-pixel reference twin) and the entity store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import entitwist.entities as E
from entitwist.errors import ConfigError, DataError, InputError

# --- paint_label_map -------------------------------------------------------------------------


def paint_reference(masks: list[np.ndarray], k: int) -> np.ndarray:
    """Plain-loop twin: for each pixel, the smallest of the K largest masks covering it."""
    areas = [int(m.sum()) for m in masks]
    # rank by decreasing area, ties by input order; empty masks never count
    order = sorted((i for i in range(len(masks)) if areas[i] > 0), key=lambda i: (-areas[i], i))
    kept = order[:k]
    h, w = masks[0].shape
    out = np.zeros((h, w), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            best = None  # (area, rank) of the smallest covering kept mask; later rank wins ties
            for rank, i in enumerate(kept, start=1):
                if masks[i][y, x] and (best is None or areas[i] <= best[0]):
                    best = (areas[i], rank)
            out[y, x] = 0 if best is None else best[1]
    return out


def random_masks(seed: int, n: int, h: int = 17, w: int = 23) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for _ in range(n):
        kind = rng.integers(3)
        if kind == 0:  # rectangle
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m = (
                (yy >= y0)
                & (yy < y0 + rng.integers(1, h))
                & (xx >= x0)
                & (xx < x0 + rng.integers(1, w))
            )
        elif kind == 1:  # disc
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 9)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:  # speckle
            m = rng.random((h, w)) < 0.2
        masks.append(m)
    return masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 4, 40])
def test_paint_matches_reference_twin(seed: int, k: int) -> None:
    masks = random_masks(seed, n=3 + 4 * seed)
    if seed == 2:
        masks.append(masks[0].copy())  # equal areas: input order decides
        masks.append(np.zeros_like(masks[0]))  # an empty mask is dropped
    got = E.paint_label_map(masks, k)
    assert got.dtype == np.uint8 and got.shape == (17, 23)
    np.testing.assert_array_equal(got, paint_reference(masks, k))


def test_paint_nested_masks_and_area_order() -> None:
    h, w = 10, 10
    big = np.ones((h, w), bool)
    mid = np.zeros((h, w), bool)
    mid[2:8, 2:8] = True
    small = np.zeros((h, w), bool)
    small[4:6, 4:6] = True
    tiny = np.zeros((h, w), bool)
    tiny[0, 0] = True
    labels = E.paint_label_map([small, tiny, big, mid], max_entities=40)
    assert labels[9, 9] == 1  # only the whole-image mask: label 1 = largest
    assert labels[2, 2] == 2 and labels[4, 4] == 3 and labels[0, 0] == 4
    assert set(np.unique(labels)) == {1, 2, 3, 4}
    # K = 2 keeps the two largest; the pixels of the dropped smaller masks fall back to them
    labels2 = E.paint_label_map([small, tiny, big, mid], max_entities=2)
    assert labels2[4, 4] == 2 and labels2[0, 0] == 1 and labels2.max() == 2
    # K = 1 without the full mask: pixels outside the kept mask are 0
    labels3 = E.paint_label_map([small, mid], max_entities=1)
    assert labels3[0, 0] == 0 and labels3[4, 4] == 1


def test_paint_bad_input() -> None:
    m = np.ones((4, 5), bool)
    with pytest.raises(ConfigError, match="1..255"):
        E.paint_label_map([m], max_entities=256)
    with pytest.raises(ConfigError, match="1..255"):
        E.paint_label_map([m], max_entities=0)
    with pytest.raises(ConfigError, match="integer"):
        E.paint_label_map([m], max_entities=2.5)
    with pytest.raises(InputError, match="sizes must match"):
        E.paint_label_map([m, np.ones((5, 4), bool)])
    with pytest.raises(InputError, match="shape"):
        E.paint_label_map([])
    assert E.paint_label_map([], shape=(3, 2)).tolist() == [[0, 0]] * 3
    assert E.paint_label_map([m.astype(np.uint8)]).tolist() == [[1] * 5] * 4


def test_compute_entities_accepts_none_name_or_object() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)

    class Halves:  # a generator without the fast path: goes through paint_label_map
        def __call__(self, img: np.ndarray) -> list[np.ndarray]:
            left = np.zeros(img.shape[:2], bool)
            left[:, :10] = True
            return [np.ones(img.shape[:2], bool), left]

    labels = E.compute_entities(image, Halves())
    assert (labels[:, :10] == 2).all() and (labels[:, 10:] == 1).all()
    a = E.compute_entities(image)
    b = E.compute_entities(image, "felzenszwalb")
    c = E.compute_entities(image, E.get_generator("felzenszwalb"), max_entities=40)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert E.compute_entities(image, "slic", max_entities=2).max() <= 2
    with pytest.raises(ConfigError):
        E.compute_entities(image, max_entities=300)


# --- the store -------------------------------------------------------------------------------


def test_save_load_round_trip_with_subfolders(tmp_path: Path) -> None:
    store = E.EntityStore(tmp_path / "entities" / "felzenszwalb", generator=E.get_generator())
    labels = np.random.default_rng(1).integers(0, 41, size=(37, 53)).astype(np.uint8)
    path = store.save("images/sub/scene_0001", labels)
    assert path == tmp_path / "entities" / "felzenszwalb" / "images" / "sub" / "scene_0001.png"
    assert store.path_for("images/sub/scene_0001") == path
    assert store.has("images/sub/scene_0001") and not store.has("images/other")
    np.testing.assert_array_equal(store.load("images/sub/scene_0001"), labels)
    assert store.load("images/other") is None
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (53, 37)
    store.save("a.b", labels[:3, :4])  # a dot in the key is not a suffix
    assert (store.directory / "a.b.png").is_file()
    assert list(store.keys()) == ["a.b", "images/sub/scene_0001"] and len(store) == 2
    reread = E.EntityStore(store.directory)  # reading needs no generator
    np.testing.assert_array_equal(reread.load("images/sub/scene_0001"), labels)


def test_manifest_written_and_checked(tmp_path: Path) -> None:
    from entitwist import __version__

    gen = E.get_generator()
    folder = tmp_path / "store"
    E.EntityStore(folder, generator=gen, max_entities=40)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["generator"] == "felzenszwalb"
    assert manifest["params"] == gen.params
    assert manifest["checkpoint_sha256"] is None
    assert manifest["max_entities"] == 40
    assert manifest["entitwist_version"] == __version__
    assert manifest["created"].startswith("20")
    E.EntityStore(folder, generator=E.get_generator(), max_entities=40)  # same: fine
    with pytest.raises(DataError, match="other settings.*params") as info:
        E.EntityStore(folder, generator=E.get_generator(scale=10), max_entities=40)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="max_entities"):
        E.EntityStore(folder, generator=gen, max_entities=20)
    with pytest.raises(DataError, match="generator"):
        E.EntityStore(folder, generator=E.get_generator("slic"), max_entities=40)
    (folder / "manifest.json").write_text("{broken")
    with pytest.raises(DataError, match="manifest.*unreadable"):
        E.EntityStore(folder)


def test_store_tag_and_default_dir(tmp_path: Path) -> None:
    assert E.store_tag(E.get_generator()) == "felzenszwalb"
    assert E.store_tag(E.get_generator("slic")) == "slic"
    tag = E.store_tag(E.get_generator(scale=50))
    assert tag.startswith("felzenszwalb-") and len(tag) == len("felzenszwalb-") + 8
    assert E.store_tag(E.get_generator(), max_entities=20) != "felzenszwalb"
    assert E.store_tag(E.get_generator(scale=50)) == tag  # stable
    assert (
        E.default_store_dir(tmp_path, E.get_generator()) == tmp_path / "entities" / "felzenszwalb"
    )
    assert E.default_store_dir(tmp_path, E.get_generator(), out="/x") == Path("/x/felzenszwalb")


def test_labels_above_k_and_corrupt_maps(tmp_path: Path) -> None:
    store = E.EntityStore(tmp_path / "s", generator=E.get_generator(), max_entities=5)
    with pytest.raises(InputError, match=r"allowed 0\.\.5"):
        store.save("a", np.full((4, 4), 6, np.uint8))
    with pytest.raises(InputError, match="integer"):
        store.save("a", np.zeros((4, 4), np.float32))
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(store.directory / "big.png")
    with pytest.raises(DataError, match="label 9 > K=5"):
        store.load("big")
    (store.directory / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DataError, match="corrupt.*rerun entitwist entities"):
        store.load("bad")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(store.directory / "rgb.png")
    with pytest.raises(DataError, match="mode RGB"):
        store.load("rgb")


@pytest.mark.parametrize("key", ["", "../up", "/abs/x", "images/../x", ".hidden/x"])
def test_bad_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(InputError, match="key"):
        E.EntityStore(tmp_path).path_for(key)


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        E.EntityStore(target, generator=E.get_generator())
    with pytest.raises(DataError, match="cannot create"):
        E.EntityStore(target / "sub", generator=E.get_generator())


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = E.EntityStore(tmp_path / "s", generator=E.get_generator())
    store.save("k", np.ones((5, 5), np.uint8))
    original = Image.Image.save

    def half_then_fail(self, fp, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.save("k", np.full((5, 5), 2, np.uint8))
    with pytest.raises(OSError, match="disk full"):
        store.save("new", np.full((5, 5), 2, np.uint8))
    monkeypatch.setattr(Image.Image, "save", original)
    assert store.load("k").tolist() == [[1] * 5] * 5  # the old map is untouched
    assert not store.has("new")
    assert sorted(p.name for p in store.directory.iterdir()) == ["k.png", "manifest.json"]


def test_stale_temporaries_are_skipped_and_removed(tmp_path: Path) -> None:
    store = E.EntityStore(tmp_path / "s", generator=E.get_generator())
    store.save("images/a", np.ones((3, 3), np.uint8))
    stale = store.directory / "images" / ".b.png.abc123.tmp.png"
    stale.write_bytes(b"\x89PNG partial")
    fresh = store.directory / ".c.png.def.tmp.png"
    fresh.write_bytes(b"\x89PNG partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert list(store.keys()) == ["images/a"] and not store.has("images/b")
    assert store.remove_stale_temporaries() == 1  # the fresh one may belong to a live shard
    assert not stale.exists() and fresh.exists()
    assert store.remove_stale_temporaries(older_than_s=0) == 1 and not fresh.exists()


def test_image_key_and_store_lookup_without_a_model(tmp_path: Path) -> None:
    assert E.image_key(tmp_path, tmp_path / "images" / "scene_0001.png") == "images/scene_0001"
    assert E.image_key(tmp_path, tmp_path / "a" / "b" / "c.d.tif") == "a/b/c.d"
    with pytest.raises(DataError, match="outside the dataset root"):
        E.image_key(tmp_path / "root", tmp_path / "elsewhere.png")
    # without a model's needs (the dataset loaders on their own): "auto" is the only store
    assert E.resolve_store(tmp_path, "auto") is None and E.list_stores(tmp_path) == []
    E.EntityStore(tmp_path / "entities" / "felzenszwalb", generator=E.get_generator())
    assert E.resolve_store(tmp_path, "auto").name == "felzenszwalb"
    E.EntityStore(tmp_path / "entities" / "slic", generator=E.get_generator("slic"))
    assert [s.directory.name for s in E.list_stores(tmp_path)] == ["felzenszwalb", "slic"]
    with pytest.raises(DataError, match="several entity stores"):
        E.resolve_store(tmp_path, "auto")
    assert E.resolve_store(tmp_path, "slic").name == "slic"
    with pytest.raises(DataError, match="entitwist entities .* --generator sam"):
        E.resolve_store(tmp_path, "sam")
