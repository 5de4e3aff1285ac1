"""shipyard's own cost per request, without the transport: the gRPC handler path in one process.

Parses a pre-serialized ``ModelInferRequest``, runs it through ``GrpcInferenceServicer._infer``
(fast decode, scheduler, instance, response) and serializes the response, from ``--concurrency``
coroutines on one uvloop event loop, for a warm-up and then a measured window. Prints requests/s
and the process CPU per request. ``--no-inline`` turns off inline execution of tiny models (every
batch then goes to the instance thread and back), to show what that round trip costs.

    python -m benchmarks.request_path --model add_sub --concurrency 1 [--no-inline]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks import common, targets


async def measure(model_name: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """(requests/s, CPU µs per request) over the window, after a warm-up as long as the window."""
    from tritonclient.grpc import service_pb2

    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.protocol.grpc_service import GrpcInferenceServicer
    from shipyard.serving_runtime.protocol.service import InferenceService

    model = common.load_model_spec(model_name)
    with tempfile.TemporaryDirectory() as work:
        repo = targets.write_shipyard_repository(Path(work) / "repo", [model], None, 0)
        manager = ModelManager([str(repo)])
        await manager.start()
        try:
            servicer = GrpcInferenceServicer(InferenceService(manager))
            raw = common.grpc_request_bytes(model)
            count = 0

            async def client(stop: float) -> None:
                nonlocal count
                while time.perf_counter() < stop:
                    request = service_pb2.ModelInferRequest.FromString(raw)
                    (await servicer._infer(request)).SerializeToString()
                    count += 1

            await asyncio.gather(*(client(time.perf_counter() + seconds) for _ in range(concurrency)))
            count = 0
            start, cpu_start = time.perf_counter(), time.process_time()
            await asyncio.gather(*(client(start + seconds) for _ in range(concurrency)))
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        finally:
            await manager.shutdown()
    return count / elapsed, cpu / max(count, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="add_sub", help="zoo model (default add_sub)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0, help="window (and warm-up) length")
    parser.add_argument("--no-inline", action="store_true", help="never run tiny models on the event loop")
    args = parser.parse_args()
    if args.no_inline:
        from shipyard.serving_runtime.scheduling import inline as inline_rule

        inline_rule.INLINE_MAX_COMPUTE_NS = -1
    import uvloop

    rate, cpu_us = uvloop.run(measure(args.model, args.concurrency, args.seconds))
    inline = "off" if args.no_inline else "on"
    print(f"{args.model} c={args.concurrency} inline {inline}: {rate:,.0f} req/s, {cpu_us:.1f} us CPU per request")


if __name__ == "__main__":
    main()
