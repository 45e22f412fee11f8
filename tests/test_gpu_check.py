"""The prepared GPU check (benchmarks/gpu_check.py) dry-run on CPU: the same models as the real
run at a reduced size, so every line the GPU run executes has run here."""

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
    # with TF32 off, the project's scan matches the float64 reference in forward and every
    # input gradient, also inside bf16 autocast
    scan = result["scan"]
    assert scan["tf32"] is False and scan["cuda_kernel"] is False
    assert set(scan["max_rel_error"]) == {"project", "project_bf16_autocast"}
    for name, errors in scan["errors"].items():
        assert set(errors) == {"forward"} | {
            f"grad_{k}" for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
        }, name
        assert max(errors.values()) < 1e-5, (name, errors)
    assert scan["fwd_bwd_s"]["project"] > 0 and scan["loop_fwd_bwd_s"] > 0
    # the paper's Swin-B + BERT models, full and baseline, built and stepped in bf16 autocast
    train = result["train"]
    assert train["full"]["model"] == "entitwist_swinb_bert"
    assert train["baseline"]["model"] == "entitwist_swinb_bert_baseline"
    assert 215 < train["full"]["params_m"] < 220  # ~218 M, as the paper's Table IV
    assert 205 < train["baseline"]["params_m"] < train["full"]["params_m"]
    for label in ("full", "baseline"):
        assert train[label]["img_size"] == 32 and train[label]["step_s"] > 0
        assert train[label]["losses"] and all(math.isfinite(x) for x in train[label]["losses"])
    assert math.isclose(
        train["time_ratio_full_over_baseline"],
        train["full"]["step_s"] / train["baseline"]["step_s"],
    )
    assert result["infer"]["img_size"] == 32 and result["infer"]["batch2_latency_ms"] > 0
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
