"""The REST fast lane's head cache (``protocol/rest_fast_head.py``), in process.

The server's real REST stack (``rest.build_app``, ``http_limits.protocol_class``,
``rest_fast.protocol_class``) over a real model manager and ONNX Runtime model, one connection fed
from memory, so that the test can see which path a request took: a head the lane took before is
taken again without httptools (its message counter does not move) and answered with the same
bytes; a read that holds more or less than one request, or a head seen for the first time, goes
through httptools as before. ``test_rest_fast_lane.py`` compares the bytes with the ASGI path over
real sockets.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from onnx_models import simple_onnx
from server_harness import SIMPLE_CONFIG, write_model

BATCHED = SIMPLE_CONFIG.replace('name: "simple"', 'name: "batched"').replace(
    "instance_group", "dynamic_batching { }\ninstance_group"
)


class _Wire(asyncio.Transport):
    """What the protocol writes, kept."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closing = False

    def write(self, data: Any) -> None:
        self.out += bytes(data)

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


def _request(seed: float, length_extra: int = 0) -> bytes:
    a = (np.arange(16, dtype=np.float32) + seed).tobytes()
    b = np.full(16, seed + 1, dtype=np.float32).tobytes()
    tensors = [{"name": n, "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}
               for n in ("INPUT0", "INPUT1")]  # fmt: skip
    header = json.dumps({"inputs": tensors, "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]})
    body = header.encode() + a + b
    head = (f"POST /v2/models/batched/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) + length_extra}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def _stack(repo: Path) -> tuple[Any, Any, Any, Any]:
    import uvicorn
    from uvicorn.server import ServerState

    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.protocol import http_limits, rest, rest_fast
    from shipyard.serving_runtime.protocol.service import InferenceService

    manager = ModelManager([str(repo)])
    await manager.start()
    service = InferenceService(manager)
    service.started = True
    limits = http_limits.HttpLimits()
    lane = rest_fast.RestLane(service, limits)
    app = rest.build_app(service, None, limits, lane.observe)
    config = uvicorn.Config(app, http=rest_fast.protocol_class(http_limits.protocol_class(limits), lane),
                            lifespan="off", log_level="warning")  # fmt: skip
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    wire = _Wire()
    protocol.connection_made(wire)
    return manager, lane, protocol, wire


async def _answers(wire: _Wire, count: int) -> list[bytes]:
    """The next ``count`` responses off ``wire`` (by content-length), the date header blanked."""
    out: list[bytes] = []
    for _ in range(200):
        while len(out) < count:
            end = wire.out.find(b"\r\n\r\n")
            if end < 0:
                break
            length = int(re.search(rb"\r\ncontent-length: (\d+)", bytes(wire.out[:end])).group(1))  # type: ignore[union-attr]
            if len(wire.out) < end + 4 + length:
                break
            out.append(re.sub(rb"date: [^\r]*\r\n", b"", bytes(wire.out[: end + 4 + length])))
            del wire.out[: end + 4 + length]
        if len(out) == count:
            return out
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(out)} of {count} responses; left {bytes(wire.out[:300])!r}")


async def test_a_known_head_skips_httptools_and_answers_the_same_bytes(tmp_path: Path) -> None:
    write_model(tmp_path, "batched", {1: simple_onnx(0.0)}, BATCHED)
    manager, lane, protocol, wire = await _stack(tmp_path)
    try:
        protocol.data_received(_request(1.0))  # the ASGI path answers it; the lane registers the path
        first = (await _answers(wire, 1))[0]
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and not lane.heads.known
        protocol.data_received(_request(1.0))  # the lane takes it through httptools and keeps its head
        assert (await _answers(wire, 1))[0] == first
        assert len(lane.heads.known) == 1 and protocol._begun == 2
        protocol.data_received(_request(1.0))  # the same head: taken without httptools
        protocol.data_received(b"")  # nothing: not a request
        assert (await _answers(wire, 1))[0] == first
        assert protocol._begun == 2
        other = (await _answers_for(protocol, wire, _request(5.0)))[0]  # same head, other data: its own rows
        assert other != first and other.split(b"\r\n\r\n")[0] == first.split(b"\r\n\r\n")[0]
        assert protocol._begun == 2
        # two requests in one read, and one split over two reads: httptools, as before
        protocol.data_received(_request(1.0) + _request(1.0))
        assert await _answers(wire, 2) == [first, first]
        assert protocol._begun == 4
        whole = _request(1.0)
        protocol.data_received(whole[:100])
        protocol.data_received(whole[100:])
        assert (await _answers(wire, 1))[0] == first
        assert protocol._begun == 5
        # a head seen for the first time (another Content-Length): httptools; the ASGI path refuses it
        protocol.data_received(_request(1.0, length_extra=4) + b"\0" * 4)
        refused = (await _answers(wire, 1))[0]
        assert refused.startswith(b"HTTP/1.1 400 ") and protocol._begun == 6
        assert (await _answers_for(protocol, wire, _request(1.0)))[0] == first  # the cache still serves
        assert protocol._begun == 6
    finally:
        protocol.connection_lost(None)
        await manager.shutdown()


async def _answers_for(protocol: Any, wire: _Wire, request: bytes) -> list[bytes]:
    protocol.data_received(request)
    return await _answers(wire, 1)
