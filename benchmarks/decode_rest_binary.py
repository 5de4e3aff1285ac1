"""How long the server takes to decode a REST binary-extension request of one 1x3x224x224 FP32
image (the body tritonclient.http sends), next to the same tensor sent as JSON.

    .venv/bin/python -m benchmarks.decode_rest_binary

The binary path is ``numpy.frombuffer`` over the request body (no copy, no per-element Python),
so it should take microseconds; JSON needs every element parsed and converted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

import shipyard.serving_runtime.protocol.rest_codec as rest_codec


def build_body(array: np.ndarray, binary: bool) -> tuple[bytes, int | None]:
    """A request body as tritonclient.http builds it: JSON header, then the raw tensor when binary."""
    tensor: dict[str, object] = {"name": "input", "datatype": "FP32", "shape": list(array.shape)}
    if binary:
        raw = array.tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        return header + raw, len(header)
    tensor["data"] = array.ravel().tolist()
    return json.dumps({"inputs": [tensor]}).encode(), None


def time_us(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and minimum wall time of ``fn`` in microseconds."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(samples), min(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=2000, help="timed decodes of the binary body")
    parser.add_argument("--json-repeat", type=int, default=5, help="timed decodes of the JSON body")
    args = parser.parse_args(argv)

    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    body, header_length = build_body(image, binary=True)
    decoded = rest_codec.decode_request(body, header_length)
    assert np.array_equal(decoded.inputs[0].data, image)

    def decode_binary() -> object:
        length = rest_codec.parse_header_length(str(header_length), len(body))
        return rest_codec.decode_request(body, length)

    median, best = time_us(decode_binary, args.repeat)
    print(f"REST binary, 1x3x224x224 FP32 ({len(body) / 1e6:.2f} MB body): median {median:.1f} us, min {best:.1f} us")

    json_body, _ = build_body(image, binary=False)
    json_median, _ = time_us(lambda: rest_codec.decode_request(json_body, None), args.json_repeat)
    print(f"REST JSON,   same tensor ({len(json_body) / 1e6:.2f} MB body): median {json_median:.0f} us")
    print(f"binary is {json_median / median:.0f}x faster to decode; under 1 ms: {median < 1000}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
