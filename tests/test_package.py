"""The package as users get it: python -m, shipped configs by name, and a wheel that installs
into a fresh environment and runs."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from entitwist.cli import main as entitwist_main
from entitwist.configs import (
    CONFIG_DIR,
    config_path,
    list_configs,
    resolve_config,
    resolve_config_args,
)
from entitwist.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = entitwist_main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_python_dash_m_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "entitwist", "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: entitwist <command>")
    assert "  configs " in done.stdout and "  segment " in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "entitwist", "nope"], capture_output=True, text=True, env=ENV
    )
    assert bad.returncode == 2 and bad.stderr.startswith("entitwist: error: unknown command")


def test_configs_ship_inside_the_package() -> None:
    names = list_configs()
    assert CONFIG_DIR == Path(__import__("entitwist").__file__).parent / "configs"
    assert {"rrsisd_bert", "synthetic_tiny", "table4_baseline", "fig6_rrsisd_k10"} <= set(names)
    assert names == sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert (
        config_path("rrsisd_bert")
        == config_path("rrsisd_bert.yaml")
        == (CONFIG_DIR / "rrsisd_bert.yaml")
    )


def test_config_values_resolve_to_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = str(CONFIG_DIR / "synthetic_tiny.yaml")
    assert resolve_config("synthetic_tiny") == shipped
    assert resolve_config("synthetic_tiny.yaml") == shipped
    assert resolve_config("configs/synthetic_tiny.yaml") == shipped  # the former repo path
    own = tmp_path / "synthetic_tiny.yaml"
    own.write_text("seed_everything: 3\n")
    assert resolve_config(str(own)) == str(own)  # a file wins over a shipped name
    monkeypatch.chdir(tmp_path)
    assert resolve_config("synthetic_tiny.yaml") == "synthetic_tiny.yaml"
    assert resolve_config("trainer: {max_epochs: 1}") == "trainer: {max_epochs: 1}"  # inline
    with pytest.raises(ConfigError) as err:
        resolve_config("rrsisd_bret")
    message = str(err.value)
    assert "neither a file nor a shipped config" in message and "\n" not in message
    assert all(name in message for name in list_configs())
    with pytest.raises(ConfigError, match="neither a file"):
        resolve_config("elsewhere/rrsisd_bert.yaml")
    args = [
        "fit",
        "--config",
        "rrsisd_bert",
        "-c=x",
        "--config=synthetic_tiny",
        "-c",
        "table4_full",
    ]
    args[3] = "--trainer.max_epochs=2"
    assert resolve_config_args(args) == [
        "fit",
        "--config",
        str(CONFIG_DIR / "rrsisd_bert.yaml"),
        "--trainer.max_epochs=2",
        f"--config={CONFIG_DIR / 'synthetic_tiny.yaml'}",
        "-c",
        str(CONFIG_DIR / "table4_full.yaml"),
    ]


def test_fit_takes_a_config_name(capsys: pytest.CaptureFixture[str]) -> None:
    from unittest import mock

    from entitwist.train.cli import EntiTwistCLI

    def parse(value: str) -> dict:
        with mock.patch.object(sys, "argv", ["entitwist"]):
            cli = EntiTwistCLI(args=["--config", value], run=False, check=False, instantiate=False)
        return cli.config.as_dict()

    by_name = parse("rrsisd_bert")
    assert by_name == parse(str(CONFIG_DIR / "rrsisd_bert.yaml"))
    assert by_name["model"]["model_name"] == "entitwist_swinb_bert"
    assert by_name != parse("synthetic_tiny")
    capsys.readouterr()  # Lightning's seed messages of the parses above
    rc, out, err = run(["fit", "--config", "no_such_config", "--trainer.max_epochs", "1"], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("entitwist: error: --config 'no_such_config' is neither a file")
    assert err.count("\n") == 1 and "rrsisd_bert" in err


def test_configs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["configs", "list"], capsys)
    lines = out.splitlines()
    assert rc == 0 and [line.split()[0] for line in lines] == list_configs()
    assert any(line.startswith("rrsisd_bert ") and "Table I" in line for line in lines)
    rc, out, _ = run(["configs", "show", "synthetic_tiny"], capsys)
    assert rc == 0 and out == config_path("synthetic_tiny").read_text()
    rc, out, _ = run(["configs", "copy", "synthetic_tiny", str(tmp_path)], capsys)
    copied = tmp_path / "synthetic_tiny.yaml"
    assert rc == 0 and copied.read_bytes() == config_path("synthetic_tiny").read_bytes()
    assert f"wrote {copied}" in out
    rc, _, err = run(["configs", "copy", "synthetic_tiny", str(copied)], capsys)
    assert rc == 2 and "exists; pass --overwrite" in err
    copied.write_text("changed\n")
    rc, _, _ = run(["configs", "copy", "synthetic_tiny", str(copied), "--overwrite"], capsys)
    assert rc == 0 and copied.read_text() == config_path("synthetic_tiny").read_text()
    rc, _, err = run(["configs", "show", "nope"], capsys)
    assert rc == 2 and "'nope' is not a shipped config" in err and "synthetic_tiny" in err
    rc, _, err = run(["configs", "copy", "synthetic_tiny", str(tmp_path / "no" / "x.yaml")], capsys)
    assert rc == 2 and "does not exist" in err


# ---------------------------------------------------------------------------------- wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the project (the checkout is left as it is)."""
    src = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("entitwist-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_configs_license_and_py_typed(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(archive.read(meta_name))
    shipped = {
        n.rsplit("/", 1)[1][:-5]
        for n in names
        if n.startswith("entitwist/configs/") and n.endswith(".yaml")
    }
    assert shipped == set(list_configs())
    assert "entitwist/py.typed" in names and "entitwist/configs/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "entitwist/assets/tiny_vocab.txt" in names
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist")
    torch_reqs = [
        r for r in requires if r.split(">")[0].split("=")[0].strip() in ("torch", "torchvision")
    ]
    assert sorted(torch_reqs) == ["torch>=2.4", "torchvision>=0.19"]
    assert not [r for r in requires if "==" in r.split(";")[0]]  # no exact pins at all


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_environment_and_runs(wheel: Path, tmp_path: Path) -> None:
    import site

    import numpy as np
    import torch
    from PIL import Image

    import entitwist
    from entitwist.data.synthetic_scene import generate_scene

    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies (torch, ...) come from this environment's site-packages, appended to
    # the new one's path; its own .pth files (the editable entitwist) are not read from there
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps"]
        + ["--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    entitwist_bin = env_dir / "bin" / "entitwist"
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(entitwist_bin), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )

    where = subprocess.run(
        [str(py), "-c", "import entitwist; print(entitwist.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(env_dir)), where  # the installed copy, not the checkout

    models = call("models")
    assert models.returncode == 0 and "entitwist_tiny" in models.stdout, models.stderr
    shown = call("configs", "show", "synthetic_tiny")
    assert shown.returncode == 0
    assert shown.stdout == (REPO / "src/entitwist/configs/synthetic_tiny.yaml").read_text()

    torch.manual_seed(0)
    entitwist.create_model("entitwist_tiny").save_pretrained(tmp_path / "model")
    Image.fromarray(generate_scene(3, size=96).image).save(tmp_path / "scene.png")
    seg = call("segment", "scene.png", "the red car", "-m", "model", "-o", "mask.png", "-q")
    assert seg.returncode == 0, seg.stderr[-2000:]
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 255}
    missing = call("segment", "scene.png", "the red car", "-m", "nowhere", "-o", "m2.png")
    assert missing.returncode == 2 and missing.stderr.startswith("entitwist: error: ")
    assert not (tmp_path / "m2.png").exists()
