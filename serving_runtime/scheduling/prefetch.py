"""Sending an instance its next batch shortly before its current one ends (Python models).

A Python model computes in its own process. Between two of its batches that process idles while
the server reads the reply, answers, forms the next batch, writes its tensors to shared memory and
sends it, and the process wakes to read it: ~0.8 ms per batch of 32 for the wide MLP at c=64
(``python -m benchmarks.py_gap_trace``), 11% of the cycle. When the dynamic batcher has requests
waiting for a busy instance of such a model, it forms the next batch a little before the current
one is expected to end (the shortest of its recent compute times for that size class, minus
``lead``) and writes it to the process's socket, where the process finds it as soon as it has
answered the current one (``InstanceWorker.prefetch``). Requests that arrive in that last ``lead``
wait for the batch after. A batch already running past its expected end gets nothing ahead: the
waiting requests stay queued, where they can time out, be cancelled, or go to an instance that
frees first. A request sent ahead counts as scheduled: Triton's queue timeouts no longer apply to
it, but ``is_cancelled()`` does.

Only with ``max_queue_delay_microseconds`` 0 (a batch is whatever waits when the instance is
free: this forms it ``lead`` earlier), no background lane or slicing, and instances that can take
a batch ahead (``presend``: Python models), never for a batch smaller than the one it follows
(that would split a closed loop's callers into smaller batches) nor for request groups. The lead is
at most a quarter of the expected compute. ``SHIPYARD_PYTHON_PREFETCH_LEAD_US`` sets it.

Opt-in (``SHIPYARD_PYTHON_PREFETCH=1``). In interleaved runs on a 2-vCPU VM it served the wide MLP's
Python model 12-16% faster at c=16 and the same at c=64, but in three of five runs the ensemble
that shares the server answered 11-14% slower at c=1 afterwards. That slowdown did not show when the
same sequence ran on one server alone, and its cause was not found (docs/serving.md, "The next
batch sent ahead").
"""

from __future__ import annotations

import collections
import logging
import os

log = logging.getLogger(__name__)

PREFETCH_ENV = "SHIPYARD_PYTHON_PREFETCH"
LEAD_ENV = "SHIPYARD_PYTHON_PREFETCH_LEAD_US"
DEFAULT_LEAD_US = 800
_MAX_LEAD_SHARE = 4  # the lead is at most a quarter of the expected compute: short batches are not cut short
_RECENT = 8  # batches per size class whose shortest compute time is the expected one


def prefetch_on() -> bool:
    """``SHIPYARD_PYTHON_PREFETCH`` is ``1`` (unset: off; see the module docstring for why)."""
    return os.environ.get(PREFETCH_ENV, "0").strip() == "1"


def lead_ns() -> int:
    """``SHIPYARD_PYTHON_PREFETCH_LEAD_US`` in ns; a value that is not a non-negative integer is logged and
    the default used."""
    raw = os.environ.get(LEAD_ENV, "").strip()
    if not raw:
        return DEFAULT_LEAD_US * 1000
    if not raw.isdigit():
        log.warning("%s=%r is not a whole number of microseconds; using %d", LEAD_ENV, raw, DEFAULT_LEAD_US)
        return DEFAULT_LEAD_US * 1000
    return int(raw) * 1000


class PrefetchRule:
    """When a busy instance's next batch is due: its current batch's start plus the expected compute time
    of a batch of that size, minus the lead. The expected time is the shortest of the last few batches of
    its power-of-two size class: one slow ``execute`` must not send requests ahead to an instance that
    may stay busy for long, so the window errs early and a batch that runs longer gets nothing ahead."""

    def __init__(self, enabled: bool, lead: int | None = None) -> None:
        self.enabled = enabled
        self.lead_ns = lead_ns() if lead is None else lead
        self._cost_ns: dict[int, collections.deque[int]] = {}

    def observe(self, size: int, compute_ns: int) -> None:
        """A batch of ``size`` items computed for ``compute_ns`` (hand-over to the process and back)."""
        if not self.enabled or size <= 0 or compute_ns <= 0:
            return
        key = size.bit_length()
        recent = self._cost_ns.get(key)
        if recent is None:
            recent = self._cost_ns[key] = collections.deque(maxlen=_RECENT)
        recent.append(compute_ns)

    def window_ns(self, start_ns: int, size: int) -> tuple[int, int] | None:
        """When to send the batch after one of ``size`` items that started at ``start_ns``: from its
        expected end minus the lead to its expected end. None while no batch of that size class has been
        seen. Past the end the batch is running long (a slow or stuck ``execute``): the requests then stay
        queued, where they can still time out, be cancelled, or go to another instance that frees first."""
        recent = self._cost_ns.get(size.bit_length())
        if not recent:
            return None
        cost = min(recent)
        end = start_ns + cost
        return end - min(self.lead_ns, cost // _MAX_LEAD_SHARE), end
