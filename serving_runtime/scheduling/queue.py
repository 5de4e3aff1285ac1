"""The request envelope and the priority queue with Triton's queue policies.

One ``QueuePolicy`` per priority level (``default_queue_policy``, overridden per level by
``priority_queue_policy``): ``max_queue_size`` (0 = unbounded; a full level rejects at once with
``QueueFull``), ``default_timeout_us`` (0 = none) with ``timeout_action`` REJECT (fail with
``RequestTimeout``, never executed) or DELAY (move behind every other request, lowest priority,
and keep it), and ``allow_timeout_override`` (a request's own timeout applies when it is shorter).

Priority levels are numbered 1 (highest) .. ``priority_levels``; 0 or an out-of-range priority
means the default level, as Triton does. Everything here runs on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shipyard.serving_runtime.errors import ModelConfigError, QueueFull
from shipyard.serving_runtime.scheduling.api import InferenceRequest

QUEUED, DISPATCHED, GONE = 0, 1, 2


@dataclass(eq=False, slots=True)
class Envelope:
    """One queued request: the caller awaits ``future``; times on the monotonic clock (ns)."""

    request: InferenceRequest
    future: asyncio.Future[dict[str, Any]]
    enqueue_ns: int
    batch_size: int
    shape_key: Hashable
    level: int = 0  # index into the queue's levels (0 = highest priority)
    deadline_ns: int = 0  # 0 = no timeout
    state: int = QUEUED
    delayed: bool = False
    dispatch_ns: int = 0
    weight: int = 1  # client requests it holds (a group of the native gRPC fast path: several)


def set_result(future: asyncio.Future[Any], value: Any) -> None:
    """Resolve ``future`` unless it is already done (cancelled, timed out)."""
    if not future.done():
        future.set_result(value)


def set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``future`` unless it is already done."""
    if not future.done():
        future.set_exception(exc)


@dataclass(frozen=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy`` for one priority level."""

    max_queue_size: int = 0
    default_timeout_us: int = 0
    delay_on_timeout: bool = False  # timeout_action DELAY (else REJECT)
    allow_timeout_override: bool = False

    def timeout_us(self, requested_us: int) -> int:
        """The timeout a request gets: the default, or its own when allowed and shorter."""
        if self.allow_timeout_override and requested_us > 0:
            if self.default_timeout_us == 0 or requested_us < self.default_timeout_us:
                return requested_us
        return self.default_timeout_us


@dataclass(frozen=True)
class QueueSettings:
    """The queueing part of ``dynamic_batching``."""

    priority_levels: int = 0
    default_priority_level: int = 0
    default_policy: QueuePolicy = field(default_factory=QueuePolicy)
    level_policies: dict[int, QueuePolicy] = field(default_factory=dict)

    @property
    def level_count(self) -> int:
        return max(self.priority_levels, 1)

    def policy(self, level: int) -> QueuePolicy:
        """The policy of priority ``level`` (1-based)."""
        return self.level_policies.get(level, self.default_policy)

    def level_index(self, priority: int) -> int:
        """0-based queue index for a request's priority (0 or out of range -> the default level)."""
        if self.priority_levels <= 0:
            return 0
        if priority <= 0 or priority > self.priority_levels:
            priority = self.default_priority_level
        return priority - 1


def _policy_from_proto(policy: Any) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=int(policy.max_queue_size),
        default_timeout_us=int(policy.default_timeout_microseconds),
        delay_on_timeout=int(policy.timeout_action) == 1,
        allow_timeout_override=bool(policy.allow_timeout_override),
    )


def queue_settings_from_proto(dynamic_batching: Any, where: str) -> QueueSettings:
    """Read priorities and queue policies from a ``ModelDynamicBatching`` message.

    Raises: ModelConfigError naming ``where`` (the model) and the bad field.
    """
    levels = int(dynamic_batching.priority_levels)
    default_level = int(dynamic_batching.default_priority_level)
    if levels > 0 and not 1 <= default_level <= levels:
        raise ModelConfigError(
            f"{where}: dynamic_batching.default_priority_level is {default_level} but must be in "
            f"1..{levels} (priority_levels); set default_priority_level"
        )
    level_policies: dict[int, QueuePolicy] = {}
    for level, policy in dynamic_batching.priority_queue_policy.items():
        if not 1 <= int(level) <= levels:
            raise ModelConfigError(
                f"{where}: dynamic_batching.priority_queue_policy has level {level}, outside 1..{levels} "
                "(priority_levels); remove it or raise priority_levels"
            )
        level_policies[int(level)] = _policy_from_proto(policy)
    default_policy = QueuePolicy()
    if dynamic_batching.HasField("default_queue_policy"):
        default_policy = _policy_from_proto(dynamic_batching.default_queue_policy)
    return QueueSettings(levels, default_level, default_policy, level_policies)


