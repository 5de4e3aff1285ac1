"""Refill: let a model's next batch gather the requests its last batch's callers send back.

Under a closed loop (N callers, each sending its next request when the last is answered) a
single instance that takes whatever is queued the moment it is free splits the callers in two
halves that alternate: while half of them wait in the queue, the other half's batch runs, is
answered and comes back to queue behind it. Batches hold N/2 requests, and a model whose run
costs a fixed part per call (a Python model's process round trip, ONNX Runtime's weight reads of
a wide layer) pays it twice as often as it needs to.

So when a batch finishes, the requests it held plus those queued behind it are the *population*
the instance serves; for a short while (``REFILL_FRACTION`` of that batch's compute time, at most
``REFILL_MAX_NS``) the free instance waits until that many requests are queued before it takes
them. The wait ends as soon as the population is back, so a steady closed loop loses only its
round trip, and a caller population that shrank costs one bounded wait, after which the smaller
population is the new target. With one request at a time (c=1) the population is 1 and nothing
ever waits. Triton's batcher reaches similar batch sizes (42.7 average at c=64 against 31.9
without refill, docs/serving.md "Python models").

Used only where it pays and cannot surprise: instances that declare ``refill_batches`` (Python
models: each call crosses a process boundary), one instance, dynamic batching without a
``max_queue_delay_microseconds`` (a configured delay is the user's own rule). Off by
default: ``SHIPYARD_BATCH_REFILL=1`` turns it on (on the quiet machine it measured no faster and
its c=64 p99 was worse: docs/serving.md, "Python models").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

REFILL_ENV = "SHIPYARD_BATCH_REFILL"
REFILL_FRACTION = 0.25
REFILL_MAX_NS = 4_000_000


class Refill:
    """The refill rule of one dynamic batcher (event loop thread only)."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self.target = 0  # the population to wait for
        self.until_ns = 0  # no waiting after this (monotonic ns)

    def finished(self, now_ns: int, batch_requests: int, queued: int, compute_ns: int) -> None:
        """A batch of ``batch_requests`` finished at ``now_ns`` with ``queued`` requests waiting."""
        self.target = min(batch_requests + queued, self.max_requests)
        self.until_ns = now_ns + min(int(compute_ns * REFILL_FRACTION), REFILL_MAX_NS)

    def hold_until(self, queued: int, now_ns: int) -> int | None:
        """When a free instance should look again (ns), or None: take what is queued now."""
        if queued == 0 or queued >= self.target or now_ns >= self.until_ns:
            return None
        return self.until_ns


def refill_for(instances: Sequence[Any], merge: bool, delay_ns: int, max_batch: int) -> Refill | None:
    """The refill rule for a dynamic batcher over ``instances``, or None where it does not apply."""
    if os.environ.get(REFILL_ENV, "0") != "1" or not merge or delay_ns or len(instances) != 1:
        return None
    if not getattr(instances[0], "refill_batches", False):
        return None
    return Refill(max_batch)
