"""Triton's response cache: a server-wide LRU cache of whole responses, bounded by bytes
(``--cache-config local,size=BYTES``), used by the models whose config says
``response_cache { enable: true }``.

- **Key**: a BLAKE2b digest over the model's name and version, a per-loaded-version token, every
  input's name, datatype, shape and bytes (in name order) and the requested outputs. Two loads of
  the same version number have different tokens, so an entry never answers for another load.
- **Lifetime**: a version's entries are evicted when it retires (``CachingScheduler.close``).
- **Bound**: the bytes of the stored outputs plus the key and a fixed per-entry overhead; inserting
  evicts least-recently-used entries until the total fits; an entry larger than the whole cache is
  not stored.
- **Statistics** as Triton names them: ``cache_hit`` (count, time to look up and answer) and
  ``cache_miss`` (count, time to look up and insert) per model version; a hit counts as a
  successful request but not as an inference or an execution.

Runs on the event loop thread only (``submit`` is awaited there), so it needs no lock.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.scheduling.api import InferenceRequest, Scheduler
from shipyard.serving_runtime.stats import ModelStats

log = logging.getLogger(__name__)

ENTRY_OVERHEAD_BYTES = 256  # dict slots, the entry's tuple and array headers, roughly
_tokens = itertools.count(1)


def parse_cache_config(spec: str) -> int:
    """The cache size in bytes from Triton's ``--cache-config local,size=BYTES``.

    Raises: ValueError naming the problem and the expected form.
    """
    form = "expected --cache-config local,size=BYTES (the local cache and its size in bytes)"
    name, _, rest = spec.partition(",")
    if name.strip() != "local":
        raise ValueError(f"cache {name.strip()!r} is not supported; {form}")
    settings: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"cache setting {item!r} has no value; {form}")
        settings[key.strip()] = value.strip()
    unknown = set(settings) - {"size"}
    if unknown:
        raise ValueError(f"unknown local cache setting(s) {', '.join(sorted(unknown))}; {form}")
    if "size" not in settings:
        raise ValueError(f"the local cache needs a size; {form}")
    try:
        size = int(settings["size"])
    except ValueError:
        raise ValueError(f"cache size {settings['size']!r} is not an integer; {form}") from None
    if size <= 0:
        raise ValueError(f"cache size must be positive, got {size}; {form}")
    return size


class ResponseCache:
    """An LRU map from request digests to outputs, bounded by ``size_bytes``."""

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = int(size_bytes)
        self.used_bytes = 0
        self._entries: OrderedDict[bytes, tuple[int, int, dict[str, np.ndarray]]] = OrderedDict()
        self._by_token: dict[int, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes) -> dict[str, np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[2]

    def insert(self, key: bytes, token: int, outputs: Mapping[str, np.ndarray]) -> None:
        """Store read-only copies of ``outputs``; evict the least recently used entries to fit."""
        stored = {}
        size = len(key) + ENTRY_OVERHEAD_BYTES
        for name, array in outputs.items():
            copy = np.array(array, copy=True)
            copy.flags.writeable = False
            stored[name] = copy
            size += copy.nbytes + len(name)
        if size > self.size_bytes or key in self._entries:
            return
        while self.used_bytes + size > self.size_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (token, size, stored)
        self._by_token.setdefault(token, set()).add(key)
        self.used_bytes += size

    def evict(self, token: int) -> None:
        """Drop every entry of one loaded version."""
        for key in list(self._by_token.get(token, ())):
            self._drop(key)
        self._by_token.pop(token, None)

    def _drop(self, key: bytes) -> None:
        token, size, _ = self._entries.pop(key)
        self.used_bytes -= size
        keys = self._by_token.get(token)
        if keys is not None:
            keys.discard(key)


class CacheCollector(Collector):
    """The cache's fill at scrape time: ``shipyard_response_cache_used_bytes`` (entries as counted
    against the bound), ``shipyard_response_cache_size_bytes`` (the bound) and
    ``shipyard_response_cache_entries``."""

    def __init__(self, cache: ResponseCache) -> None:
        self._cache = cache

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        cache = self._cache
        return [
            GaugeMetricFamily(
                "shipyard_response_cache_used_bytes", "Bytes held by the response cache", cache.used_bytes
            ),
            GaugeMetricFamily("shipyard_response_cache_size_bytes", "The response cache's bound", cache.size_bytes),
            GaugeMetricFamily("shipyard_response_cache_entries", "Responses in the cache", len(cache)),
        ]


def request_key(model: str, version: int, token: int, request: InferenceRequest) -> bytes:
    """The digest of everything that decides a response (see the module docstring)."""
    digest = hashlib.blake2b(f"{model}\0{version}\0{token}".encode(), digest_size=32)
    update = digest.update
    update(request.batch_size.to_bytes(8, "little"))
    inputs = request.inputs
    for name in sorted(inputs) if len(inputs) > 1 else inputs:
        array = inputs[name]
        update(f"{name}\0{array.dtype.str}\0{array.shape}".encode())
        if array.dtype == np.object_:
            for item in array.reshape(-1):
                data = item.encode() if isinstance(item, str) else bytes(item)
                update(len(data).to_bytes(8, "little"))
                update(data)
        elif array.flags.c_contiguous:
            update(array.data.cast("B") if array.ndim else array.tobytes())
        else:
            update(array.tobytes())
    update("\0".join(request.outputs).encode())
    return digest.digest()


class CachingScheduler:
    """Wraps a model version's scheduler: answers repeated requests from the cache."""

    def __init__(self, inner: Scheduler, cache: ResponseCache, model: str, version: int) -> None:
        self.inner = inner
        self.cache = cache
        self.model = model
        self.version = version
        self.token = next(_tokens)
        self.stats: ModelStats = inner.stats
        self.stats.cache_enabled = True

    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        start = time.perf_counter_ns()
        key = request_key(self.model, self.version, self.token, request)
        cached = self.cache.lookup(key)
        looked_up = time.perf_counter_ns()
        if cached is not None:
            outputs = {name: cached[name] for name in request.outputs} if request.outputs else dict(cached)
            self.stats.record_cache_hit(time.perf_counter_ns() - start)
            return outputs
        results = await self.inner.submit(request)
        inserted = time.perf_counter_ns()
        self.cache.insert(key, self.token, results)
        self.stats.record_cache_miss(looked_up - start + time.perf_counter_ns() - inserted)
        return results

    def pending_count(self) -> int:
        return self.inner.pending_count()

    async def drain(self) -> None:
        await self.inner.drain()

    def close(self) -> None:
        self.cache.evict(self.token)
        self.inner.close()


def with_cache(
    scheduler: Scheduler, config: object, cache: ResponseCache | None, model: str, version: int
) -> Scheduler:
    """``scheduler`` wrapped in the cache when the config enables it and the server has one.

    Raises: ModelConfigError for a decoupled model with the cache enabled (as Triton refuses it).
    """
    enabled = bool(getattr(getattr(config, "response_cache", None), "enable", False))
    if not enabled or config.HasField("sequence_batching"):  # type: ignore[attr-defined]
        # a sequence's answers depend on its state, not only on the request
        return scheduler
    if config.model_transaction_policy.decoupled:  # type: ignore[attr-defined]
        raise ModelConfigError(
            f"model '{model}': response_cache cannot cache a decoupled model (model_transaction_policy "
            "{ decoupled: true }), whose requests may answer many times; remove one of the two"
        )
    if cache is None:
        log.warning(
            "model %r enables response_cache but the server has no cache; start it with "
            "--cache-config local,size=BYTES to cache its responses",
            model,
        )
        return scheduler
    return CachingScheduler(scheduler, cache, model, version)
