"""The background priority level (scheduling/background.py): the pure rules, then the dynamic batcher
with a gated fake instance: a background request waits out the hold-off after a real-time batch, and a
real-time batch takes background rows only up to the share."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from test_scheduling_dynamic import FakeInstance, check, request, scheduler, until

from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.scheduling.background import BackgroundSettings, background_from_config


@dataclass
class Item:
    level: int
    batch_size: int


def test_hold_applies_only_to_a_background_led_batch_after_foreground_work() -> None:
    rules = BackgroundSettings(level=1, holdoff_ns=2_000_000, share_rows=4)
    assert rules.hold_until(first_level=1, last_foreground_ns=10_000_000, now_ns=11_000_000) == 12_000_000
    assert rules.hold_until(first_level=1, last_foreground_ns=10_000_000, now_ns=12_000_000) is None  # waited out
    assert rules.hold_until(first_level=0, last_foreground_ns=10_000_000, now_ns=11_000_000) is None  # real-time
    assert rules.hold_until(first_level=1, last_foreground_ns=0, now_ns=11_000_000) is None  # none seen yet


def test_capped_limits_background_rows_behind_foreground_only() -> None:
    rules = BackgroundSettings(level=1, share_rows=4)
    mixed = [Item(0, 3), Item(0, 2), Item(1, 2), Item(1, 2), Item(1, 1)]
    assert list(rules.capped(mixed)) == mixed[:4]  # 2 + 2 background rows; the next would make 5
    background_only = [Item(1, 8), Item(1, 8), Item(1, 8)]
    assert list(rules.capped(background_only)) == background_only  # no cap when the batch job is alone
    assert list(BackgroundSettings(level=1, share_rows=0).capped(mixed)) == mixed[:2]


def _config(parameters: str, levels: int = 2) -> object:
    return parse_config_text(
        f'name: "m" max_batch_size: 8 dynamic_batching {{ priority_levels: {levels} default_priority_level: 1 }} '
        + parameters
    )


def test_settings_from_config() -> None:
    holdoff = 'parameters { key: "background_holdoff_us" value: { string_value: "1500" } }'
    share = 'parameters { key: "background_share_rows" value: { string_value: "2" } }'
    rules = background_from_config(_config(holdoff + share), 2, "m")
    assert rules == BackgroundSettings(level=1, holdoff_ns=1_500_000, share_rows=2)
    assert background_from_config(_config(holdoff), 3, "m").share_rows > 1 << 40  # type: ignore[union-attr]
    assert background_from_config(_config(""), 2, "m") is None
    with pytest.raises(ModelConfigError, match="need dynamic_batching priority_levels >= 2"):
        background_from_config(_config(holdoff, levels=1), 1, "m")
    bad = 'parameters { key: "background_share_rows" value: { string_value: "-1" } }'
    with pytest.raises(ModelConfigError, match="'background_share_rows' must be a non-negative integer, got '-1'"):
        background_from_config(_config(bad), 2, "m")


BACKGROUND = (
    "dynamic_batching {{ priority_levels: 2 default_priority_level: 1 }}\n"
    'parameters {{ key: "background_holdoff_us" value: {{ string_value: "{holdoff}" }} }}\n'
    'parameters {{ key: "background_share_rows" value: {{ string_value: "{share}" }} }}\n'
)


async def test_background_waits_out_the_holdoff_after_real_time_work() -> None:
    instance = FakeInstance()
    s = scheduler([instance], mbs=8, extra=BACKGROUND.format(holdoff=200_000, share=0))  # 200 ms
    check(await s.submit(request(1)), 1)  # real-time (level 1) batch done just now
    started = time.monotonic()
    background = asyncio.ensure_future(s.submit(request(2, priority=2)))
    await asyncio.sleep(0.05)
    assert not background.done()  # held: a real-time client would have sent again by now
    check(await s.submit(request(3)), 3)  # real-time goes first, without waiting (share 0: alone)
    assert not background.done()
    check(await background, 2)
    assert time.monotonic() - started >= 0.2  # 200 ms after the last real-time batch
    assert instance.seen == [1.0, 3.0, 2.0] and [run[0] for run in instance.runs] == [1, 1, 1]
    s.close()


async def test_real_time_batch_takes_background_rows_up_to_the_share() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=8, extra=BACKGROUND.format(holdoff=0, share=2))
    first = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    background = [asyncio.ensure_future(s.submit(request(10 + i, priority=2))) for i in range(3)]
    realtime = [asyncio.ensure_future(s.submit(request(i))) for i in (1, 2)]
    await until(lambda: s.pending_count() == 6)
    instance.gate.set()
    await asyncio.gather(first, *background, *realtime)
    # after the first run: 2 real-time rows + 2 background rows (the share), then the last background row
    assert [run[0] for run in instance.runs] == [1, 4, 1]
    assert instance.seen == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
    s.close()
