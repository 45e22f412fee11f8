"""The command shape: one parser class, one-line errors, the same options everywhere."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest

from entitwist.cli import SUBCOMMANDS
from entitwist.cli import main as cli
from entitwist.errors import InputError
from entitwist.utils.cli_parser import DEVICE_HELP, OneLineArgumentParser, one_line

LIGHTNING = ("fit", "validate", "test", "predict")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("entitwist: error: "), err
    return lines[0]


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if n not in LIGHTNING])
def test_a_bogus_option_is_one_line_and_status_2(name: str, capsys) -> None:
    rc = cli([name, "--no-such-option", "1"])
    line = _one_error_line(capsys)
    assert rc == 2
    assert f"'entitwist {name}" in line and "--help'" in line  # names the command's help
    assert "--no-such-option" in line or "required" in line or "invalid choice" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["figures", "overlays", "--no-such-option"],  # a subparser is of the same class
        ["evaluate", "-m", "x", "--root", "y", "--batch-size", "many"],  # a bad value
        ["synth", "out", "--scenes"],  # a missing value
    ],
)
def test_errors_inside_subparsers_and_values_are_one_line(argv, capsys) -> None:
    assert cli(argv) == 2
    line = _one_error_line(capsys)
    assert f"'entitwist {argv[0]}" in line


def test_lightning_commands_give_one_line_errors(capsys, monkeypatch) -> None:
    pytest.importorskip("lightning")
    monkeypatch.setattr(sys, "argv", ["entitwist"])  # parse the given argv, not pytest's
    for name in LIGHTNING:
        assert cli([name, "--no-such-option", "1"]) == 2, name
        line = _one_error_line(capsys)
        assert "--no-such-option" in line and f"see 'entitwist {name} --help'" in line
    # a wrong value type: jsonargparse's several-line message, folded into one line
    assert cli(["fit", "--trainer.max_epochs", "abc"]) == 2
    line = _one_error_line(capsys)
    assert "trainer.max_epochs" in line and "abc" in line


def test_unknown_command_is_one_line(capsys) -> None:
    assert cli(["no-such-command"]) == 2
    assert "choose one of" in _one_error_line(capsys)


def _parser(module: str, *sub: str) -> OneLineArgumentParser:
    parser = importlib.import_module(module).build_parser()
    for name in sub:  # the subparser of a figures kind
        action = next(a for a in parser._actions if a.choices and name in a.choices)
        parser = action.choices[name]
    return parser


def _option(parser: OneLineArgumentParser, flag: str):  # noqa: ANN202
    return next((a for a in parser._actions if flag in a.option_strings), None)


MODEL_LOADERS = [
    ("entitwist.evaluation.evaluate",),
    ("entitwist.evaluation.figures.cli", "overlays"),
    ("entitwist.evaluation.figures.cli", "prx"),
    ("entitwist.evaluation.figures.cli", "stages"),
    ("entitwist.evaluation.figures.cli", "pca"),
    ("entitwist.app.server",),
    ("entitwist.inference.cli",),
    ("entitwist.demo.cli",),
]


@pytest.mark.parametrize("where", MODEL_LOADERS, ids=lambda w: " ".join(w))
def test_every_model_loader_takes_m_model_and_no_old_spelling(where) -> None:
    parser = _parser(*where)
    action = _option(parser, "--model")
    assert action is not None and action.option_strings == ["-m", "--model"]
    assert isinstance(parser, OneLineArgumentParser)
    assert _option(parser, "--checkpoint") is None  # the old spelling is gone
    assert not [a for a in parser._actions if a.dest == "checkpoint"]  # not positional either


PROGRESS = [
    ("entitwist.evaluation.evaluate",),
    ("entitwist.evaluation.figures.cli", "prx"),
    ("entitwist.demo.cli",),
    ("entitwist.data.synth_cli",),
    ("entitwist.entities.cli",),
    ("entitwist.inference.cli",),
]


@pytest.mark.parametrize("where", PROGRESS, ids=lambda w: " ".join(w))
def test_every_command_with_progress_takes_q_quiet(where) -> None:
    parser = _parser(*where)
    action = _option(parser, "--quiet")
    assert action is not None and action.option_strings == ["-q", "--quiet"]
    assert _option(parser, "--no-progress") is None


@pytest.mark.parametrize(
    "where",
    [
        ("entitwist.evaluation.evaluate",),
        ("entitwist.evaluation.figures.cli", "stages"),
        ("entitwist.app.server",),
        ("entitwist.entities.cli",),
    ],
    ids=lambda w: " ".join(w),
)
def test_device_has_the_same_default_and_words(where) -> None:
    action = _option(_parser(*where), "--device")
    assert action is not None and action.default == "auto"
    assert action.help.endswith(DEVICE_HELP)


def test_one_line_parser_raises_input_error_with_the_help_hint() -> None:
    parser = OneLineArgumentParser(prog="entitwist x")
    sub = parser.add_subparsers(dest="kind", required=True)
    child = sub.add_parser("a")
    child.add_argument("--n", type=int)
    assert isinstance(child, OneLineArgumentParser)
    with pytest.raises(InputError) as err:
        parser.parse_args(["a", "--n", "two"])
    assert str(err.value) == "argument --n: invalid int value: 'two'; see 'entitwist x a --help'"
    assert one_line("Parser key 'x':\n  Expected a <int>\n\tGot 'y'") == (
        "Parser key 'x': Expected a <int> Got 'y'"
    )


def test_models_prints_each_registered_name(capsys) -> None:
    from entitwist.models.registry import describe_model, list_models

    assert cli(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    assert all(describe_model(n) in line for n, line in zip(list_models(), lines))


def test_synth_defaults_are_write_datasets() -> None:
    from entitwist.data.synth_cli import build_parser
    from entitwist.data.synthetic import write_dataset

    defaults = {p.name: p.default for p in inspect.signature(write_dataset).parameters.values()}
    args = build_parser().parse_args(["out"])
    assert (args.size, args.seed, args.workers) == (
        defaults["size"],
        defaults["seed"],
        defaults["workers"],
    )
    assert args.expressions == defaults["expressions_per_scene"]
    assert tuple(float(v) for v in args.splits.split(",")) == defaults["splits"]
    assert (args.object_scale, args.density) == (defaults["object_scale"], defaults["density"])


def test_fork_only_while_torch_is_not_loaded(monkeypatch) -> None:
    import multiprocessing as mp

    import torch  # noqa: F401

    from entitwist.utils.processes import pool_context, start_method

    assert start_method() == "spawn"
    assert pool_context().get_start_method() == "spawn"
    monkeypatch.delitem(sys.modules, "torch")
    expected = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    assert start_method() == expected


def test_check_config_follows_the_module_and_datamodule_defaults(tmp_path, monkeypatch) -> None:
    pytest.importorskip("lightning")
    from entitwist.errors import ConfigError, DataError
    from entitwist.train.cli import check_config
    from entitwist.train.datamodule import ReferringDataModule
    from entitwist.train.module import EntiTwistModule

    monkeypatch.chdir(tmp_path)  # no ./data here
    with pytest.raises(DataError, match="dataset root 'data' does not exist"):
        check_config({"model": {}, "data": {}})
    # a default changed in the signature is the default check_config uses: stated once
    monkeypatch.setattr(ReferringDataModule.__init__, "__defaults__", ("jsonl", "elsewhere"))
    with pytest.raises(DataError, match="dataset root 'elsewhere' does not exist"):
        check_config({"model": {}, "data": {}})
    defaults = list(EntiTwistModule.__init__.__defaults__)
    defaults[0] = "no_such_model"  # model_name
    monkeypatch.setattr(EntiTwistModule.__init__, "__defaults__", tuple(defaults))
    with pytest.raises(ConfigError, match="no_such_model"):
        check_config({"model": {}, "data": {}})


@pytest.mark.parametrize(
    "module", ["entitwist.entities.cli", "entitwist.inference.cli", "entitwist.app.server"]
)
def test_sam_weights_have_one_spelling(module: str) -> None:
    parser = _parser(module)
    assert _option(parser, "--sam-checkpoint") is not None
    assert _option(parser, "--checkpoint") is None


def test_device_only_where_a_device_is_used() -> None:
    assert _option(_parser("entitwist.evaluation.figures.cli", "ksweep"), "--device") is None
    assert _option(_parser("entitwist.data.synth_cli"), "--device") is None


def test_a_reader_that_goes_away_gets_no_traceback():
    """`entitwist configs list | head -1`: a closed pipe ends the command quietly."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "entitwist", "configs", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the command writes
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    assert proc.returncode == 141
