"""`entitwist fit | test` through the command itself on tiny synthetic data (CPU).

Also: bad configs fail before any work with one line, and a tampered checkpoint is refused.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from entitwist.cli import main as entitwist_main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic_tiny.yaml")


def make_scenes(root: Path, n_scenes: int = 6) -> Path:
    """Synthetic JSONL scenes at 64 px plus their weight-free entity store."""
    from entitwist.data.synthetic import write_dataset
    from entitwist.entities.cli import main as entities_main

    write_dataset(root, n_scenes, size=64, seed=0, expressions_per_scene=2, progress=False)
    assert entities_main([str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes"))


def run(argv: list[str]) -> int:
    with mock.patch.object(sys, "argv", ["entitwist", *argv]):
        return entitwist_main(argv)


def test_fit_fast_dev_run_through_the_cli(scenes, tmp_path, capsys):
    out = tmp_path / "run"
    rc = run(
        ["fit", "--config", CONFIG, "--data.root", str(scenes), "--data.batch_size", "2"]
        + ["--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(out)]
    )
    assert rc == 0
    export = out / "export"
    assert (export / "model.safetensors").is_file() and (export / "config.json").is_file()
    info = json.loads((export / "training.json").read_text())
    assert info["selected_on"] == "last"  # fast_dev_run: no validation checkpoint
    from entitwist.models.enti_twistnet import EntiTwistNet

    model = EntiTwistNet.from_pretrained(export)
    assert model.config.visual.img_size == 64
    assert "exported the model" in capsys.readouterr().out


def test_fit_then_test_prints_table_and_writes_reports(scenes, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--config", CONFIG, "--data.root", str(scenes), "--data.batch_size", "2"]
    common += ["--trainer.default_root_dir", str(out)]
    rc = run(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    assert rc == 0
    ckpts = out / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    best = sorted(ckpts.glob("best-*.ckpt"))
    assert len(best) == 1
    info = json.loads((out / "export" / "training.json").read_text())
    assert info["selected_on"] == "val" and info["monitor"] == "val/mIoU"
    capsys.readouterr()

    rc = run(["test", *common, "--ckpt_path", str(best[0])])
    assert rc == 0
    printed = capsys.readouterr().out
    for column in ("Pr@0.5", "Pr@0.9", "oIoU", "mIoU", "lavt", "original", "test"):
        assert column in printed
    payload = json.loads((out / "test_results.json").read_text())
    rows = payload["results"]
    assert {r["protocol"] for r in rows} == {"lavt", "original"}
    assert all(r["split"] == "test" and r["dataset"] == "jsonl" for r in rows)
    n_test = sum(
        1 for line in (scenes / "annotations.jsonl").read_text().splitlines() if '"test"' in line
    )
    assert rows[0]["expressions"] == n_test
    for r in rows:
        assert 0.0 <= r["mIoU"] <= 100.0 and 0.0 <= r["oIoU"] <= 100.0
        assert r["Pr@0.5"] >= r["Pr@0.9"]
        assert f"{r['mIoU']:.2f}" in printed
    with open(out / "test_results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [t["protocol"] for t in table] == [r["protocol"] for r in rows]
    assert float(table[0]["mIoU"]) == pytest.approx(rows[0]["mIoU"], abs=1e-4)

    # `entitwist evaluate` on the same checkpoint gives the same numbers as `entitwist test`
    evaluated = tmp_path / "eval"
    rc = run(["evaluate", "-m", str(best[0]), "--root", str(scenes), "--split", "test"]
             + ["--batch-size", "3", "--out", str(evaluated), "--per-sample", "-q"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test split" in printed and "protocol lavt" in printed
    ev = json.loads((evaluated / "evaluate_jsonl_test.json").read_text())["results"]
    for a, b in zip(
        sorted(rows, key=lambda r: r["protocol"]), sorted(ev, key=lambda r: r["protocol"])
    ):
        assert a["protocol"] == b["protocol"]
        for k in ("Pr@0.5", "Pr@0.7", "Pr@0.9", "oIoU", "mIoU"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), (a["protocol"], k)
    with open(evaluated / "evaluate_jsonl_test_per_sample.csv") as fh:
        per = list(csv.DictReader(fh))
    assert len(per) == n_test
    miou = 100 * sum(float(r["lavt_IoU"]) for r in per) / len(per)
    assert miou == pytest.approx(
        rows[0]["mIoU"] if rows[0]["protocol"] == "lavt" else rows[1]["mIoU"], abs=1e-6
    )


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--data.root", "/nonexistent/scenes"], "dataset root"),
        (["--data.batch_size", "0"], "batch size 0"),
        (["--model.model_overrides", "{img_size: 64, max_entities: 256}"], "max_entities=256"),
        (["--model.model_name", "entitwist_huge"], "unknown model 'entitwist_huge'"),
        (["--ckpt_path", "/nonexistent/last.ckpt"], "does not exist"),
    ],
)
def test_bad_config_fails_before_any_work(scenes, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    argv = ["fit", "--config", CONFIG, "--data.root", str(scenes)]
    argv += ["--trainer.default_root_dir", str(out), *extra]
    with mock.patch(
        "entitwist.models.registry.create_model", side_effect=AssertionError("built a model")
    ):
        rc = run(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("entitwist: error:") and "\n" not in err, err
    assert needle in err
    assert not out.exists()


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['ENTITWIST_EVIL_MARKER']}",))


def test_tampered_checkpoint_is_refused(scenes, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ENTITWIST_EVIL_MARKER", str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, evil)
    rc = run(["test", "--config", CONFIG, "--data.root", str(scenes), "--ckpt_path", str(evil)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("entitwist: error: refused to load") and "\n" not in err
    assert not marker.exists()
