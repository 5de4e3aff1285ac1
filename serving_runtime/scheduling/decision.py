"""The batching decision: "send N now" or "wait T", as one pure function.

Triton's dynamic batcher semantics, measured from the oldest request of the candidate batch:

- Walk the pending requests in priority order and grow a candidate batch while the next request
  fits (total items <= the largest preferred batch size, or ``max_batch_size`` when none is set)
  and has the same non-batch shapes and dtypes (its *shape key*) as the first.
- A candidate that reached a preferred batch size is sent at once (the largest one reached),
  unless the queue delay has expired, in which case everything gathered goes.
- A candidate that cannot grow (full, the next request does not fit, or the next has another
  shape) is sent at once.
- With no ``max_queue_delay`` the candidate is sent at once: an idle instance never waits.
- Otherwise wait until the oldest request's delay expires (or the nearest queue deadline,
  whichever comes first), then decide again.
- No idle instance: nothing is sent; wake on the nearest deadline (to expire timed-out requests)
  or on the next event (an arrival or an instance becoming free).

No clock, no event loop, no locks: everything comes in as arguments.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class PendingItem(Protocol):
    """What the decision reads from a queued request."""

    @property
    def batch_size(self) -> int: ...

    @property
    def shape_key(self) -> Hashable: ...

    @property
    def enqueue_ns(self) -> int: ...


@dataclass(frozen=True)
class Decision:
    """``send`` > 0: take that many requests from the front (``batch_size`` items in all).

    ``send`` == 0: wait; ``wait_ns`` is the time to decide again, or None to wait for the next
    event (an arrival or a free instance).
    """

    send: int = 0
    batch_size: int = 0
    wait_ns: int | None = None


WAIT_FOR_EVENT = Decision()


def decide(
    items: Iterable[PendingItem],
    now_ns: int,
    *,
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_ns: int = 0,
    instance_idle: bool = True,
    next_deadline_ns: int | None = None,
) -> Decision:
    """Decide what to do with the pending requests ``items`` (in priority order, live only).

    ``max_batch_size`` must be >= 1 (pass 1 for models that do not batch: one request per run);
    ``preferred_batch_sizes`` sorted ascending, each <= ``max_batch_size``.
    ``next_deadline_ns`` is the earliest queue timeout of any pending request, if any.

    Raises: nothing (``items`` is only iterated as far as the candidate batch reaches).
    """
    if not instance_idle:
        if next_deadline_ns is None:
            return WAIT_FOR_EVENT
        return Decision(wait_ns=max(next_deadline_ns - now_ns, 1_000))
    limit = preferred_batch_sizes[-1] if preferred_batch_sizes else max_batch_size
    count = 0
    total = 0
    oldest = 0
    shape: Hashable = None
    best_count = 0
    best_total = 0
    cannot_grow = False
    for item in items:
        size = item.batch_size
        if count == 0:
            shape = item.shape_key
            oldest = item.enqueue_ns
        else:
            if total + size > limit or item.shape_key != shape:
                cannot_grow = True
                break
            if item.enqueue_ns < oldest:
                oldest = item.enqueue_ns
        count += 1
        total += size
        if total in preferred_batch_sizes:
            best_count, best_total = count, total
        if total >= limit:
            cannot_grow = True
            break
    if count == 0:
        return WAIT_FOR_EVENT
    delay_expired = max_queue_delay_ns > 0 and now_ns - oldest >= max_queue_delay_ns
    if best_count and not delay_expired:
        return Decision(send=best_count, batch_size=best_total)
    if cannot_grow or max_queue_delay_ns <= 0 or delay_expired:
        return Decision(send=count, batch_size=total)
    wait_ns = max_queue_delay_ns - (now_ns - oldest)
    if next_deadline_ns is not None:
        wait_ns = min(wait_ns, max(next_deadline_ns - now_ns, 1_000))
    return Decision(wait_ns=wait_ns)
