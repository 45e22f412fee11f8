"""entitwist figures: overlays, Pr@X, K sweep, stage maps (Fig. 5), DAT PCA (Fig. 8).

Every command is run through ``entitwist.cli.main`` on a tiny model (64 px) and a few
synthetic scenes; the numbers behind each plot are checked against a direct computation.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entitwist.cli import main as cli
from entitwist.errors import ConfigError, InputError
from entitwist.evaluation.figures import (
    dat_pca,
    feature_map,
    ksweep_points,
    pca,
    pr_curve,
    prx_curve_of,
    read_results,
    run_single,
    separation,
    stage_maps,
    thresholds,
)
from entitwist.metrics import summarize

SENTENCE = "the building next to the river"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A full (SEG + DAT) and a baseline tiny model, and four synthetic 64 px scenes."""
    import entitwist
    from entitwist.data.synthetic import write_dataset

    base = tmp_path_factory.mktemp("figures")
    torch.manual_seed(0)
    entitwist.create_model("entitwist_tiny", img_size=64).save_pretrained(base / "full")
    torch.manual_seed(1)
    entitwist.create_model("entitwist_tiny", img_size=64, seg=False, dat="none").save_pretrained(
        base / "baseline"
    )
    write_dataset(base / "data", 4, size=64, seed=1, expressions_per_scene=2, progress=False)
    # the entity store the full model was built for (felzenszwalb, K=40)
    assert cli(["entities", str(base / "data"), "-q"]) == 0
    image = sorted((base / "data" / "images").glob("*.png"))[0]
    return {
        "base": base,
        "full": base / "full",
        "baseline": base / "baseline",
        "data": base / "data",
        "image": image,
    }


