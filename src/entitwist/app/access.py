"""Who may use the web page: logins for a page shared beyond this machine.

``entitwist app --allow-remote`` serves the page to the network and therefore asks for a
login (Gradio's own login page). The accounts come from

- ``--auth-file FILE``: one ``user:password`` per line (blank lines and ``#`` comments
  skipped), or
- the environment variable ``ENTITWIST_APP_AUTH=user:password``,

never from the command line, where other users of the machine could read a password.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from entitwist.errors import InputError

__all__ = ["AUTH_ENV", "MIN_PASSWORD", "parse_login", "reach_line", "read_logins"]

AUTH_ENV = "ENTITWIST_APP_AUTH"
MIN_PASSWORD = 8


def parse_login(text: str, where: str) -> tuple[str, str]:
    """``user:password`` -> (user, password); the password may itself hold ``:``."""
    user, sep, password = text.strip().partition(":")
    user = user.strip()
    if not sep or not user:
        raise InputError(f"{where} must read user:password (e.g. alice:a-long-password)")
    if len(password) < MIN_PASSWORD:
        raise InputError(
            f"{where}: the password of {user!r} is shorter than {MIN_PASSWORD} characters; "
            "choose a longer one"
        )
    return user, password


def read_logins(
    auth_file: str | os.PathLike | None, environ: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """The accounts from ``auth_file``, else from ``ENTITWIST_APP_AUTH``; [] when neither."""
    environ = os.environ if environ is None else environ
    if auth_file is not None:
        path = Path(os.path.expanduser(str(auth_file)))
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            raise InputError(
                f"--auth-file {str(path)!r}: {reason}; give a text file of user:password lines"
            ) from None
        logins = [
            parse_login(line, f"--auth-file {str(path)!r} line {i}")
            for i, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not logins:
            raise InputError(
                f"--auth-file {str(path)!r} holds no login; write one user:password per line"
            )
    elif environ.get(AUTH_ENV, "").strip():
        logins = [parse_login(environ[AUTH_ENV], AUTH_ENV)]
    else:
        return []
    users = [user for user, _ in logins]
    if len(set(users)) != len(users):
        raise InputError(f"a user is named twice in the logins ({', '.join(users)}); keep one")
    return logins


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def reach_line(host: str, port: int, logins: list[tuple[str, str]]) -> str:
    """One line saying who can reach the page at ``host:port`` and whether it asks a login."""
    users = ", ".join(user for user, _ in logins)
    login = f"it asks for a login (users: {users})" if logins else "no login"
    if _is_loopback(host):
        return f"http://{host}:{port}/ (only this machine can reach it; {login})"
    everyone = "any machine that can reach this one" if host in ("0.0.0.0", "::") else "anyone"
    return f"http://{host}:{port}/ ({everyone} on the network can open it; {login})"
