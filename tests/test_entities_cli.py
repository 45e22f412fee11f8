"""``entitwist entities``: dataset layouts, resume, shards, workers, bad input, a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import entitwist.entities as E
from entitwist.cli import main as entitwist_main
from entitwist.data.layouts import list_images
from entitwist.entities.cli import in_shard, main, parse_shard
from entitwist.errors import CheckpointError, ConfigError, DataError, EntitwistError
from entitwist.imaging import read_image


def texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 6 + 1, w // 6 + 1, 3)).astype(np.uint8)
    return np.repeat(np.repeat(small, 6, 0), 6, 1)[:h, :w].copy()


def write_image(path: Path, seed: int, size: tuple[int, int] = (30, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(texture(*size, seed)).save(path)


def make_layout(root: Path, layout: str) -> list[str]:
    """Tiny data in a real layout; returns the expected image keys."""
    if layout == "refsegrs":
        for i in range(3):
            write_image(root / "images" / f"{i}.tif", i)
            write_image(root / "masks" / f"{i}.tif", 10 + i)
        (root / "output_phrase_test.txt").write_text("0 a road\n")
        return [f"images/{i}" for i in range(3)]
    if layout == "rrsisd":
        folder = root / "images" / "rrsisd" / "JPEGImages"
        for i in range(3):
            write_image(folder / f"{i:05d}.jpg", i, (32, 32))
        (root / "rrsisd").mkdir()
        (root / "rrsisd" / "instances.json").write_text("{}")
        return [f"images/rrsisd/JPEGImages/{i:05d}" for i in range(3)]
    if layout == "risbench":
        for i in range(3):
            write_image(root / "img_rgb" / f"{i}.png", i)
            write_image(root / "mask" / f"{i}.png", 20 + i)
        return [f"img_rgb/{i}" for i in range(3)]
    if layout == "jsonl":
        write_image(root / "images" / "sub" / "a.png", 1, (24, 36))
        write_image(root / "images" / "b.png", 2, (50, 20))  # listed by bare name
        write_image(root / "masks" / "m.png", 3)
        rows = [
            {
                "sample_id": "1",
                "image": "images/sub/a.png",
                "mask": "masks/m.png",
                "expression": "x",
                "split": "train",
            },
            {
                "sample_id": "2",
                "image": "images/sub/a.png",
                "mask": "masks/m.png",
                "expression": "y",
                "split": "test",
            },
            {
                "sample_id": "3",
                "image": "b.png",
                "mask": "m.png",
                "expression": "z",
                "split": "test",
            },
        ]
        (root / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return ["images/b", "images/sub/a"]
    assert layout == "folder"
    write_image(root / "top.png", 1)
    write_image(root / "deep" / "er" / "x.jpg", 2)
    write_image(root / ".hidden.png", 3)
    write_image(root / "entities" / "old" / "map.png", 4)  # a store, not an image
    (root / "notes.txt").write_text("not an image")
    return ["deep/er/x", "top"]


@pytest.mark.parametrize("layout", ["refsegrs", "rrsisd", "risbench", "jsonl", "folder"])
def test_layouts_write_one_map_per_image(
    tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / layout
    keys = make_layout(root, layout)
    images = list_images(root, "auto")
    assert [E.image_key(root, p) for p in images] == keys
    assert list_images(root, layout) == images
    assert main([str(root), "--dataset", layout, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"images: {len(keys)} in shard, {len(keys)} done, 0 skipped (stored), 0 failed" in out
    assert "masks per image: mean" in out and "seconds per image" in out
    store = E.EntityStore(root / "entities" / "felzenszwalb")
    assert store.manifest["generator"] == "felzenszwalb"
    assert sorted(k for k in store.keys()) == keys
    gen = E.get_generator()
    for key, path in zip(keys, images):
        image = read_image(path)
        labels = store.load(key)
        assert labels.shape == image.shape[:2]
        np.testing.assert_array_equal(labels, E.compute_entities(image, gen, 40))


def test_resume_skips_finished_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    for i in range(5):
        write_image(root / "images" / f"{i}.png", i)
    assert main([str(root), "--dataset", "folder", "--quiet", "--limit", "2"]) == 0
    assert "2 in shard, 2 done, 0 skipped" in capsys.readouterr().out
    first = root / "entities" / "felzenszwalb" / "images" / "0.png"
    stamp = first.stat().st_mtime_ns
    assert main([str(root), "--dataset", "folder", "--quiet"]) == 0
    assert "5 in shard, 3 done, 2 skipped" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp  # not rewritten
    assert main([str(root), "--dataset", "folder", "--quiet"]) == 0
    assert "5 in shard, 0 done, 5 skipped" in capsys.readouterr().out


def test_a_changed_image_is_recomputed_and_a_stale_map_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from entitwist.data import load_dataset

    root = tmp_path / "d"
    make_layout(root, "jsonl")
    assert main([str(root), "--dataset", "jsonl", "--quiet"]) == 0
    capsys.readouterr()
    store = E.EntityStore(root / "entities" / "felzenszwalb")
    image = root / "images" / "b.png"
    assert store.source_of("images/b") == E.image_fingerprint(image)
    old = store.load("images/b")
    # the image is replaced by another picture of the same size (same name, same shape)
    write_image(image, 77, (50, 20))
    new_print = E.image_fingerprint(image)
    assert store.source_of("images/b") != new_print
    assert not store.has("images/b", new_print) and store.has("images/b")
    with pytest.raises(DataError, match="another version of image 'images/b'"):
        store.load("images/b", source=new_print)
    ds = load_dataset("jsonl", root, "test", entities="felzenszwalb")
    index = [i for i in range(len(ds)) if ds.records[i].image_key == "images/b"][0]
    with pytest.raises(DataError, match="the image changed since"):
        ds[index]
    # a rerun redoes exactly the changed image, and the dataset reads the new map
    assert main([str(root), "--dataset", "jsonl", "--quiet"]) == 0
    assert "2 in shard, 1 done, 1 skipped" in capsys.readouterr().out
    fresh = store.load("images/b", source=new_print)
    expected = E.compute_entities(read_image(image), E.get_generator(), 40)
    np.testing.assert_array_equal(fresh, expected)
    assert not np.array_equal(fresh, old)
    np.testing.assert_array_equal(ds[index]["entities"], fresh)


def test_the_dataset_hashes_each_image_once(tmp_path: Path, monkeypatch) -> None:
    import entitwist.entities.store as store_module
    from entitwist.data import load_dataset

    root = tmp_path / "d"
    make_layout(root, "jsonl")
    assert main([str(root), "--dataset", "jsonl", "--quiet"]) == 0
    hashed: list[str] = []
    real = store_module.image_fingerprint

    def counting(path):
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(store_module, "image_fingerprint", counting)
    ds = load_dataset("jsonl", root, "test", entities="felzenszwalb")
    for _ in range(2):  # two epochs over expressions that share an image
        for i in range(len(ds)):
            ds[i]
    assert sorted(hashed) == sorted({Path(r.image_path).name for r in ds.records})


def test_a_map_without_a_fingerprint_is_taken_as_it_is(tmp_path: Path) -> None:
    store = E.EntityStore(tmp_path / "s")
    labels = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    store.save("images/x", labels)  # as stores written before fingerprints were recorded
    assert store.source_of("images/x") is None
    assert store.has("images/x", "blake2b:" + "0" * 32)
    np.testing.assert_array_equal(store.load("images/x", source="blake2b:" + "0" * 32), labels)


def test_shards_cover_every_image_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    for i in range(12):
        write_image(root / f"{i:02d}.png", i, (12, 12))
    keys = [f"{i:02d}" for i in range(12)]
    parts = [{k for k in keys if in_shard(k, (i, 3))} for i in range(3)]
    assert set().union(*parts) == set(keys) and sum(map(len, parts)) == 12
    done = 0
    for i in range(3):
        assert main([str(root), "--dataset", "folder", "--quiet", "--shard", f"{i}/3"]) == 0
        out = capsys.readouterr().out
        assert f"images: {len(parts[i])} in shard, {len(parts[i])} done" in out
        done += len(parts[i])
    assert done == 12 and len(E.EntityStore(root / "entities" / "felzenszwalb")) == 12
    assert parse_shard("2/5") == (2, 5)


def test_two_workers_equal_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    for i in range(4):
        write_image(root / f"{i}.png", i, (40, 30))
    assert main([str(root), "--quiet", "--out", str(tmp_path / "w1")]) == 0
    assert main([str(root), "--quiet", "--workers", "2", "--out", str(tmp_path / "w2")]) == 0
    assert "4 done" in capsys.readouterr().out
    a = E.EntityStore(tmp_path / "w1" / "felzenszwalb")
    b = E.EntityStore(tmp_path / "w2" / "felzenszwalb")
    assert list(a.keys()) == list(b.keys()) == ["0", "1", "2", "3"]
    for key in a.keys():
        np.testing.assert_array_equal(a.load(key), b.load(key))
    assert not (root / "entities").exists()  # --out: nothing written under the root


def test_params_and_k_pick_their_own_store(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_image(root / "a.png", 0)
    assert main([str(root), "--quiet", "--param", "scale=50", "--max-entities", "3"]) == 0
    (store,) = E.list_stores(root)
    assert store.directory.name.startswith("felzenszwalb-")
    assert store.manifest["params"]["scale"] == 50.0 and store.manifest["max_entities"] == 3
    assert store.load("a").max() <= 3


def test_corrupt_image_is_counted_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "d"
    write_image(root / "a.png", 0)
    write_image(root / "c.png", 1)
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main([str(root), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "3 in shard, 2 done, 0 skipped (stored), 1 failed" in captured.out
    assert "b.png" in captured.err and "corrupt" in captured.err
    store = E.EntityStore(root / "entities" / "felzenszwalb")
    assert list(store.keys()) == ["a", "c"]
    assert main([str(root), "--quiet"]) == 1  # rerun retries only the failed one
    assert "0 done, 2 skipped (stored), 1 failed" in capsys.readouterr().out


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert entitwist_main(["entities", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("entitwist: error: ") and "\n" not in err, err
    return err


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "d"
    write_image(root / "a.png", 0)
    assert "does not exist" in run_error([str(tmp_path / "missing")], capsys)
    (tmp_path / "empty").mkdir()
    assert "no images found" in run_error([str(tmp_path / "empty")], capsys)
    assert "--shard '3/2'" in run_error([str(root), "--shard", "3/2"], capsys)
    assert "--shard 'a/b'" in run_error([str(root), "--shard", "a/b"], capsys)
    assert "unknown entity generator 'sam2'" in run_error(
        [str(root), "--generator", "sam2"], capsys
    )
    err = run_error(
        [str(root), "--generator", "sam", "--sam-checkpoint", str(tmp_path / "no.pth")], capsys
    )
    assert "SAM checkpoint" in err and "not found" in err
    assert "needs a checkpoint" in run_error([str(root), "--generator", "sam"], capsys)
    assert "1..255" in run_error([str(root), "--max-entities", "300"], capsys)
    assert "does not apply" in run_error([str(root), "--sam-checkpoint", "x.pth"], capsys)
    assert "unknown parameter" in run_error([str(root), "--param", "colour=3"], capsys)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store root should be")
    assert "cannot create entity store" in run_error([str(root), "--out", str(blocker)], capsys)
    (tmp_path / "bad_jsonl").mkdir()
    (tmp_path / "bad_jsonl" / "annotations.jsonl").write_text('{"image": "a.png"}\n{oops\n')
    assert "line 2 is not JSON" in run_error([str(tmp_path / "bad_jsonl")], capsys)
    assert not (root / "entities").exists() or not any((root / "entities").rglob("*.png"))
    with pytest.raises(ConfigError):
        main([str(root), "--workers", "0"])
    with pytest.raises(DataError):
        main([str(root), "--dataset", "risbench"])


def test_store_of_another_checkpoint_is_not_mixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "d"
    write_image(root / "a.png", 0)
    first, second = tmp_path / "one.pth", tmp_path / "two.pth"
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights two")
    gen = E.get_generator("sam", checkpoint=first)
    E.EntityStore(E.default_store_dir(root, gen), generator=gen)  # a store made with one.pth
    err = run_error([str(root), "--generator", "sam", "--sam-checkpoint", str(second)], capsys)
    assert "other settings (checkpoint_sha256" in err
    with pytest.raises(
        CheckpointError
    ):  # broken weights stop the run instead of failing each image
        main([str(root), "--generator", "sam", "--sam-checkpoint", str(first), "-q"])


def test_maps_are_computed_on_the_picture_the_network_sees(tmp_path: Path) -> None:
    """A 16-bit image: the stored map is the generator's map of imaging.read_image's
    picture (the per-band 2-98 % stretch, or the --stretch asked for), not of another one."""
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    sixteen = (rng.random((40, 48)) ** 3 * 60000).astype(np.uint16)
    sixteen[10:30, 12:36] += 3000
    Image.fromarray(sixteen).save(root / "images" / "s.png")
    gen = E.get_generator("felzenszwalb")
    for extra, stretch in (([], None), (["--stretch", "0,100"], "0,100")):
        out = tmp_path / f"out{len(extra)}"
        assert main([str(root), "--dataset", "folder", "--quiet", "--out", str(out), *extra]) == 0
        stored = [p for p in out.rglob("*.png")]
        assert len(stored) == 1
        want = E.compute_entities(read_image(root / "images" / "s.png", stretch=stretch), gen, 40)
        np.testing.assert_array_equal(np.asarray(Image.open(stored[0])), want)
    with pytest.raises(DataError, match="absent|not found"):
        read_image(tmp_path / "none.png")
    with pytest.raises(EntitwistError, match="bands"):
        main([str(root), "--dataset", "folder", "--bands", "1,2"])


def test_killed_run_leaves_no_partial_map_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for i in range(30):
        write_image(root / "images" / f"{i:02d}.png", i, (320, 320))
    argv = ["--param", "work_size=0", "--quiet"]  # full-size segmentation: slow enough to kill
    cmd = [sys.executable, "-m", "entitwist.cli", "entities", str(root), *argv]
    env = {**os.environ, "PYTHONPATH": str(Path(E.__file__).parents[2])}
    store_dir = root / "entities" / E.store_tag(E.get_generator(work_size=0))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        maps = list((store_dir / "images").glob("[0-9]*.png")) if store_dir.exists() else []
        if len(maps) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = E.EntityStore(store_dir)
    done = list(store.keys())
    assert 3 <= len(done) < 30, "the run finished before the kill; the test needs more images"
    for key in done:  # every visible map is complete and readable
        assert store.load(key).shape == (320, 320)
    leftovers = [p for p in store_dir.rglob("*") if p.is_file() and p.name not in {"manifest.json"}]
    for p in leftovers:
        if E.image_key(store_dir, p) not in done:
            assert p.name.startswith(".") and ".tmp" in p.name  # only hidden temporaries
            os.utime(p, (time.time() - 3600,) * 2)  # as if from a long-dead run
    stamps = {k: store.path_for(k).stat().st_mtime_ns for k in done}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"30 in shard, {30 - len(done)} done, {len(done)} skipped" in rerun.stdout
    assert {k: store.path_for(k).stat().st_mtime_ns for k in done} == stamps
    assert not [p for p in store_dir.rglob(".*") if p.is_file()]  # temporaries cleaned
    gen = E.get_generator(work_size=0)
    keys = list(store.keys())
    assert keys == [f"images/{i:02d}" for i in range(30)]
    for i in range(30):  # equal to a clean computation of every image
        image = read_image(root / "images" / f"{i:02d}.png")
        np.testing.assert_array_equal(store.load(f"images/{i:02d}"), E.compute_entities(image, gen))
