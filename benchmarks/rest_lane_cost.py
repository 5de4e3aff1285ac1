"""Event-loop CPU per REST inference, fast lane against the ASGI path, in process.

    python -m benchmarks.rest_lane_cost [--model add_sub] [--connections 64] [--rounds 300] [--profile]

The server's real REST stack (``rest.build_app``, ``http_limits.protocol_class``,
``rest_fast.protocol_class``) over a real model manager serving the zoo model (ONNX Runtime, one
thread), fed from memory: ``--connections`` keep-alive connections each send one binary request
per round, and the round ends when every one is answered (a closed loop without sockets or a
client). Prints the CPU seconds of this process per request (the model's compute included) with
the lane and without (``--no-rest-fast-path``'s path), in alternating blocks, and, with
``--profile``, the lane's cProfile split (cumulative time of the phases: reading the request,
running the group, writing the answers).

Run it on a quiet machine; on a shared one compare the two medians only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common, targets
from benchmarks.rest_loop_cost import CountingTransport


async def _stack(repo: Path, lane_on: bool) -> tuple[Any, Any, Any]:
    """(manager, protocol factory, uvicorn server state) of the server's REST stack."""
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
    lane = rest_fast.RestLane(service, limits) if lane_on else None
    app = rest.build_app(service, None, limits, lane.observe if lane else None)
    config = uvicorn.Config(app, http=rest_fast.protocol_class(http_limits.protocol_class(limits), lane),
                            lifespan="off", log_level="warning")  # fmt: skip
    config.load()
    state = ServerState()
    return manager, config.http_protocol_class, (config, state)


async def _measure(repo: Path, request: bytes, lane_on: bool, connections: int, rounds: int, profile: bool) -> float:
    manager, factory, (config, state) = await _stack(repo, lane_on)
    pairs = []
    for _ in range(connections):
        protocol = factory(config=config, server_state=state, app_state={})
        transport = CountingTransport(b"HTTP/1.1 ")
        protocol.connection_made(transport)
        pairs.append((protocol, transport))

    async def closed_loop(count: int) -> None:
        for _protocol, transport in pairs:
            transport.answers = 0
        for i in range(count):
            for protocol, _transport in pairs:
                protocol.data_received(request)
            for _protocol, transport in pairs:
                while transport.answers <= i:
                    await asyncio.sleep(0)

    try:
        await closed_loop(20)  # the first request registers the path with the lane; warm-up
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.process_time()
        await closed_loop(rounds)
        spent = time.process_time() - started
        if profiler is not None:
            profiler.disable()
            _print_profile(profiler)
        return spent / (rounds * connections) * 1e6
    finally:
        for protocol, _transport in pairs:
            protocol.connection_lost(None)
        await manager.shutdown()


def _print_profile(profiler: Any) -> None:
    import pstats

    stats = pstats.Stats(profiler)
    wanted = set(
        "data_received on_headers_complete on_message_complete complete parse _parse_header _flush _run infer "
        "answer_all encode_response _respond on_response_complete".split()
    )
    rows = []
    for (path, _line, name), (_cc, calls, _tt, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name in wanted and ("rest_fast" in path or "httptools" in path or "http_limits" in path
                               or "rest_codec" in path or name == "infer"):  # fmt: skip
            rows.append((cumulative, calls, f"{Path(path).name}:{name}"))
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"lane profile ({total:.2f} s profiled): cumulative seconds, calls, function")
    for cumulative, calls, where in sorted(rows, reverse=True):
        print(f"  {cumulative:7.3f} {calls:8d}  {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rest_lane_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="add_sub")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--blocks", type=int, default=3, help="alternating lane/ASGI blocks (default 3)")
    parser.add_argument("--profile", action="store_true", help="print the lane's cProfile split once")
    args = parser.parse_args(argv)
    model = common.load_model_spec(args.model)
    built = common.rest_binary_request(model)
    head = f"POST {built.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(built.body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in built.headers.items() if name.lower() != "content-length")
    request = (head + "\r\n").encode() + built.body
    results: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = targets.write_shipyard_repository(Path(tmp) / "repo", [model], None, 0)
        for block in range(args.blocks):
            for lane_on in (True, False):
                profile = args.profile and lane_on and block == 0
                cost = asyncio.run(_measure(repo, request, lane_on, args.connections, args.rounds, profile))
                results[lane_on].append(cost)
                print(f"{'lane' if lane_on else 'ASGI'}: {cost:.1f} µs of CPU per request")
    lane, asgi = statistics.median(results[True]), statistics.median(results[False])
    print(f"{args.model}, {args.connections} connections: lane {lane:.1f} µs, ASGI path {asgi:.1f} µs per request "
          f"(medians of {args.blocks}; {asgi / lane:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
