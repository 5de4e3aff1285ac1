"""Start a coroutine at once, on the calling (event loop) thread, and hand the rest to a task.

``loop.create_task(coro)`` runs nothing until the loop's next turn. For a fast-path group at
concurrency 1 that turn is on the critical path: the group reaches its model's batcher (and an
idle instance starts it) one turn later (docs/serving.md, "Latency at concurrency 1"). Python 3.12
has ``asyncio.eager_task_factory`` for this; on 3.11 ``start_eagerly`` does the same for one
coroutine: it runs the coroutine up to its first real suspension right away, then wraps the
suspended coroutine in an ordinary task, which resumes it, cancels it and reports its end as a
task of the coroutine itself would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any


class _Started(Coroutine[Any, Any, Any]):
    """``coro``, already suspended on ``pending`` (what it yielded), as a coroutine a task can run:
    the task's first step gets ``pending`` back; every later step, and any throw (a cancellation,
    even before that first step), goes to ``coro`` itself."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending: list[Any] = [pending]

    def send(self, value: Any) -> Any:
        if self._pending:
            return self._pending.pop()
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._pending.clear()
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - the old three-argument form

    def close(self) -> None:
        self._pending.clear()
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:  # pragma: no cover - only a task runs it
        raise TypeError("a started coroutine is run by its task, not awaited")


def start_eagerly(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Run ``coro`` until it first waits; None when it finished (or raised: re-raised here) without
    waiting, else the task that carries it on. Call on ``loop``'s thread."""
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_Started(coro, pending))
