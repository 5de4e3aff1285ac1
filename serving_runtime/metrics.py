"""Prometheus metrics with Triton's names and labels, read from the models' stats at scrape time.

Per model version (labels ``model``, ``version``), as Triton exports them:

- counters ``nv_inference_request_success``, ``nv_inference_request_failure{reason}`` (REJECTED,
  CANCELED, BACKEND, OTHER), ``nv_inference_count`` (items), ``nv_inference_exec_count``
  (backend executions; count / exec_count is the mean batch size),
  ``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
  ``nv_inference_compute_infer_duration_us`` (cumulative microseconds);
- gauge ``nv_inference_pending_request_count``;
- histograms ``shipyard_inference_request_duration_seconds`` (successful requests, end to end in
  the server) and ``shipyard_inference_batch_size`` (items per execution).

Machine gauges from a ``UtilizationSampler`` (a background thread, every ``interval_s``):
``nv_cpu_utilization`` (0..1), ``nv_cpu_memory_total_bytes``, ``nv_cpu_memory_used_bytes``, and,
only when NVML finds a GPU, ``nv_gpu_utilization`` (0..1), ``nv_gpu_memory_total_bytes``,
``nv_gpu_memory_used_bytes``, ``nv_gpu_power_usage`` (watts), labelled ``gpu_uuid``.

Serve ``render(registry)`` at ``GET /metrics``: it is ``generate_latest`` with Triton's counter
``# TYPE`` lines (prometheus_client would otherwise rename counters to ``*_total``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shipyard.serving_runtime.stats import ModelStats

log = logging.getLogger(__name__)

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

# Triton's counters, exposed under their exact names (no ``_total``): name -> help.
TRITON_COUNTERS: dict[str, str] = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": "Number of model executions performed (does not include cached requests)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
    "nv_cache_num_hits_per_model": "Number of cache hits per model",
    "nv_cache_num_misses_per_model": "Number of cache misses per model",
    "nv_cache_hit_duration_per_model": "Total cache hit duration per model, in microseconds",
    "nv_cache_miss_duration_per_model": "Total cache miss (insertion) duration per model, in microseconds",
}


def _counter(name: str, labels: tuple[str, ...]) -> tuple[Metric, Callable[[tuple[str, ...], float], None]]:
    """A counter family whose samples carry ``name`` itself (rendered ``untyped``; see ``render``)."""
    metric = Metric(name, TRITON_COUNTERS[name], "unknown")

    def add(values: tuple[str, ...], value: float) -> None:
        metric.add_sample(name, dict(zip(labels, values, strict=True)), value)

    return metric, add


def _model_families(all_stats: Iterable[ModelStats]) -> Iterator[Metric]:
    model_labels = ("model", "version")
    success, add_success = _counter("nv_inference_request_success", model_labels)
    failure, add_failure = _counter("nv_inference_request_failure", (*model_labels, "reason"))
    count, add_count = _counter("nv_inference_count", model_labels)
    exec_count, add_exec = _counter("nv_inference_exec_count", model_labels)
    request_us, add_request_us = _counter("nv_inference_request_duration_us", model_labels)
    queue_us, add_queue_us = _counter("nv_inference_queue_duration_us", model_labels)
    compute_us, add_compute_us = _counter("nv_inference_compute_infer_duration_us", model_labels)
    pending = GaugeMetricFamily(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        labels=model_labels,
    )
    latency = HistogramMetricFamily(
        "shipyard_inference_request_duration_seconds",
        "Successful inference requests: time from arrival at the scheduler to the answer",
        labels=model_labels,
    )
    batch_size = HistogramMetricFamily(
        "shipyard_inference_batch_size", "Items per backend execution (the formed batch size)", labels=model_labels
    )
    for stats in all_stats:
        key = (stats.name, str(stats.version))
        add_success(key, stats.success.count)
        reasons = dict.fromkeys(FAILURE_REASONS, 0)
        reasons.update(stats.failures_by_reason)
        for reason, n in reasons.items():
            add_failure((*key, reason), n)
        add_count(key, stats.inference_count)
        add_exec(key, stats.execution_count)
        add_request_us(key, stats.success.ns // 1000)
        add_queue_us(key, stats.queue.ns // 1000)
        add_compute_us(key, stats.compute_infer.ns // 1000)
        pending.add_metric(key, stats.pending)
        latency.add_metric(
            key,
            [(floatToGoString(b / 1e9) if b is not None else "+Inf", n) for b, n in stats.latency.cumulative()],
            stats.latency.total / 1e9,
        )
        batch_size.add_metric(
            key,
            [(floatToGoString(b) if b is not None else "+Inf", n) for b, n in stats.batch_size.cumulative()],
            stats.batch_size.total,
        )
    yield from (success, failure, count, exec_count, request_us, queue_us, compute_us, pending, latency, batch_size)
    yield from _cache_families(all_stats)


def _cache_families(all_stats: Iterable[ModelStats]) -> Iterator[Metric]:
    """Triton's per-model response cache counters, for the versions that cache (cache.py)."""
    labels = ("model", "version")
    families = {name: _counter(name, labels) for name in TRITON_COUNTERS if name.startswith("nv_cache_")}
    for stats in all_stats:
        if not stats.cache_enabled:
            continue
        key = (stats.name, str(stats.version))
        families["nv_cache_num_hits_per_model"][1](key, stats.cache_hit.count)
        families["nv_cache_num_misses_per_model"][1](key, stats.cache_miss.count)
        families["nv_cache_hit_duration_per_model"][1](key, stats.cache_hit.ns // 1000)
        families["nv_cache_miss_duration_per_model"][1](key, stats.cache_miss.ns // 1000)
    yield from (metric for metric, _ in families.values())


class ModelStatsCollector(Collector):
    """Reads every model's ``ModelStats`` from ``stats_source()`` at each scrape."""

    def __init__(self, stats_source: Callable[[], Iterable[ModelStats]]) -> None:
        self._stats_source = stats_source

    def describe(self) -> Iterable[Metric]:
        return ()  # families are dynamic; nothing to check for clashes

    def collect(self) -> Iterable[Metric]:
        return list(_model_families(list(self._stats_source())))


@dataclass(frozen=True)
class GpuSample:
    uuid: str
    utilization: float  # 0..1
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float | None


@dataclass(frozen=True)
class UtilizationSample:
    cpu_utilization: float  # 0..1, all cores
    cpu_memory_used_bytes: int
    cpu_memory_total_bytes: int
    gpus: tuple[GpuSample, ...] = ()


class UtilizationSampler(Collector):
    """Samples CPU (psutil) and GPU (NVML, when present) utilization on a background thread.

    ``start()`` begins sampling every ``interval_s`` seconds (a scrape also starts it);
    ``stop()`` ends the thread and shuts NVML down. Without NVML (no driver, no GPU, no
    nvidia-ml-py) only the CPU gauges are exported; nothing raises.
    """

    def __init__(self, interval_s: float = 1.0, gpu: bool = True) -> None:
        """Raises: ValueError when ``interval_s`` is not positive."""
        if interval_s <= 0:
            raise ValueError(f"utilization sampling interval must be > 0 seconds, got {interval_s}")
        self.interval_s = interval_s
        self._want_gpu = gpu
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._latest: UtilizationSample | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def gpu_available(self) -> bool:
        """True once NVML initialised and found at least one GPU."""
        return bool(self._handles)

    @property
    def latest(self) -> UtilizationSample | None:
        return self._latest

    def start(self) -> None:
        """Start the sampling thread (idempotent). Takes a first sample before returning."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            if self._want_gpu:
                self._init_nvml()
            import psutil

            psutil.cpu_percent(interval=None)  # prime: the first call has no reference point
            self._sample()
            self._thread = threading.Thread(target=self._run, name="utilization-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and release NVML (idempotent)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            if thread is not None:
                thread.join(timeout=max(5.0, 2 * self.interval_s))
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:  # shutting down must never fail the server
                    log.debug("nvmlShutdown failed", exc_info=True)
                self._nvml = None
                self._handles = []

    def _init_nvml(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # no nvidia-ml-py, no driver, no GPU: CPU metrics only
            log.info("GPU metrics disabled: NVML unavailable (%s)", exc)
            return
        self._nvml = pynvml
        try:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:
            log.info("GPU metrics disabled: NVML could not list devices (%s)", exc)
            self._handles = []

    def _gpu_samples(self) -> tuple[GpuSample, ...]:
        nvml = self._nvml
        samples: list[GpuSample] = []
        for handle in self._handles:
            try:
                uuid = nvml.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    power: float | None = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
                except Exception:
                    power = None
                samples.append(GpuSample(uuid, utilization, int(memory.used), int(memory.total), power))
            except Exception:  # a GPU that cannot be read this time is left out of this sample
                log.debug("NVML read failed", exc_info=True)
        return tuple(samples)

    def _sample(self) -> None:
        import psutil

        memory = psutil.virtual_memory()
        self._latest = UtilizationSample(
            cpu_utilization=psutil.cpu_percent(interval=None) / 100.0,
            cpu_memory_used_bytes=int(memory.total - memory.available),
            cpu_memory_total_bytes=int(memory.total),
            gpus=self._gpu_samples() if self._handles else (),
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception as exc:  # keep sampling; a failed sample leaves the previous one
                log.warning("utilization sample failed: %s", exc)  # e.g. out of file descriptors: no traceback

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        if self._thread is None and not self._stop.is_set():
            self.start()
        sample = self._latest
        if sample is None:
            return []
        families: list[Metric] = [
            GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", value=sample.cpu_utilization),
            GaugeMetricFamily(
                "nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=sample.cpu_memory_total_bytes
            ),
            GaugeMetricFamily(
                "nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=sample.cpu_memory_used_bytes
            ),
        ]
        if sample.gpus:
            util = GaugeMetricFamily("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=["gpu_uuid"])
            total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=["gpu_uuid"])
            used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=["gpu_uuid"])
            power = GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts", labels=["gpu_uuid"])
            for gpu in sample.gpus:
                util.add_metric([gpu.uuid], gpu.utilization)
                total.add_metric([gpu.uuid], gpu.memory_total_bytes)
                used.add_metric([gpu.uuid], gpu.memory_used_bytes)
                if gpu.power_watts is not None:
                    power.add_metric([gpu.uuid], gpu.power_watts)
            families += [util, total, used, power]
        return families


def build_registry(
    stats_source: Callable[[], Iterable[ModelStats]],
    *,
    sampler: UtilizationSampler | None = None,
    process_metrics: bool = False,
) -> CollectorRegistry:
    """A registry with the model metrics and, when ``sampler`` is given, CPU/GPU utilization.

    ``stats_source`` is called at every scrape (e.g. ``ModelManager.all_stats``). The caller
    owns ``sampler``: ``start()`` it with the server (a first scrape also starts it) and
    ``stop()`` it at shutdown. ``process_metrics`` adds prometheus_client's standard process and
    Python collectors (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
    ``python_gc_collections_total``...).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelStatsCollector(stats_source))
    if sampler is not None:
        registry.register(sampler)
    if process_metrics:
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The ``/metrics`` body and content type: Prometheus text with Triton's counter types.

    prometheus_client names counters ``*_total``; Triton's counters have no suffix, so they are
    collected as untyped samples and their ``# TYPE`` lines are set to ``counter`` here.
    """
    text = generate_latest(registry)
    for name in TRITON_COUNTERS:
        text = text.replace(f"# TYPE {name} untyped\n".encode(), f"# TYPE {name} counter\n".encode(), 1)
    return text, CONTENT_TYPE_LATEST
