"""Fuzz the serving runtime: REST from its own OpenAPI document (schemathesis), gRPC with malformed messages.

    python -m benchmarks.fuzz                          # the long run (make fuzz): >= 10,000 HTTP, >= 2,000 gRPC
    python -m benchmarks.fuzz --http 500 --grpc 300    # a short one

REST: every operation of ``GET /v2/openapi.json`` gets schemathesis-generated requests (valid and
invalid against the schema); half of the model-path requests name a model that exists, so they reach
the codecs. gRPC: every method of ``inference.GRPCInferenceService`` gets random bytes, truncated and
bit-flipped valid messages, mismatched fields (shapes, datatypes, raw contents), and an oversize
message. Pass: no 5xx (503 aside), no INTERNAL/UNKNOWN status, the server alive at the end, its RSS
within 20 MB of the start (after a warm-up). Prints the figures and exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.edges import Runtime, runtime

MODELS = ("add_sub",)


@dataclass
class FuzzReport:
    http_requests: int = 0
    grpc_messages: int = 0
    http_status: collections.Counter[int] = field(default_factory=collections.Counter)
    grpc_status: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    alive: bool = True

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb

    def lines(self) -> list[str]:
        return [
            f"HTTP requests: {self.http_requests}  statuses: {dict(sorted(self.http_status.items()))}",
            f"gRPC messages: {self.grpc_messages}  statuses: {dict(sorted(self.grpc_status.items()))}",
            f"5xx (503 aside) / INTERNAL+UNKNOWN: {len(self.failures)}",
            f"server alive at the end: {self.alive}",
            f"server RSS: {self.rss_start_mb:.1f} MB -> {self.rss_end_mb:.1f} MB ({self.rss_growth_mb:+.1f} MB)",
        ]


def fuzz_http(served: Runtime, requests: int, report: FuzzReport, seed: int = 0) -> None:
    """Send about ``requests`` schemathesis-generated requests, in rounds over every operation (each round
    with its own hypothesis seed, so operations with few distinct inputs do not use the budget up)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    schema = schemathesis.openapi.from_url(served.http_url + "/v2/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    rng = random.Random(seed)
    target = report.http_requests + requests
    # schemathesis generates a case in ~0.1 s here; each case also goes out as ``mutants`` byte-level
    # variants (truncated, bit-flipped, re-encoded), which cost a few ms each
    mutants = 9
    per_operation = max(5, min(200, requests // (len(operations) * (1 + mutants))))
    round_number = 0
    while report.http_requests < target:
        sent_before = report.http_requests
        for operation in operations:
            if report.http_requests >= target:
                break

            @hypothesis_seed(seed * 1000 + round_number)
            @given(case=operation.as_strategy())
            @settings(max_examples=per_operation, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def one(case: Any) -> None:
                if report.http_requests >= target:
                    return
                if "model" in (case.path_parameters or {}) and rng.random() < 0.5:
                    case.path_parameters["model"] = rng.choice(MODELS)
                try:
                    response = case.call(base_url=served.http_url, timeout=15)
                except Exception as exc:  # a connection the server dropped
                    report.failures.append(f"{case.method} {case.formatted_path}: no response ({exc})")
                    return
                _record(report, f"{case.method} {case.formatted_path}", response.status_code, response.text)
                sent = response.request
                for _ in range(mutants):  # cheap variants of the same request, sent over a raw socket
                    if report.http_requests >= target:
                        return
                    _send_mutant(served, sent, rng, report)

            one()
        round_number += 1
        if report.http_requests == sent_before:
            break


def _record(report: FuzzReport, what: str, status: int, text: str) -> None:
    report.http_requests += 1
    report.http_status[status] += 1
    if status >= 500 and status != 503:
        report.failures.append(f"{what} -> {status}: {text[:200]}")


def _mutate(body: bytes, rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """A variant of ``body`` and extra headers: truncated, bit-flipped, gzip (valid or not), or binary-header lies."""
    import gzip

    choice = rng.randrange(6)
    if choice == 0 and body:
        return body[: rng.randrange(len(body))], {}
    if choice == 1 and body:
        data = bytearray(body)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), {}
    if choice == 2:
        return gzip.compress(body), {"Content-Encoding": "gzip"}
    if choice == 3:
        return rng.randbytes(rng.randrange(1, 64)), {"Content-Encoding": rng.choice(["gzip", "deflate", "br"])}
    if choice == 4:
        return body + rng.randbytes(rng.randrange(0, 64)), {"Inference-Header-Content-Length": str(
            rng.choice([0, len(body), len(body) + 1, -1, 2**63]))}  # fmt: skip
    return rng.randbytes(rng.randrange(0, 256)), {"Content-Type": rng.choice(["application/json", "text/plain"])}


def _send_mutant(served: Runtime, sent: Any, rng: random.Random, report: FuzzReport) -> None:
    import http.client
    from urllib.parse import urlsplit

    body = sent.body if isinstance(sent.body, bytes) else (sent.body or "").encode()
    mutated, extra = _mutate(body, rng)
    url = urlsplit(sent.url)
    path = url.path + (f"?{url.query}" if url.query else "")
    connection = http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=15)
    try:
        connection.request(sent.method, path, body=mutated, headers={**extra, "Content-Length": str(len(mutated))})
        response = connection.getresponse()
        _record(report, f"{sent.method} {path} (mutant)", response.status, response.read().decode(errors="replace"))
    except (OSError, http.client.HTTPException) as exc:
        report.failures.append(f"{sent.method} {path} (mutant): no response ({exc})")
    finally:
        connection.close()


def _valid_infer(rng: random.Random) -> Any:
    import numpy as np
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=rng.choice(MODELS))
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    return request


def _mangled_infer(rng: random.Random) -> Any:
    """A ModelInferRequest with one field wrong: shapes, datatypes, raw contents, names, parameters."""
    request = _valid_infer(rng)
    tensor = request.inputs[rng.randrange(2)]
    choice = rng.randrange(9)
    if choice == 0:
        tensor.ClearField("shape")
        tensor.shape.extend(rng.choice([[], [0], [2**62, 0], [-1, 16], [1, 2**40], [3, 16], [1, 16, 1]]))
    elif choice == 1:
        tensor.datatype = rng.choice(["", "FP8", "BYTES", "INT64", "BOOL", "fp32", "\x00"])
    elif choice == 2:
        request.raw_input_contents[rng.randrange(2)] = rng.randbytes(rng.randrange(0, 200))
    elif choice == 3:
        request.raw_input_contents.append(b"extra")
    elif choice == 4:
        tensor.contents.fp32_contents.extend([1.0] * rng.randrange(0, 40))
    elif choice == 5:
        tensor.name = rng.choice(["", "nope", "INPUT0", "\u2603" * 50])
    elif choice == 6:
        request.parameters["shared_memory_region"].string_param = "nope"
        tensor.parameters["shared_memory_region"].string_param = "nope"
    elif choice == 7:
        request.outputs.add(name=rng.choice(["OUTPUT0", "nope", ""])).parameters["classification"].int64_param = 3
    else:
        request.model_version = rng.choice(["0", "-1", "999999999999", "x"])
    return request


def _messages_for(method: str, rng: random.Random) -> bytes:
    """Bytes to send to ``method``: random, a bit-flipped or truncated valid message, or a mangled one."""
    from tritonclient.grpc import service_pb2

    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 512))
    if method == "ModelInfer":
        valid = (_mangled_infer(rng) if kind == 3 else _valid_infer(rng)).SerializeToString()
    else:
        request_class = getattr(service_pb2, f"{method}Request", None)
        valid = request_class(name=rng.choice(MODELS)).SerializeToString() if request_class and hasattr(
            request_class(), "name") else b""  # fmt: skip
    if kind == 1 and valid:
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 2 and valid:
        return valid[: rng.randrange(len(valid))]
    return valid