def _png(path: Path, min_w: int = 300, min_h: int = 200) -> tuple[int, int]:
    """Decode the whole PNG and check it is a sensible picture, not blank."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        w, h = im.size
        arr = np.asarray(im.convert("RGB"))
    assert w >= min_w and h >= min_h, (w, h)
    assert arr.std() > 5  # something was drawn
    return w, h


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("entitwist: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------------------ numbers
def test_pr_curve_equals_metrics_summarize():
    rng = np.random.default_rng(0)
    union = rng.integers(1, 200, size=300)
    inter = (union * rng.random(300)).astype(np.int64)
    inter[:5] = union[:5]  # IoU exactly 1
    inter[5:10] = (union[5:10] * 0.6).astype(np.int64)
    ref = summarize(torch.from_numpy(inter), torch.from_numpy(union))
    ious = inter / union
    xs = thresholds(0.5, 0.9, 0.1)
    np.testing.assert_array_equal(xs, [0.5, 0.6, 0.7, 0.8, 0.9])
    got = pr_curve(ious, xs)
    for x, y in zip(xs, got):
        assert y == pytest.approx(float(ref[f"Pr@{x:g}"]), abs=1e-9)
    fine = thresholds(0.5, 0.9, 0.01)
    assert len(fine) == 41 and fine[0] == 0.5 and fine[-1] == 0.9 and 0.6 in fine
    curve = pr_curve(ious, fine)
    assert np.all(np.diff(curve) <= 0)  # non-increasing in X
    assert curve[0] == pytest.approx(100 * np.mean(ious >= 0.5))
    with pytest.raises(InputError):
        pr_curve([], fine)


def test_pca_matches_covariance_eigendecomposition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 3.0
    p = pca(x, 3)
    cov = np.cov(x, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:3]
    np.testing.assert_allclose(p["variance"], vals[order], rtol=1e-9)
    for i, j in enumerate(order):
        assert abs(np.dot(p["components"][i], vecs[:, j])) == pytest.approx(1.0, abs=1e-9)
        assert p["components"][i][np.argmax(np.abs(p["components"][i]))] > 0
    np.testing.assert_allclose(p["projected"], (x - x.mean(0)) @ p["components"].T, atol=1e-9)
    np.testing.assert_allclose(p["projected"].var(axis=0, ddof=1), p["variance"], rtol=1e-9)
    # fewer dimensions than components: padded with zeros
    q = pca(rng.normal(size=(5, 2)), 3)
    assert q["projected"].shape == (5, 3) and np.all(q["projected"][:, 2] == 0)


def test_feature_map_reductions():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(1, 8, 5, 7)).astype(np.float32)
    mean = f[0].mean(axis=0)
    expect = (mean - mean.min()) / (mean.max() - mean.min())
    np.testing.assert_allclose(feature_map(torch.from_numpy(f), "mean"), expect, atol=1e-6)
    norm = np.linalg.norm(f[0], axis=0)
    np.testing.assert_allclose(
        feature_map(f, "norm"), (norm - norm.min()) / (norm.max() - norm.min()), atol=1e-6
    )
    # rank-one features: the first principal component is the spatial pattern itself
    pattern = rng.random((5, 7))
    loadings = rng.random(8) + 0.5  # positive, so the channel mean follows the pattern
    g = loadings[:, None, None] * pattern[None]
    np.testing.assert_allclose(
        feature_map(g, "pca"), (pattern - pattern.min()) / np.ptp(pattern), atol=1e-9
    )
    assert np.all(feature_map(np.ones((3, 4, 4)), "mean") == 0)
    with pytest.raises(ConfigError):
        feature_map(f, "max")


def test_dat_pca_numbers():
    rng = np.random.default_rng(3)
    d, h, w = 6, 10, 12
    vis = rng.normal(size=(d, h, w))
    offset = np.arange(1, d + 1, dtype=np.float64)
    txt = vis + offset[:, None, None]  # same cloud, shifted
    cube = torch.from_numpy(np.concatenate([vis, txt])[None])  # (1, 2d, h, w)
    sem = torch.from_numpy(np.concatenate([vis, vis])[None])  # clouds coincide
    out = dat_pca({"cube": cube, "sem": sem}, max_points=50, seed=0)
    before, after = out["before"], out["after"]
    assert before["distance"] == pytest.approx(float(np.linalg.norm(offset)))
    assert after["distance"] == pytest.approx(0.0, abs=1e-12) and after["separation"] == 0.0
    assert before["visual"].shape == (50, 3) and before["textual"].shape == (50, 3)
    idx = before["index"]
    assert len(set(idx.tolist())) == 50 and idx.max() < h * w
    # the projection is the PCA of both kept clouds together
    pts = np.concatenate([vis.reshape(d, -1).T[idx], txt.reshape(d, -1).T[idx]])
    np.testing.assert_allclose(
        np.concatenate([before["visual"], before["textual"]]), pca(pts, 3)["projected"]
    )
    dist, rel = separation(vis.reshape(d, -1).T, txt.reshape(d, -1).T)
    assert dist == pytest.approx(before["distance"]) and rel == pytest.approx(before["separation"])
    with pytest.raises(ConfigError, match="DAT off"):
        dat_pca({"f_in": cube, "f_out": cube})


# ------------------------------------------------------------------------------ results files
def _write_results(path: Path, ious: np.ndarray | None, **row_extra) -> dict:
    from entitwist.evaluation.tables import make_rows, write_reports

    union = np.full(len(ious), 1000) if ious is not None else np.full(4, 1000)
    inter = np.round((ious if ious is not None else np.array([0.55, 0.72, 0.91, 0.3])) * 1000)
    metrics = {k: float(v) for k, v in summarize(torch.tensor(inter), torch.tensor(union)).items()}
    rows = make_rows(
        {"lavt": metrics},
        dataset=row_extra.pop("dataset", "jsonl"),
        split=row_extra.pop("split", "test"),
        model="m",
        expressions=len(inter),
    )
    for r in rows:
        r.update(row_extra)
    write_reports(path.parent, path.stem, rows, checkpoint=None)
    if ious is not None:
        with open(path.with_name(f"{path.stem}_per_sample.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["sample_id", "lavt_I", "lavt_U", "lavt_IoU"])
            for i, (a, b) in enumerate(zip(inter, union)):
                wr.writerow([f"s{i}", int(a), int(b), a / b])
    return metrics


def test_prx_command_plots_values_from_ious(tmp_path, capsys):
    rng = np.random.default_rng(4)
    ious = np.round(rng.random(120), 3)
    _write_results(tmp_path / "a" / "evaluate_jsonl_test.json", ious)
    coarse = _write_results(tmp_path / "b" / "test_results.json", None)

    a = read_results(tmp_path / "a" / "evaluate_jsonl_test.json")
    np.testing.assert_allclose(a["ious"], ious)
    assert a["source"].endswith("_per_sample.csv")
    xs = thresholds(0.5, 0.9, 0.01)
    curve = prx_curve_of(a, xs)
    assert curve["fine"]
    np.testing.assert_allclose(curve["y"], [100 * np.mean(ious >= x) for x in xs])
    b = prx_curve_of(read_results(tmp_path / "b" / "test_results.json"), xs)
    assert not b["fine"]
    np.testing.assert_allclose(b["x"], [0.5, 0.6, 0.7, 0.8, 0.9])
    np.testing.assert_allclose(b["y"], [coarse[f"Pr@{x:g}"] for x in b["x"]])
    assert b["y"][0] == 75.0  # 0.55, 0.72, 0.91 of 4

    out = tmp_path / "prx.png"
    rc = cli(
        [
            "figures",
            "prx",
            "--results",
            str(tmp_path / "a" / "evaluate_jsonl_test.json"),
            str(tmp_path / "b" / "test_results.json"),
            "--labels",
            "fine",
            "coarse",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"Pr@0.7={100 * np.mean(ious >= 0.7):.2f}" in printed
    assert "Pr@0.5=75.00" in printed
    _png(out)
    assert not list(tmp_path.glob(".prx.png*"))  # no temporary left


def test_prx_command_scores_a_checkpoint(world, tmp_path, capsys):
    from entitwist.data import ReferringTransform, load_dataset
    from entitwist.evaluation.evaluate import evaluate, load_model

    out = tmp_path / "prx.png"
    rc = cli(
        [
            "figures",
            "prx",
            "-m",
            str(world["full"]),
            "--root",
            str(world["data"]),
            "--split",
            "train",
            "--step",
            "0.05",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    _png(out)
    printed = capsys.readouterr().out
    model = load_model(world["full"])
    ds = load_dataset(
        "jsonl",
        world["data"],
        "train",
        one_expression_per_ref=False,
        transform=ReferringTransform(64, model.tokenizer),
    )
    _, per = evaluate(model, ds, protocols=("lavt",), progress=False)
    ious = [r["lavt_IoU"] for r in per]
    assert f"Pr@0.5={100 * np.mean(np.asarray(ious) >= 0.5):.2f}" in printed


def test_ksweep_reads_miou_and_sizes(tmp_path, capsys):
    runs = tmp_path / "runs"
    want = {}
    for ds_name in ("rrsisd", "refsegrs"):
        for k, miou in ((10, 60.5), (20, 63.25), (40, 66.83)):
            d = runs / f"fig6_{ds_name}_k{k}" / "version_0"  # K from the run's folder name
            m = _write_results(d / "test_results.json", None, dataset=ds_name)
            _write_results(d / "val_results.json", None, dataset=ds_name, split="val")
            # set a known mIoU in the JSON
            data = json.loads((d / "test_results.json").read_text())
            data["results"][0]["mIoU"] = miou + (1 if ds_name == "refsegrs" else 0)
            (d / "test_results.json").write_text(json.dumps(data))
            want.setdefault(ds_name, []).append((k, data["results"][0]["mIoU"]))
            assert m  # written
    series = ksweep_points([runs])
    assert series == {name: sorted(v) for name, v in want.items()}
    # K from a max_entities field, from the checkpoint's config.json, or --k
    single = tmp_path / "single.json"
    m30 = _write_results(single, None, max_entities=30)
    assert ksweep_points([single]) == {"jsonl": [(30, pytest.approx(m30["mIoU"]))]}
    assert ksweep_points([single], ks=[50]) == {"jsonl": [(50, pytest.approx(m30["mIoU"]))]}
    with pytest.raises(InputError, match="K=30"):
        ksweep_points([single, single])
    ckpt = tmp_path / "export"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"fusion": {"max_entities": 25}}))
    from_cfg = tmp_path / "other.json"
    _write_results(from_cfg, None)
    data = json.loads(from_cfg.read_text())
    data["checkpoint"] = str(ckpt)
    from_cfg.write_text(json.dumps(data))
    assert ksweep_points([from_cfg])["jsonl"][0][0] == 25
    no_k = tmp_path / "plain.json"
    _write_results(no_k, None)
    with pytest.raises(InputError, match="--k"):
        ksweep_points([no_k])

    out = tmp_path / "k.png"
    assert cli(["figures", "ksweep", "--results", str(runs), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rrsisd: K=10: 60.50  K=20: 63.25  K=40: 66.83" in printed
    assert "refsegrs: K=10: 61.50" in printed
    _png(out)


# ------------------------------------------------------------------------------ model figures
def test_stages_command_and_maps(world, tmp_path, capsys):
    from entitwist.evaluation.evaluate import load_model
    from entitwist.imaging import read_image

    model = load_model(world["full"])
    small, out = run_single(model, read_image(world["image"]), SENTENCE, "auto", "cpu")
    assert small.shape == (64, 64, 3)
    maps = stage_maps(out["stages"], "mean")
    assert [m.shape for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    for m, s in zip(maps, out["stages"]):
        assert m.min() == 0 and m.max() == pytest.approx(1)
        np.testing.assert_allclose(m, feature_map(s["f_out"], "mean"))

    png = tmp_path / "stages.png"
    rc = cli(
        [
            "figures",
            "stages",
            "-m",
            str(world["full"]),
            "--compare",
            str(world["baseline"]),
            "--image",
            str(world["image"]),
            "--sentence",
            SENTENCE,
            "--reduce",
            "pca",
            "--blend",
            "0.4",
            "-o",
            str(png),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "full: SEG + DAT (sp_sa): stages 16x16, 8x8, 4x4, 2x2" in printed
    assert "baseline: baseline (no SEG, no DAT)" in printed
    w, h = _png(png)
    assert h > 300  # two rows


def test_pca_command_prints_the_plotted_distances(world, tmp_path, capsys):
    from entitwist.evaluation.evaluate import load_model
    from entitwist.imaging import read_image

    png = tmp_path / "pca.png"
    rc = cli(
        [
            "figures",
            "pca",
            "-m",
            str(world["full"]),
            "--image",
            str(world["image"]),
            "--sentence",
            SENTENCE,
            "--stage",
            "2",
            "--entities",
            "none",
            "-o",
            str(png),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    _png(png)
    found = [float(v) for v in re.findall(r"centroid distance ([0-9.]+)", printed)]
    model = load_model(world["full"])
    _, out = run_single(model, read_image(world["image"]), SENTENCE, None, "cpu")
    result = dat_pca(out["stages"][1])
    assert found == [
        pytest.approx(result["before"]["distance"], abs=1e-4),
        pytest.approx(result["after"]["distance"], abs=1e-4),
    ]
    assert result["before"]["visual"].shape == (64, 3)  # 8x8 positions at stage 2


def test_overlays_command(world, tmp_path, capsys):
    from entitwist.data import ReferringTransform, load_dataset
    from entitwist.evaluation.evaluate import evaluate, load_model

    out = tmp_path / "ov"
    rc = cli(
        [
            "figures",
            "overlays",
            "-m",
            str(world["full"]),
            "--root",
            str(world["data"]),
            "--split",
            "train",
            "--n",
            "3",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    capsys.readouterr()
    summary = json.loads((out / "overlays.json").read_text())["samples"]
    assert len(summary) == 3
    for s in summary:
        _png(out / f"{s['sample_id']}.png", min_w=400, min_h=150)
    _png(out / "grid.png", min_w=400, min_h=500)
    # the IoU in the captions is evaluate's original-size IoU of the same samples
    model = load_model(world["full"])
    ds = load_dataset(
        "jsonl",
        world["data"],
        "train",
        one_expression_per_ref=False,
        transform=ReferringTransform(64, model.tokenizer),
    )
    _, per = evaluate(model, ds, protocols=("original",), progress=False)
    ref = {r["sample_id"]: r["original_IoU"] for r in per}
    for s in summary:
        assert s["IoU"] == pytest.approx(ref[s["sample_id"]], abs=1e-12)

    chosen = summary[-1]["sample_id"]
    out2 = tmp_path / "ov2"
    assert (
        cli(
            [
                "figures",
                "overlays",
                "-m",
                str(world["full"]),
                "--root",
                str(world["data"]),
                "--split",
                "train",
                "--ids",
                chosen,
                "-o",
                str(out2),
            ]
        )
        == 0
    )
    assert [
        s["sample_id"] for s in json.loads((out2 / "overlays.json").read_text())["samples"]
    ] == [chosen]
    capsys.readouterr()
    assert (
        cli(
            [
                "figures",
                "overlays",
                "-m",
                str(world["full"]),
                "--root",
                str(world["data"]),
                "--split",
                "train",
                "--ids",
                "nope",
                "-o",
                str(out2),
            ]
        )
        == 2
    )
    assert "nope" in _err(capsys)


# ------------------------------------------------------------------------------ bad input
def test_bad_input_one_line_exit_2(world, tmp_path, capsys):
    img, full, base = str(world["image"]), str(world["full"]), str(world["baseline"])
    no_metrics = tmp_path / "empty.json"
    no_metrics.write_text(json.dumps({"results": [{"dataset": "x"}]}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cases = [
        (
            [
                "figures",
                "stages",
                "-m",
                str(tmp_path / "missing"),
                "--image",
                img,
                "--sentence",
                "a",
                "-o",
                str(tmp_path / "s.png"),
            ],
            "does not exist",
        ),
        (
            [
                "figures",
                "overlays",
                "-m",
                str(tmp_path / "missing"),
                "--root",
                str(world["data"]),
                "-o",
                str(tmp_path / "o"),
            ],
            "does not exist",
        ),
        (
            [
                "figures",
                "prx",
                "--results",
                str(tmp_path / "nothere.json"),
                "-o",
                str(tmp_path / "p.png"),
            ],
            "does not exist",
        ),
        (
            ["figures", "prx", "--results", str(no_metrics), "-o", str(tmp_path / "p.png")],
            "no metrics",
        ),
        (
            ["figures", "prx", "--results", str(broken), "-o", str(tmp_path / "p.png")],
            "not valid JSON",
        ),
        (
            ["figures", "ksweep", "--results", str(no_metrics), "-o", str(tmp_path / "k.png")],
            "no metrics",
        ),
        (
            [
                "figures",
                "pca",
                "-m",
                base,
                "--image",
                img,
                "--sentence",
                "a",
                "-o",
                str(tmp_path / "c.png"),
            ],
            "DAT off",
        ),
        (
            [
                "figures",
                "pca",
                "-m",
                full,
                "--image",
                img,
                "--sentence",
                "a",
                "--stage",
                "7",
                "-o",
                str(tmp_path / "c.png"),
            ],
            "--stage 7",
        ),
        (
            [
                "figures",
                "pca",
                "-m",
                full,
                "--image",
                img,
                "--sentence",
                "a",
                "-o",
                str(tmp_path / "c.jpg"),
            ],
            ".png",
        ),
        (
            [
                "figures",
                "stages",
                "-m",
                full,
                "--image",
                str(tmp_path / "no.png"),
                "--sentence",
                "a",
                "-o",
                str(tmp_path / "s.png"),
            ],
            "no.png",
        ),
        (
            [
                "figures",
                "stages",
                "-m",
                full,
                "--image",
                img,
                "--sentence",
                "  ",
                "-o",
                str(tmp_path / "s.png"),
            ],
            "sentence",
        ),
        (
            [
                "figures",
                "stages",
                "-m",
                full,
                "--image",
                img,
                "--sentence",
                "a",
                "--blend",
                "2",
                "-o",
                str(tmp_path / "s.png"),
            ],
            "--blend 2",
        ),
    ]
    for argv, needle in cases:
        assert cli(argv) == 2, argv
        assert needle in _err(capsys), argv
    # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.suffix in {".png", ".jpg"}]
