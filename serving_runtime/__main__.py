"""``python -m shipyard.serving_runtime``: the container's command (see ``cli.py`` for the flags)."""

from __future__ import annotations

from shipyard.serving_runtime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
