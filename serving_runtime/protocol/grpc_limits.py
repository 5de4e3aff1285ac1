"""Connection limits of the gRPC frontends, with the REST limits' defaults and flag style (``http_limits``).

- ``GrpcLimits``: how long a connection with no call in progress may stay open (grpc core then sends
  GOAWAY and closes it; a client's channel reconnects on its next call, so a well-behaved client never
  notices) and how many connections may be open at once (grpc core closes a connection past it right
  after accepting it, before the HTTP/2 handshake, so no message can reach the client: its call fails
  UNAVAILABLE, "Socket closed", at once; the connections already open keep serving).
- ``channel_options(limits)``: the grpc channel arguments.
- ``add_flags`` / ``from_args``: the ``--grpc-idle-timeout-secs`` and ``--grpc-max-connections`` flags.

The connection cap is grpc core's ``grpc.max_allowed_incoming_connections`` (grpc >= 1.52); the
native frontend built against an older grpc++ (Debian 12's 1.51) cannot enforce it, see
``server.choose_grpc_frontend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.serving_runtime.protocol.http_limits import default_max_connections

IDLE_ARG = "grpc.max_connection_idle_ms"
CAP_ARG = "grpc.max_allowed_incoming_connections"


@dataclass(frozen=True)
class GrpcLimits:
    """gRPC connection limits; each has a ``--grpc-...`` flag. ``cap_from_flag``: the user set the cap."""

    idle_timeout_s: float = 60.0
    max_connections: int = field(default_factory=default_max_connections)
    cap_from_flag: bool = False

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"--grpc-max-connections must be >= 1, got {self.max_connections}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"--grpc-idle-timeout-secs must be > 0, got {self.idle_timeout_s:g}")


def channel_options(limits: GrpcLimits) -> list[tuple[str, Any]]:
    """grpc.aio server channel arguments for ``limits`` (the native frontend sets the same in C++)."""
    return [(IDLE_ARG, max(1, int(limits.idle_timeout_s * 1000))), (CAP_ARG, limits.max_connections)]


# -- command line ----------------------------------------------------------------------------


def add_flags(group: Any) -> None:
    """Add ``--grpc-idle-timeout-secs`` and ``--grpc-max-connections`` to an argparse group."""
    defaults = GrpcLimits()
    group.add_argument(
        "--grpc-idle-timeout-secs", dest="grpc_limit_idle_timeout_s", type=float, default=defaults.idle_timeout_s,
        metavar="N", help="a gRPC connection with no call in progress is closed after this (GOAWAY; clients "
        f"reconnect on their next call) (default: {defaults.idle_timeout_s:g})",
    )  # fmt: skip
    group.add_argument(
        "--grpc-max-connections", dest="grpc_limit_max_connections", type=int, default=None, metavar="N",
        help="open gRPC connections at most; a new one beyond it is closed at once and its calls fail "
        "UNAVAILABLE (default: 4096, or half of the open-files limit less 256 when lower; the native frontend needs "
        "grpc++ >= 1.52 for it)",
    )  # fmt: skip


def from_args(args: Any) -> GrpcLimits:
    """``GrpcLimits`` from parsed ``add_flags`` arguments. Raises: ValueError naming a bad value."""
    cap = args.grpc_limit_max_connections
    if cap is None:
        return GrpcLimits(idle_timeout_s=args.grpc_limit_idle_timeout_s)
    return GrpcLimits(idle_timeout_s=args.grpc_limit_idle_timeout_s, max_connections=cap, cap_from_flag=True)


# -- the native frontend ---------------------------------------------------------------------


def native_refusal(limits: GrpcLimits) -> str | None:
    """Why the native frontend cannot serve with ``limits``: the user asked for a connection cap
    (``--grpc-max-connections``) and its grpc++ has none; None when it can (or the native frontend is not built)."""
    if not limits.cap_from_flag:
        return None
    from shipyard.serving_runtime.protocol import native_grpc

    if native_grpc.unavailable_reason() is not None:
        return None
    reason = native_grpc.connection_cap_reason()
    if reason is None:
        return None
    return f"{reason}; --grpc-max-connections needs --grpc-frontend aio (or leave the flag out)"