def fuzz_grpc(served: Runtime, messages: int, report: FuzzReport, seed: int = 0) -> None:
    """Send ``messages`` malformed messages spread over every method of GRPCInferenceService."""
    import grpc
    from tritonclient.grpc import service_pb2

    rng = random.Random(seed)
    methods = [m.name for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    streaming = {"ModelStreamInfer"}
    bad = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
    with grpc.insecure_channel(served.grpc_host) as channel:
        for i in range(messages):
            method = methods[i % len(methods)]
            payload = _messages_for(method, rng)
            if i % 500 == 499:
                payload = b"\x0a" + b"\xff" * 5 + rng.randbytes(5 * 1024 * 1024)  # oversize
            path = f"/inference.GRPCInferenceService/{method}"
            identity = lambda b: b  # noqa: E731
            try:
                if method in streaming:
                    call = channel.stream_stream(path, request_serializer=identity, response_deserializer=identity)
                    for _ in call(iter([payload]), timeout=15):
                        pass
                else:
                    channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)(
                        payload, timeout=15
                    )
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                if code in bad:
                    report.failures.append(f"{method}: {code.name}: {(exc.details() or '')[:200]}")
            report.grpc_messages += 1
            report.grpc_status[code.name] += 1


def run(http_requests: int, grpc_messages: int, workdir: Path | None = None, seed: int = 0) -> FuzzReport:
    """Start a runtime, warm it up, fuzz it over both transports and report."""
    report = FuzzReport()
    with tempfile.TemporaryDirectory(prefix="shipyard-fuzz-") as tmp:
        with runtime(workdir or Path(tmp)) as served:
            fuzz_http(served, 40, FuzzReport(), seed + 1)  # warm-up: first-use allocations are not growth
            fuzz_grpc(served, 60, FuzzReport(), seed + 1)
            report.rss_start_mb = served.rss_mb()
            fuzz_http(served, http_requests, report, seed)
            fuzz_grpc(served, grpc_messages, report, seed)
            time.sleep(0.5)
            report.rss_end_mb = served.rss_mb()
            report.alive = served.alive() and served.process.poll() is None
            if "Traceback" in served.log():
                report.failures.append("the server logged a traceback:\n" + served.log()[-2000:])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, default=10_000, help="HTTP requests (default 10,000)")
    parser.add_argument("--grpc", type=int, default=2_000, help="gRPC messages (default 2,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-growth-mb", type=float, default=20.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = run(args.http, args.grpc, seed=args.seed)
    for line in report.lines():
        print(line)
    print(f"took {time.monotonic() - started:.0f} s")
    for failure in report.failures[:20]:
        print("FAIL", failure)
    ok = not report.failures and report.alive and report.rss_growth_mb <= args.max_rss_growth_mb
    print("result:", "pass" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
