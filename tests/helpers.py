"""Small helpers shared by tests in several folders (a plain module: ``from helpers import free_port``).

``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there (pytest's default prepend import
mode). Keep this module free of kserve and tritonclient.grpc imports: both pytest sessions load it.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
