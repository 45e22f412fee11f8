"""A run killed with SIGKILL at a random step and resumed from last.ckpt ends exactly where
an uninterrupted run ends: same weights, optimiser state and validation metrics (CPU,
deterministic settings, `entitwist fit` in subprocesses)."""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic_tiny.yaml")
BATCH, EPOCHS = 2, 2


def make_scenes(root: Path, n_scenes: int = 6) -> Path:
    from entitwist.data.synthetic import write_dataset
    from entitwist.entities.cli import main as entities_main

    write_dataset(root, n_scenes, size=64, seed=0, expressions_per_scene=2, progress=False)
    assert entities_main([str(root)]) == 0
    return root


def fit_command(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "entitwist.cli", "fit", "--config", CONFIG,
        "--data.root", str(root), "--data.batch_size", str(BATCH),
        "--trainer.max_epochs", str(EPOCHS), "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(out / "logs"),
        "--checkpoint.every_n_train_steps", "1", "--checkpoint.monitor", "null",
        "--checkpoint.filename", "step{step:06d}", "--checkpoint.dirpath", str(out / "checkpoints"), *extra,
    ]  # fmt: skip


def latest_checkpoint(folder: Path) -> tuple[Path, int]:
    """The readable checkpoint with the highest global step (the kill may land between the
    step checkpoint and last.ckpt, or while one is being written)."""
    best: tuple[Path, int] | None = None
    for path in folder.glob("*.ckpt"):
        try:
            step = int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
        except Exception:
            continue
        if best is None or step > best[1]:
            best = (path, step)
    assert best is not None, f"no readable checkpoint in {folder}"
    return best


def env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }


def last_val_metrics(out: Path) -> dict[str, float]:
    rows = []
    for path in sorted((out / "logs").glob("lightning_logs/version_*/metrics.csv")):
        with open(path) as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("val/mIoU")]
    assert rows, f"no validation metrics logged under {out}"
    last = rows[-1]
    return {k: float(v) for k, v in last.items() if k.startswith("val/") and v}


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    root = make_scenes(tmp_path / "scenes")
    from entitwist.data import load_dataset

    n_train = len(load_dataset("jsonl", root, "train", entities=None))  # refs (one expression each)
    steps_per_epoch = -(-n_train // BATCH)
    total = steps_per_epoch * EPOCHS
    kill_at = random.randrange(
        1, total - 1
    )  # a checkpoint of step kill_at exists, training is not over

    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.Popen(
        fit_command(root, full), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    victim = subprocess.Popen(
        fit_command(root, killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt_dir = killed / "checkpoints"
    deadline = time.monotonic() + 300
    try:
        while True:
            steps = [
                int(m.group(1))
                for p in ckpt_dir.glob("step*.ckpt")
                if (m := re.match(r"step(\d+)\.ckpt$", p.name))
            ]
            if steps and max(steps) >= kill_at:
                break
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "timed out waiting for checkpoints"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    latest, resumed_from = latest_checkpoint(ckpt_dir)
    assert 0 < resumed_from < total, (kill_at, resumed_from)

    resume = subprocess.run(
        fit_command(root, killed, "--ckpt_path", str(latest)),
        env=env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert resume.returncode == 0, resume.stderr[-2000:]
    _, ref_err = ref.communicate(timeout=400)
    assert ref.returncode == 0, ref_err.decode()[-2000:]

    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    info = f"killed at step {kill_at}, resumed from step {resumed_from} of {total}"
    assert a["global_step"] == b["global_step"] == total, info
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), f"{k} differs; {info}"
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()
    ):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"]), info
    assert a["lr_schedulers"][0]["_last_lr"] == b["lr_schedulers"][0]["_last_lr"], info
    assert last_val_metrics(full) == last_val_metrics(killed), info
