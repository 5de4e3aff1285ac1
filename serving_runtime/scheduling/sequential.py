"""Requests run one by one on the model's instances (Triton's default scheduler, no batching)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.errors import BackendError, ModelNotReady, RequestCancelled, ServingError
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.stats import ModelStats


class SequentialScheduler:
    """Each instance takes one request at a time, in a worker thread; callers wait for a free one."""

    def __init__(self, instances: Sequence[BackendInstance], model_name: str, version: int) -> None:
        if not instances:
            raise ValueError(f"model {model_name!r} version {version} has no instances")
        self._instances = list(instances)
        self._free: asyncio.Queue[BackendInstance] | None = None
        self._pending = 0
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = ModelStats(model_name, version)

    def _pool(self) -> asyncio.Queue[BackendInstance]:
        if self._free is None:
            self._free = asyncio.Queue()
            for instance in self._instances:
                self._free.put_nowait(instance)
        return self._free

    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        if not self._accepting:
            raise ModelNotReady("model is unloading; retry against the new version")
        self._pending += 1
        self._idle.clear()
        start_ns = time.monotonic_ns()
        try:
            pool = self._pool()
            try:
                instance = await pool.get()
            except asyncio.CancelledError:
                self.stats.record_failure("CANCELED", time.monotonic_ns() - start_ns)
                raise RequestCancelled("request cancelled while queued") from None
            queue_ns = time.monotonic_ns() - start_ns
            try:
                compute_start = time.monotonic_ns()
                outputs = await asyncio.to_thread(instance.execute, request.inputs, request.outputs)
                compute_ns = time.monotonic_ns() - compute_start
            except ServingError as exc:
                self.stats.record_failure(exc.reason, time.monotonic_ns() - start_ns)
                raise
            except Exception as exc:  # the backend's own error: fail this request only
                self.stats.record_failure("BACKEND", time.monotonic_ns() - start_ns)
                raise BackendError(f"backend failed: {exc}") from exc
            finally:
                pool.put_nowait(instance)
            self.stats.record_execution(request.batch_size, compute_ns)
            self.stats.record_success(request.batch_size, time.monotonic_ns() - start_ns, queue_ns, compute_ns)
            return outputs
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    def pending_count(self) -> int:
        return self._pending

    async def drain(self) -> None:
        self._accepting = False
        await self._idle.wait()

    def close(self) -> None:
        for instance in self._instances:
            instance.close()
        self._instances.clear()
