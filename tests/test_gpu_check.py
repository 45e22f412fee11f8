"""The prepared GPU check (benchmarks/gpu_check.py) dry-run on CPU with tiny sizes, so it never rots."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    for section in ("scan", "train", "infer", "tiny"):
        assert section in result and "error" not in result[section], result.get(section)
    # the scan matches the float64 reference in forward and every input gradient
    assert result["scan"]["max_rel_error"] < 1e-5
    assert set(result["scan"]["errors"]) >= {
        "forward",
        "grad_u",
        "grad_delta",
        "grad_A",
        "grad_B",
        "grad_C",
    }
    train = result["train"]
    assert train["full"]["step_s"] > 0 and train["baseline"]["step_s"] > 0
    assert math.isclose(
        train["time_ratio_full_over_baseline"],
        train["full"]["step_s"] / train["baseline"]["step_s"],
    )
    assert math.isfinite(result["tiny"]["first_loss"]) and math.isfinite(
        result["tiny"]["last_loss"]
    )
    # one summary row per section is printed
    for section in ("scan", "train", "infer", "tiny"):
        assert any(line.startswith(section) for line in proc.stdout.splitlines()), proc.stdout


def test_gpu_check_rejects_unknown_section(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--only",
            "nope",
            "--out",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown section 'nope'" in proc.stderr
    assert not (tmp_path / "x.json").exists()
