"""A run killed with SIGKILL and resumed from its latest checkpoint ends exactly where an
uninterrupted run ends: same weights, every optimiser state tensor and step count, the
param groups, the LR scheduler, the random streams and the validation metrics.

`entitwist fit` runs in subprocesses (CPU, deterministic settings). The kill is not left to
timing: :class:`KillAt`, a callback loaded into the victim from this file, SIGKILLs the
victim's whole process group at a fixed point, once the checkpoint of that step is on disk:

- mid-epoch: at the start of the batch after step ``k``, ``k`` inside the first epoch;
- epoch boundary: the resumed run is killed again when validation of the first epoch starts
  (its last step's checkpoint is written, the epoch is not closed), and resumed again;
- two processes (Lightning DDP, gloo, forked): mid-epoch, resumed in two processes and
  compared with an uninterrupted two-process run.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from entitwist.train.checkpoints import RNG_KEY

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic_tiny.yaml")
BATCH, EPOCHS = 2, 2


class KillAt(Callback):
    """SIGKILL this process group at a fixed point of training (loaded by the victim run).

    Args:
        step: the global step whose checkpoint must be the latest one.
        hook: ``"batch_start"`` (the batch after ``step``) or ``"validation_start"`` (the
            first validation after ``step``; the sanity check does not count).
    """

    def __init__(self, step: int, hook: str = "batch_start") -> None:
        if hook not in ("batch_start", "validation_start"):
            raise ValueError(f"unknown hook {hook!r}")
        self.step, self.hook = step, hook

    def _kill(self, trainer: Trainer) -> None:
        if trainer.global_step == self.step:
            os.killpg(os.getpgid(0), signal.SIGKILL)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.hook == "batch_start":
            self._kill(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.hook == "validation_start" and not trainer.sanity_checking:
            self._kill(trainer)


def make_scenes(root: Path, n_scenes: int = 6) -> Path:
    from entitwist.data.synthetic import write_dataset
    from entitwist.entities.cli import main as entities_main

    write_dataset(root, n_scenes, size=64, seed=0, expressions_per_scene=2, progress=False)
    assert entities_main([str(root)]) == 0
    return root


def fit_command(root: Path, out: Path, *extra: str, devices: int = 1) -> list[str]:
    ddp = ["--trainer.strategy", "ddp_fork"] if devices > 1 else []
    return [
        sys.executable, "-m", "entitwist.cli", "fit", "--config", CONFIG,
        "--data.root", str(root), "--data.batch_size", str(BATCH),
        "--trainer.max_epochs", str(EPOCHS), "--trainer.default_root_dir", str(out),
        "--trainer.devices", str(devices), *ddp,
        "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(out / "logs"),
        "--checkpoint.every_n_train_steps", "1", "--checkpoint.monitor", "null",
        "--checkpoint.filename", "step{step:06d}", "--checkpoint.dirpath", str(out / "checkpoints"), *extra,
    ]  # fmt: skip


def kill_args(step: int, hook: str) -> list[str]:
    return [
        "--trainer.callbacks+=test_resume.KillAt",
        "--trainer.callbacks.step", str(step),
        "--trainer.callbacks.hook", hook,
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }


def start(cmd: list[str]) -> subprocess.Popen:
    """A fit run in its own session (so that KillAt takes every process of the run)."""
    return subprocess.Popen(
        cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def finish(proc: subprocess.Popen, what: str, timeout: float = 400) -> int:
    _, err = proc.communicate(timeout=timeout)
    return_code = proc.returncode
    if return_code != -signal.SIGKILL:
        assert return_code == 0, f"{what}: {err.decode()[-2000:]}"
    return return_code


def last_val_metrics(out: Path) -> dict[str, float]:
    rows = []
    for path in sorted((out / "logs").glob("lightning_logs/version_*/metrics.csv")):
        with open(path) as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("val/mIoU")]
    assert rows, f"no validation metrics logged under {out}"
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def assert_same(a: Any, b: Any, where: str) -> None:
    """Exact equality of nested checkpoint values (tensors bit for bit, dtypes included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {a.keys()} != {b.keys()}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_end(full: Path, resumed: Path, total: int, info: str) -> None:
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == total, info
    assert a["epoch"] == b["epoch"], info
    assert_same(a["state_dict"], b["state_dict"], f"state_dict ({info})")
    # every optimiser: every tensor of every parameter's state (exp_avg, exp_avg_sq, step),
    # and the param groups (lr, initial_lr, betas, weight decay, which parameters)
    assert len(a["optimizer_states"]) == len(b["optimizer_states"]) == 1, info
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert len(opt_a["state"]) == len(a["state_dict"]) - count_buffers(a), info
    for state in opt_a["state"].values():
        assert state.keys() == {"step", "exp_avg", "exp_avg_sq"}, info
        assert float(state["step"]) == total, info  # every parameter stepped every step
    assert_same(opt_a["state"], opt_b["state"], f"optimizer state ({info})")
    assert_same(opt_a["param_groups"], opt_b["param_groups"], f"param_groups ({info})")
    # the scheduler: last_epoch, _step_count, base_lrs, _last_lr...
    assert_same(a["lr_schedulers"], b["lr_schedulers"], f"lr_schedulers ({info})")
    assert a["lr_schedulers"][0]["last_epoch"] == total, info
    # the random streams the module saves
    assert_same(a[RNG_KEY], b[RNG_KEY], f"random states ({info})")
    assert last_val_metrics(full) == last_val_metrics(resumed), info


def count_buffers(ckpt: dict[str, Any]) -> int:
    """Entries of the state dict that are not trained parameters (BatchNorm buffers)."""
    return sum(
        1
        for k in ckpt["state_dict"]
        if k.endswith(("running_mean", "running_var", "batches_tracked"))
    )


def start_victim(root: Path, out: Path, step: int, hook: str, devices: int = 1) -> subprocess.Popen:
    """Start a run that kills itself at ``step``; returns the running process."""
    return start(fit_command(root, out, *kill_args(step, hook), devices=devices))


def resume(
    victim: subprocess.Popen, out: Path, root: Path, step: int, *extra: str, devices: int = 1
) -> subprocess.Popen:
    """Wait for the victim's kill, check that its last.ckpt is ``step``'s, resume from it (as
    a user would: ``--ckpt_path .../last.ckpt``) with ``extra`` arguments."""
    rc = finish(victim, f"victim {out.name}")
    assert rc == -signal.SIGKILL, f"{out.name}: the run ended before it was killed"
    last = out / "checkpoints" / "last.ckpt"
    resumed_from = int(torch.load(last, weights_only=True, map_location="cpu")["global_step"])
    assert resumed_from == step, (out.name, resumed_from, step)
    return start(fit_command(root, out, "--ckpt_path", str(last), *extra, devices=devices))


def steps_per_epoch(root: Path, processes: int) -> int:
    from entitwist.data import load_dataset

    n_train = len(load_dataset("jsonl", root, "train", entities=None))  # one expression a ref
    return math.ceil(math.ceil(n_train / processes) / BATCH)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("resume") / "scenes")


