"""Event-loop CPU per REST request through the runtime's HTTP protocol and ``read_body``, in process.

    python -m benchmarks.rest_loop_cost [--requests 20000] [--limits-module PATH]

uvicorn's httptools protocol with our limits (``protocol_class``), Starlette's ``Request`` and
``read_body`` for a small REST binary body (add_sub's size), on one keep-alive connection fed from
memory: no sockets, no model, so what it measures is the per-request cost of the HTTP layer and the
limits (CPU seconds of this process per request, after 2,000 warm-up requests). ``--limits-module``
loads another version of ``serving_runtime/protocol/http_limits.py`` to compare, e.g.::

    git show 0b17804:serving_runtime/protocol/http_limits.py > /tmp/http_limits_old.py
    python -m benchmarks.rest_loop_cost --limits-module /tmp/http_limits_old.py

Run versions interleaved (A B A B) and compare medians: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import sys
import time
from types import ModuleType
from typing import Any

BODY = (
    b'{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","parameters":{"binary_data_size":64}},'
    b'{"name":"INPUT1","shape":[1,16],"datatype":"FP32","parameters":{"binary_data_size":64}}]}' + b"\0" * 128
)
REQUEST = (
    b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
    b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(BODY) - 128, len(BODY))
) + BODY


def _load(path: str | None) -> ModuleType:
    if path is None:
        return importlib.import_module("shipyard.serving_runtime.protocol.http_limits")
    spec = importlib.util.spec_from_file_location("http_limits_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class CountingTransport(asyncio.Transport):
    """Collects answers (counted by ``marker``); the protocol under test writes here instead of a socket."""

    def __init__(self, marker: bytes = b"ok") -> None:
        super().__init__()
        self.marker = marker
        self.answers = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.answers += bytes(data).count(self.marker)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def measure(limits_module: ModuleType, requests: int) -> float:
    """CPU µs per request over ``requests`` keep-alive requests."""
    import uvicorn
    from starlette.requests import Request
    from uvicorn.server import ServerState

    limits = limits_module.HttpLimits()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await limits_module.read_body(Request(scope, receive), limits)
        assert len(body) == len(BODY)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, http=limits_module.protocol_class(limits), lifespan="off", log_level="warning")
    config.load()
    protocol_class: Any = config.http_protocol_class
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = CountingTransport()
    protocol.connection_made(transport)

    async def run(count: int) -> None:
        transport.answers = 0
        for i in range(count):
            protocol.data_received(REQUEST)
            while transport.answers <= i:
                await asyncio.sleep(0)

    await run(2000)
    started = time.process_time()
    await run(requests)
    return (time.process_time() - started) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rest_loop_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--limits-module", help="another http_limits.py to measure (default: the installed one)")
    args = parser.parse_args(argv)
    per_request = asyncio.run(measure(_load(args.limits_module), args.requests))
    print(f"{per_request:.1f} µs of CPU per REST request ({args.requests} requests, {args.limits_module or 'current'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
