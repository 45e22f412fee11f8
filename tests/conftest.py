"""Test-wide settings: offline, quiet, and thread settings that suit a small shared CPU;
browser tests skipped (one line) where Chromium or Playwright is missing, unless
ENTITWIST_REQUIRE_BROWSER=1."""

from __future__ import annotations

import os

import pytest

# No hub access from any test: without this, transformers/timm calls hang ~50 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# OpenMP threads that spin while waiting make tiny torch ops 100x slower when the tests'
# subprocesses (DDP, CLI runs) share the cores; a passive wait policy avoids that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from browser_helpers import browser_required, missing_browser

    browser_items = [item for item in items if item.get_closest_marker("browser")]
    reason = missing_browser() if browser_items else None
    if reason is None or browser_required():
        return  # they run (and, when required but missing, fail saying what to install)
    skip = pytest.mark.skip(reason=f"{reason}; set ENTITWIST_REQUIRE_BROWSER=1 to fail instead")
    for item in browser_items:
        item.add_marker(skip)
