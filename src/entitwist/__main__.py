"""``python -m entitwist``: the same as the ``entitwist`` command."""

from __future__ import annotations

import sys

from entitwist.cli import main

if __name__ == "__main__":
    sys.exit(main())
