"""Test-wide settings: offline, quiet, and thread settings that suit a small shared CPU."""

from __future__ import annotations

import os

# No hub access from any test: without this, transformers/timm calls hang ~50 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# OpenMP threads that spin while waiting make tiny torch ops 100x slower when the tests'
# subprocesses (DDP, CLI runs) share the cores; a passive wait policy avoids that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