class RequestQueue:
    """Priority levels of FIFO queues plus one DELAY queue served last.

    Removal of cancelled or timed-out requests is lazy: their ``state`` leaves ``QUEUED`` and
    iteration skips them; the live count per level is exact at all times.
    """

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        count = settings.level_count
        self._policies = [settings.policy(i + 1) for i in range(count)]
        self._levels: list[deque[Envelope]] = [deque() for _ in range(count)]
        self._delayed: deque[Envelope] = deque()
        self._live = [0] * count
        self._size = 0
        self._deadlines: list[tuple[int, int, Envelope]] = []
        self._seq = 0

    def __len__(self) -> int:
        return self._size

    def push(self, envelope: Envelope) -> None:
        """Queue ``envelope`` at its priority; sets its level and deadline.

        Raises: QueueFull when the level is at its ``max_queue_size``.
        """
        level = self.settings.level_index(envelope.request.priority)
        policy = self._policies[level]
        if policy.max_queue_size and self._live[level] + envelope.weight > policy.max_queue_size:
            raise QueueFull(
                f"queue for priority level {level + 1} is full ({policy.max_queue_size} requests, "
                "max_queue_size); retry later or raise max_queue_size"
            )
        envelope.level = level
        timeout_us = policy.timeout_us(envelope.request.timeout_us)
        if timeout_us:
            envelope.deadline_ns = envelope.enqueue_ns + timeout_us * 1000
            self._seq += 1
            heapq.heappush(self._deadlines, (envelope.deadline_ns, self._seq, envelope))
        self._levels[level].append(envelope)
        self._live[level] += envelope.weight
        self._size += 1

    def discard(self, envelope: Envelope) -> bool:
        """Forget a queued request (its caller went away). True when it was still queued."""
        if envelope.state != QUEUED:
            return False
        envelope.state = GONE
        self._live[envelope.level] -= envelope.weight
        self._size -= 1
        return True

    def lighten(self, envelope: Envelope) -> None:
        """One client request of a queued group left it (``DynamicBatcher._leave``)."""
        envelope.weight -= 1
        self._live[envelope.level] -= 1

    def next_deadline(self) -> int | None:
        """The earliest timeout among queued requests (ns), or None."""
        deadlines = self._deadlines
        while deadlines and (deadlines[0][2].state != QUEUED or deadlines[0][2].delayed):
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def expire(self, now_ns: int) -> list[Envelope]:
        """Apply timeouts due by ``now_ns``: DELAY moves requests last; REJECT returns them.

        The returned envelopes are out of the queue; the caller fails their futures.
        """
        rejected: list[Envelope] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now_ns:
            _, _, envelope = heapq.heappop(deadlines)
            if envelope.state != QUEUED or envelope.delayed:
                continue
            if self._policies[envelope.level].delay_on_timeout:
                self._levels[envelope.level].remove(envelope)
                envelope.delayed = True
                self._delayed.append(envelope)
            else:
                self.discard(envelope)
                rejected.append(envelope)
        return rejected

    def __iter__(self) -> Iterator[Envelope]:
        """Live requests in service order: level 1 first, FIFO within a level, delayed last."""
        for queue in self._levels:
            for envelope in queue:
                if envelope.state == QUEUED:
                    yield envelope
        for envelope in self._delayed:
            if envelope.state == QUEUED:
                yield envelope

    def pop(self, count: int) -> list[Envelope]:
        """Take the first ``count`` live requests (the order of iteration), marking them dispatched."""
        taken: list[Envelope] = []
        for queue in (*self._levels, self._delayed):
            while queue and len(taken) < count:
                envelope = queue.popleft()
                if envelope.state != QUEUED:
                    continue
                envelope.state = DISPATCHED
                self._live[envelope.level] -= envelope.weight
                self._size -= 1
                taken.append(envelope)
            if len(taken) >= count:
                break
        return taken

    def at_level(self, level: int) -> Iterator[Envelope]:
        """Live requests of one level (0-based), FIFO; not the delayed ones."""
        for envelope in self._levels[level]:
            if envelope.state == QUEUED:
                yield envelope

    def take(self, envelope: Envelope) -> None:
        """Take one live, undelayed request out of the queue out of turn (``idle_lane.py``), marking it
        dispatched; the others keep their order."""
        assert envelope.state == QUEUED and not envelope.delayed
        envelope.state = DISPATCHED
        self._live[envelope.level] -= envelope.weight
        self._size -= 1
        level = self._levels[envelope.level]
        while level and level[0].state != QUEUED:
            level.popleft()

    def drop_all(self) -> list[Envelope]:
        """Remove every live request (closing); the caller fails their futures."""
        dropped = [envelope for envelope in self if self.discard(envelope)]
        for queue in (*self._levels, self._delayed):
            queue.clear()
        self._deadlines.clear()
        return dropped
