"""The in-process scorer's instance threads: batches run back to back, never waiting for the event loop.

With one ``asyncio.to_thread`` call per batch, an instance is idle from the end of one batch until the event
loop has seen the answer, handed the instance to the next waiting request and started a thread call for it;
on a busy two-core machine the loop (reading and writing parts) and the interpreter's switch interval (the
thread waits up to 5 ms for the GIL) stretch that gap. Here each instance has a thread that takes the next
queued batch as soon as the last one returns, while the scorer keeps ``max_inflight`` batches queued; the
loop only receives the answers (``call_soon_threadsafe``).

``switch_interval_s``: while a feeder runs, the interpreter's switch interval is lowered to it, so a thread
whose batch just finished gets the GIL back quickly (restored on ``close``).

Public: ``Feeder(instances, outputs)``: ``async run(inputs)``, ``close()``.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SWITCH_INTERVAL_S = 0.0005
_STOP = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Feeder:
    """One thread per instance, all taking batches from one inbox."""

    def __init__(
        self, instances: Sequence[Any], outputs: tuple[str, ...], switch_interval_s: float = SWITCH_INTERVAL_S
    ) -> None:
        self._outputs = outputs
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, args=(instance,), name=f"score-instance-{i}", daemon=True)
            for i, instance in enumerate(instances)
        ]
        self._saved_interval = sys.getswitchinterval()
        if switch_interval_s:
            sys.setswitchinterval(min(switch_interval_s, self._saved_interval))
        for thread in self._threads:
            thread.start()

    async def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of one batch. Raises: whatever the instance's ``execute`` raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self._inbox.put((inputs, future, loop))
        return await future

    def _work(self, instance: Any) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            inputs, future, loop = item
            result, error = None, None
            try:
                result = instance.execute(inputs, self._outputs)
            except Exception as exc:  # the caller's answer
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits
                pass

    def close(self) -> None:
        """Stop the threads after the batches queued so far; restore the switch interval. Blocking."""
        for _ in self._threads:
            self._inbox.put(_STOP)
        for thread in self._threads:
            thread.join(60)
        sys.setswitchinterval(self._saved_interval)
