"""The batching decision, as a pure function: no event loop, no threads, no clock."""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.serving_runtime.scheduling.decision import WAIT_FOR_EVENT, Decision, decide

MS = 1_000_000


@dataclass
class Item:
    batch_size: int = 1
    shape_key: object = "s"
    enqueue_ns: int = 0


def items(n: int, **kw: object) -> list[Item]:
    return [Item(**kw) for _ in range(n)]  # type: ignore[arg-type]


def test_nothing_queued_waits_for_an_arrival() -> None:
    assert decide([], 0, max_batch_size=8) == WAIT_FOR_EVENT


def test_no_delay_idle_instance_takes_everything_at_once() -> None:
    assert decide(items(3), 5 * MS, max_batch_size=8) == Decision(send=3, batch_size=3)


def test_single_request_is_sent_at_once_without_delay() -> None:
    assert decide(items(1), 0, max_batch_size=8) == Decision(send=1, batch_size=1)


def test_max_batch_size_caps_the_batch() -> None:
    assert decide(items(20), 0, max_batch_size=8, max_queue_delay_ns=10 * MS) == Decision(send=8, batch_size=8)


def test_busy_instances_send_nothing_and_wait_for_an_event() -> None:
    assert decide(items(5), 0, max_batch_size=8, instance_idle=False) == WAIT_FOR_EVENT


def test_busy_instances_still_wake_for_the_nearest_timeout() -> None:
    d = decide(items(5), 1 * MS, max_batch_size=8, instance_idle=False, next_deadline_ns=4 * MS)
    assert d == Decision(wait_ns=3 * MS)


def test_delay_waits_measured_from_the_oldest_request() -> None:
    queued = [Item(enqueue_ns=1 * MS), Item(enqueue_ns=2 * MS)]
    d = decide(queued, 3 * MS, max_batch_size=8, max_queue_delay_ns=5 * MS)
    assert d == Decision(wait_ns=3 * MS)  # oldest enqueued at 1 ms, expires at 6 ms


def test_delay_expiry_sends_what_is_there() -> None:
    queued = [Item(enqueue_ns=1 * MS), Item(enqueue_ns=2 * MS)]
    assert decide(queued, 6 * MS, max_batch_size=8, max_queue_delay_ns=5 * MS) == Decision(send=2, batch_size=2)


def test_full_batch_goes_before_the_delay_expires() -> None:
    d = decide(items(8), 0, max_batch_size=8, max_queue_delay_ns=100 * MS)
    assert d == Decision(send=8, batch_size=8)


def test_preferred_size_reached_is_sent_at_once_even_with_delay() -> None:
    d = decide(items(4), 0, max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_ns=100 * MS)
    assert d == Decision(send=4, batch_size=4)


def test_largest_preferred_size_reached_wins() -> None:
    d = decide(items(6), 0, max_batch_size=16, preferred_batch_sizes=(2, 4, 8), max_queue_delay_ns=100 * MS)
    assert d == Decision(send=4, batch_size=4)


def test_between_preferred_sizes_with_delay_expired_sends_all() -> None:
    d = decide(items(6), 200 * MS, max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_ns=100 * MS)
    assert d == Decision(send=6, batch_size=6)


def test_below_smallest_preferred_size_waits_for_the_delay() -> None:
    d = decide(items(3), 0, max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_ns=100 * MS)
    assert d == Decision(wait_ns=100 * MS)


def test_preferred_sizes_cap_the_batch_at_the_largest() -> None:
    d = decide(items(20), 0, max_batch_size=16, preferred_batch_sizes=(4, 8))
    assert d == Decision(send=8, batch_size=8)


def test_shape_mismatch_ends_the_batch_and_sends_it() -> None:
    queued = [Item(shape_key="a"), Item(shape_key="a"), Item(shape_key="b"), Item(shape_key="a")]
    d = decide(queued, 0, max_batch_size=8, max_queue_delay_ns=100 * MS)
    assert d == Decision(send=2, batch_size=2)


def test_requests_carrying_their_own_batch_merge() -> None:
    queued = [Item(batch_size=3), Item(batch_size=4), Item(batch_size=1)]
    assert decide(queued, 0, max_batch_size=8) == Decision(send=3, batch_size=8)


def test_request_that_does_not_fit_starts_the_next_batch() -> None:
    queued = [Item(batch_size=5), Item(batch_size=4)]
    d = decide(queued, 0, max_batch_size=8, max_queue_delay_ns=100 * MS)
    assert d == Decision(send=1, batch_size=5)  # cannot grow: no point waiting


def test_request_larger_than_largest_preferred_goes_alone() -> None:
    d = decide([Item(batch_size=12), Item()], 0, max_batch_size=16, preferred_batch_sizes=(4, 8))
    assert d == Decision(send=1, batch_size=12)


def test_priority_order_is_the_order_given() -> None:
    # The queue yields high priority first; the decision takes a prefix of that order.
    queued = [Item(shape_key="hi", enqueue_ns=9 * MS), Item(shape_key="lo", enqueue_ns=0)]
    assert decide(queued, 10 * MS, max_batch_size=8) == Decision(send=1, batch_size=1)


def test_timeout_earlier_than_delay_shortens_the_wait() -> None:
    d = decide(items(2), 0, max_batch_size=8, max_queue_delay_ns=10 * MS, next_deadline_ns=2 * MS)
    assert d == Decision(wait_ns=2 * MS)


def test_iterates_only_as_far_as_the_batch_reaches() -> None:
    seen = 0

    def endless():  # type: ignore[no-untyped-def]
        nonlocal seen
        while True:
            seen += 1
            yield Item()

    assert decide(endless(), 0, max_batch_size=4) == Decision(send=4, batch_size=4)
    assert seen == 4
