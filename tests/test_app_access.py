"""Logins for a shared page (entitwist.app.access) and the app's refusal to share without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from entitwist.app.access import AUTH_ENV, parse_login, reach_line, read_logins
from entitwist.cli import main as cli_main
from entitwist.errors import InputError


def test_logins_from_a_file_skip_comments_and_keep_colons(tmp_path: Path) -> None:
    path = tmp_path / "logins.txt"
    path.write_text("# who may use the page\n\nalice:correct-horse\n bob : pa:ss:word-1 \n")
    env = {AUTH_ENV: "carol:from-the-environment"}
    assert read_logins(path, env) == [("alice", "correct-horse"), ("bob", " pa:ss:word-1")]


def test_logins_from_the_environment_or_none() -> None:
    assert read_logins(None, {AUTH_ENV: "carol:from-the-environment"}) == [
        ("carol", "from-the-environment")
    ]
    assert read_logins(None, {}) == []
    assert read_logins(None, {AUTH_ENV: "  "}) == []


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("alice", "must read user:password"),
        (":long-enough-password", "must read user:password"),
        ("alice:short", "shorter than 8 characters"),
    ],
)
def test_bad_logins_are_one_line(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as err:
        parse_login(text, AUTH_ENV)
    assert "\n" not in str(err.value) and "long-enough" not in str(err.value)


def test_bad_auth_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        read_logins(tmp_path / "missing.txt", {})
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody yet\n")
    with pytest.raises(InputError, match="holds no login"):
        read_logins(empty, {})
    twice = tmp_path / "twice.txt"
    twice.write_text("alice:password-one\nalice:password-two\n")
    with pytest.raises(InputError, match="named twice"):
        read_logins(twice, {})
    bad = tmp_path / "bad.txt"
    bad.write_text("alice:password-one\nbob\n")
    with pytest.raises(InputError, match="line 2 must read user:password"):
        read_logins(bad, {})


def test_reach_line_says_who_can_open_the_page() -> None:
    alice = [("alice", "correct-horse")]
    assert reach_line("127.0.0.1", 7860, []) == (
        "http://127.0.0.1:7860/ (only this machine can reach it; no login)"
    )
    assert reach_line("0.0.0.0", 8000, alice) == (
        "http://0.0.0.0:8000/ (any machine that can reach this one on the network can open it; "
        "it asks for a login (users: alice))"
    )
    assert "anyone on the network" in reach_line("192.168.1.20", 80, alice)
    assert "correct-horse" not in reach_line("0.0.0.0", 80, alice)


def test_allow_remote_without_a_login_stops_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(AUTH_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["app", "-m", str(tmp_path / "no-model"), "--host", "0.0.0.0", "--allow-remote"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("entitwist: error: --allow-remote shares the page, so it needs a login")
    assert AUTH_ENV in err and "--auth-file" in err
    rc = cli_main(["app", "--allow-remote", "--auth-file", str(tmp_path / "none.txt")])
    assert rc == 2 and "--auth-file" in capsys.readouterr().err
