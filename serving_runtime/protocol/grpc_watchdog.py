"""Keep the native gRPC frontend accepting connections.

grpc core (1.51, Debian's, which the native frontend links) stops accepting connections for good
after ``accept4`` fails with EMFILE once (grpc/grpc#16058, #20418: the listener is not re-armed), while
the process, REST included, keeps running. ``watch`` probes the port from inside the process: it
opens a TCP connection, sends the HTTP/2 client preface and an empty SETTINGS frame, and expects the
server's SETTINGS frame back. grpc core answers that on its own threads, so a busy event loop does not
fail the probe. After ``failures`` probes in a row fail (a probe that cannot get a descriptor itself
is not counted), it logs the cause and calls ``restart`` (a new grpc++ server on the same port).

``probe(host, port, timeout_s) -> bool | None``: True when a server answered, False when none did,
None when this process could not even open a socket (out of descriptors: no verdict).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, no flags, stream 0
_SETTINGS_TYPE = 0x04


def probe(host: str, port: int, timeout_s: float = 2.0) -> bool | None:
    """Whether an HTTP/2 server on ``host:port`` answers the client preface with SETTINGS."""
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return None
        raise
    with sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect((host, port))
            sock.sendall(_PREFACE + _EMPTY_SETTINGS)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return None
            return False
    return head[3] == _SETTINGS_TYPE


async def watch(
    host: str,
    port: int,
    restart: Callable[[], Awaitable[None]],
    interval_s: float = 5.0,
    failures: int = 3,
    timeout_s: float = 2.0,
) -> None:
    """Probe ``host:port`` every ``interval_s``; after ``failures`` failed probes in a row, ``restart()``.

    Runs until cancelled. Never raises (a failed restart is logged and retried at the next verdict).
    """
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    failed = 0
    while True:
        await asyncio.sleep(interval_s)
        verdict = await asyncio.to_thread(probe, target, port, timeout_s)
        if verdict is None:
            continue
        failed = 0 if verdict else failed + 1
        if failed < failures:
            continue
        log.error(
            "the gRPC port %d stopped accepting connections (grpc core does not recover after running out of "
            "file descriptors, grpc/grpc#20418); restarting the gRPC frontend. Raise the open-files limit "
            "(ulimit -n) or lower --http-max-connections to avoid it",
            port,
        )
        try:
            await restart()
            log.warning("the gRPC frontend was restarted on port %d", port)
        except Exception:
            log.exception("restarting the gRPC frontend failed; will try again")
        failed = 0
