"""Helpers for the browser tests: Debian's Chromium through Playwright, and the app server.

No browser is downloaded: Playwright drives ``/usr/bin/chromium`` (installed by
``scripts/install_chromium.sh``), headless, with everything that phones home switched off;
the page's requests to anything but the server are refused and recorded.

Where Chromium or Playwright is missing the browser tests are skipped with one line
(``tests/conftest.py``), unless ``ENTITWIST_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which
makes them run and fail saying how to install what is missing.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


REQUIRE_ENV = "ENTITWIST_REQUIRE_BROWSER"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (one line), or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if shutil.which("chromium") is None:
        return "Chromium is missing (bash scripts/install_chromium.sh as root, or make test)"
    return None


def browser_required() -> bool:
    """Whether missing browser tools fail the browser tests instead of skipping them."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def chromium_path() -> str:
    """The Chromium executable, or fail the test saying what to install."""
    reason = missing_browser()
    if reason is not None:
        pytest.fail(f"{reason}; then rerun the browser tests", pytrace=False)
    return str(shutil.which("chromium"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """``entitwist app`` in a subprocess on a free loopback port; ``env`` adds environment
    variables (e.g. ``ENTITWIST_APP_AUTH``).

    Attributes: ``url``, ``temp_dir`` (the folder the server says it uses), ``process``.
    """

    def __init__(
        self,
        checkpoint: Path,
        cwd: Path,
        extra: list[str] | None = None,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        self.log_path = (log_dir or cwd) / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "entitwist.cli", "app", "-m", str(checkpoint)]
        cmd += ["--port", str(self.port), "--device", "cpu", *(extra or [])]
        self.process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._log, stderr=self._log)
        self.temp_dir: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app server exited early:\n{self.log()}")
            match = re.search(r"temporary files in (\S+)", self.log())
            if match and self.temp_dir is None:
                self.temp_dir = Path(match.group(1))
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the app server did not answer within {timeout:.0f} s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (the server cleans up), then SIGKILL if it hangs; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


def local_only(page: Any, base_url: str) -> list[str]:
    """Refuse every request that is not to ``base_url``; returns the list of refused URLs."""
    refused: list[str] = []

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith(base_url) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    page.route("**/*", handle)
    return refused


def save_screenshot(page: Any, path: Path, max_bytes: int = 300_000) -> Path:
    """A full-page screenshot as an optimised palette PNG (under ``max_bytes``)."""
    from PIL import Image

    raw = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    for colours in (256, 128, 64):
        picture = raw.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=0)
        picture.save(path, format="PNG", optimize=True)
        if path.stat().st_size <= max_bytes:
            break
    return path


def take_screenshot(checkpoint: Path, out: Path, example: int = 0) -> Path:
    """Start ``entitwist app`` with ``checkpoint``, run one example, save a page screenshot.

    ``python tests/browser_helpers.py -m demo_output/model`` refreshes
    ``docs/images/app_screenshot.png`` with a trained model.
    """
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="entitwist-shot-") as logs:
        # run in the current folder so that the page names the checkpoint as given
        server = AppServer(checkpoint, Path.cwd(), log_dir=Path(logs))
        try:
            server.wait_ready(timeout=120)
            with sync_playwright() as pw:
                chrome = launch_chromium(pw)
                tab = chrome.new_page(viewport={"width": 1280, "height": 900})
                refused = local_only(tab, server.url)
                tab.goto(server.url)
                tab.locator("#examples tbody tr").nth(example).locator("td").nth(0).click()
                tab.wait_for_function(
                    "() => (document.querySelector('#status')?.innerText || '').includes('Segmented')",
                    timeout=120_000,
                )
                tab.wait_for_selector("#overlay img")
                tab.wait_for_timeout(500)  # let the pictures finish loading
                save_screenshot(tab, out)
                chrome.close()
                if refused:
                    raise RuntimeError(f"the page tried to reach the internet: {refused[:3]}")
        finally:
            server.stop()
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Screenshot of the web page after one run.")
    parser.add_argument("-m", "--model", default="demo_output/model", type=Path)
    parser.add_argument(
        "--out",
        default=Path(__file__).resolve().parents[1] / "docs/images/app_screenshot.png",
        type=Path,
    )
    parser.add_argument("--example", default=0, type=int)
    args = parser.parse_args()
    print(take_screenshot(args.model, args.out, args.example))
