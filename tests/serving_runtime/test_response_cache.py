"""The response cache: the LRU itself (bounded by bytes, evicted per loaded version) and a real
server with ``--cache-config local,size=BYTES`` and ``response_cache { enable: true }``, driven by
tritonclient: hits and misses in statistics and metrics, keys that tell inputs and outputs apart,
and entries that never answer for a reloaded version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from repo_builders import scale_model, scale_repo_model
from server_harness import ServerProcess, http_get, start_server

from shipyard.serving_runtime.cache import ENTRY_OVERHEAD_BYTES, ResponseCache, parse_cache_config, request_key
from shipyard.serving_runtime.cli import main as cli_main
from shipyard.serving_runtime.scheduling.api import InferenceRequest

pytestmark = pytest.mark.timeout(120)


def _request(value: float, outputs: tuple[str, ...] = ()) -> InferenceRequest:
    return InferenceRequest({"IN": np.full((1, 4), value, dtype=np.float32)}, outputs)


def test_key_covers_model_version_inputs_and_outputs() -> None:
    base = request_key("m", 1, 1, _request(1.0))
    assert base == request_key("m", 1, 1, _request(1.0))
    assert base != request_key("m2", 1, 1, _request(1.0))
    assert base != request_key("m", 2, 1, _request(1.0))
    assert base != request_key("m", 1, 2, _request(1.0))  # another load of the same version
    assert base != request_key("m", 1, 1, _request(2.0))
    assert base != request_key("m", 1, 1, _request(1.0, ("OUT",)))
    reshaped = InferenceRequest({"IN": np.full((2, 2), 1.0, dtype=np.float32)})
    assert base != request_key("m", 1, 1, reshaped)
    retyped = InferenceRequest({"IN": np.full((1, 4), 1.0, dtype=np.float64)})
    assert base != request_key("m", 1, 1, retyped)


def test_lru_is_bounded_by_bytes_and_evicted_per_version() -> None:
    entry = ENTRY_OVERHEAD_BYTES + 32 + 4000 + 3  # overhead, key, 1000 float32, name "OUT"
    cache = ResponseCache(3 * entry)
    out = {"OUT": np.zeros(1000, dtype=np.float32)}
    for i in range(3):
        cache.insert(bytes([i]) * 32, 7, out)
    assert len(cache) == 3 and cache.used_bytes == 3 * entry
    assert cache.lookup(bytes([0]) * 32) is not None  # 0 is now the most recently used
    cache.insert(bytes([3]) * 32, 8, out)
    assert cache.lookup(bytes([1]) * 32) is None  # the least recently used went
    assert cache.used_bytes <= cache.size_bytes
    cache.insert(b"x" * 32, 8, {"OUT": np.zeros(10_000, dtype=np.float32)})  # larger than the cache
    assert cache.lookup(b"x" * 32) is None
    cached = cache.lookup(bytes([0]) * 32)
    assert cached is not None and not cached["OUT"].flags.writeable
    cache.evict(7)
    assert len(cache) == 1 and cache.used_bytes == entry


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("redis,size=10", "cache 'redis' is not supported"),
        ("local", "needs a size"),
        ("local,size=abc", "is not an integer"),
        ("local,size=0", "must be positive"),
        ("local,bytes=10", "unknown local cache setting"),
    ],
)
def test_cache_config_errors(spec: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cache_config(spec)
    assert cli_main(["--model-repository", str(tmp_path), "--cache-config", spec]) == 2
    assert message in capsys.readouterr().err
    assert parse_cache_config("local,size=1048576") == 1048576


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    repo = tmp_path_factory.mktemp("cache-repo")
    scale_repo_model(repo, "cached", {1: 2.0}, extra="response_cache { enable: true }")
    scale_repo_model(repo, "plain", {1: 3.0})
    server = start_server(
        tmp_path_factory.mktemp("cache-server"),
        [repo],
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--cache-config",
        "local,size=1048576",
        wait_models=("cached", "plain"),
    )
    yield server, repo
    server.stop()


def _infer(client: httpclient.InferenceServerClient, model: str, value: float) -> np.ndarray:
    tensor = httpclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), value, dtype=np.float32))
    return client.infer(model, [tensor]).as_numpy("OUT")  # type: ignore[no-any-return]


def _cache_stats(client: httpclient.InferenceServerClient, model: str) -> tuple[int, int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    infer = stats["inference_stats"]
    return infer["cache_hit"]["count"], infer["cache_miss"]["count"], stats["inference_count"]


def test_repeated_input_is_a_hit_in_statistics_and_metrics(cached: tuple[ServerProcess, Path]) -> None:
    server, _ = cached
    client = httpclient.InferenceServerClient(server.http_host)
    hits, misses, count = _cache_stats(client, "cached")
    np.testing.assert_array_equal(_infer(client, "cached", 1.5), np.full((1, 4), 3.0))
    np.testing.assert_array_equal(_infer(client, "cached", 1.5), np.full((1, 4), 3.0))
    np.testing.assert_array_equal(_infer(client, "cached", 2.5), np.full((1, 4), 5.0))
    assert _cache_stats(client, "cached") == (hits + 1, misses + 2, count + 2)  # a hit is no inference
    grpc = grpcclient.InferenceServerClient(server.grpc_host)
    tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), 2.5, dtype=np.float32))
    np.testing.assert_array_equal(grpc.infer("cached", [tensor]).as_numpy("OUT"), np.full((1, 4), 5.0))
    assert _cache_stats(client, "cached")[0] == hits + 2
    _infer(client, "plain", 1.5)
    _infer(client, "plain", 1.5)
    assert _cache_stats(client, "plain") == (0, 0, 2)
    status, body = http_get(server.http_url + "/metrics")
    text = body.decode()
    assert status == 200
    assert f'nv_cache_num_hits_per_model{{model="cached",version="1"}} {hits + 2}' in text
    assert f'nv_cache_num_misses_per_model{{model="cached",version="1"}} {misses + 2}' in text
    assert 'nv_cache_hit_duration_per_model{model="cached",version="1"}' in text
    assert 'nv_cache_num_hits_per_model{model="plain"' not in text
    assert "shipyard_response_cache_size_bytes 1.048576e+06" in text
    assert "shipyard_response_cache_entries 2.0" in text


def test_entries_never_answer_for_a_reloaded_version(cached: tuple[ServerProcess, Path]) -> None:
    server, repo = cached
    client = httpclient.InferenceServerClient(server.http_host)
    np.testing.assert_array_equal(_infer(client, "cached", 4.0), np.full((1, 4), 8.0))
    np.testing.assert_array_equal(_infer(client, "cached", 4.0), np.full((1, 4), 8.0))
    scale_model(repo / "cached" / "1" / "model.onnx", 10.0)  # same version number, new file
    client.load_model("cached")
    np.testing.assert_array_equal(_infer(client, "cached", 4.0), np.full((1, 4), 40.0))


def test_decoupled_and_sequence_models_are_not_cached() -> None:
    from shipyard.serving_runtime.cache import with_cache
    from shipyard.serving_runtime.config import parse_config_text
    from shipyard.serving_runtime.errors import ModelConfigError

    base = 'name: "m"\nbackend: "python"\nresponse_cache { enable: true }\n'
    decoupled = parse_config_text(base + "model_transaction_policy { decoupled: true }\n")
    with pytest.raises(ModelConfigError, match="response_cache cannot cache a decoupled model"):
        with_cache(object(), decoupled, ResponseCache(1024), "m", 1)  # type: ignore[arg-type]
    sequence = parse_config_text(base + "sequence_batching { }\n")
    inner = object()
    assert with_cache(inner, sequence, ResponseCache(1024), "m", 1) is inner  # type: ignore[arg-type]


def test_key_depends_on_values_not_memory_layout() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    c_order = request_key("m", 1, 1, InferenceRequest({"x": a}))
    assert c_order == request_key("m", 1, 1, InferenceRequest({"x": np.asfortranarray(a)}))
    assert c_order != request_key("m", 1, 1, InferenceRequest({"x": a.T.copy()}))
    words = np.array([b"ab", b"c"], dtype=np.object_)
    assert request_key("m", 1, 1, InferenceRequest({"s": words})) != request_key(
        "m", 1, 1, InferenceRequest({"s": np.array([b"a", b"bc"], dtype=np.object_)})
    )