def test_kill_callback_rejects_unknown_hook() -> None:
    with pytest.raises(ValueError, match="unknown hook"):
        KillAt(1, "epoch_end")


def test_sigkill_mid_epoch_then_at_epoch_boundary_resumes_exactly(scenes: Path, tmp_path: Path):
    """Killed twice: mid-epoch (resumed mid-epoch, the loader skips the batches already
    trained), then as the first validation starts; the second resume finishes the run."""
    spe = steps_per_epoch(scenes, 1)
    assert spe >= 3, spe  # room for a mid-epoch kill
    total = spe * EPOCHS
    mid = spe // 2  # 0 < mid < spe - 1: inside the first epoch
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = start(fit_command(scenes, full))
    victim = start_victim(scenes, killed, mid, "batch_start")
    victim = resume(victim, killed, scenes, mid, *kill_args(spe, "validation_start"))
    proc = resume(victim, killed, scenes, spe)
    finish(ref, "uninterrupted run")
    assert finish(proc, "resumed run") == 0
    info = f"killed after step {mid} and after step {spe} (end of epoch 1) of {total}"
    assert_same_end(full, killed, total, info)


def test_sigkill_two_process_ddp_resume_exactly(scenes: Path, tmp_path: Path):
    spe = steps_per_epoch(scenes, 2)
    assert spe >= 2, spe
    total = spe * EPOCHS
    mid = spe // 2 if spe > 2 else 1
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = start(fit_command(scenes, full, devices=2))
    victim = start_victim(scenes, killed, mid, "batch_start", devices=2)
    proc = resume(victim, killed, scenes, mid, devices=2)
    finish(ref, "uninterrupted two-process run")
    assert finish(proc, "resumed two-process run") == 0
    assert_same_end(full, killed, total, f"DDP: killed after step {mid} of {total}")
