"""A background priority level: batch jobs fill the gaps without taking the instance from real-time work.

Priority orders the queue but does not preempt a batch that runs; with plain priorities a batch job
still wins the instance each time it frees before closed-loop real-time clients have resubmitted, and
its rows ride along in every real-time batch. Two rules fix that for the lowest of several priority
levels (the *background* level), set by the model config's ``parameters`` (shipyard's; Triton ignores
parameters it does not know; both 0 or absent: off):

- ``background_holdoff_us``: after a batch that held higher-level requests finishes, a batch made only
  of background requests waits that long for higher-level arrivals (a real-time client answers and
  sends again within it);
- ``background_share_rows``: a batch that holds higher-level requests takes background requests for at
  most that many rows (background requests bigger than that never join one);
- ``background_slice_rows``: while higher-level work is recent (a batch holding some finished within
  ``background_recent_us``, default 100 ms), a batch made only of background requests holds at most that
  many rows, and a bigger background request runs in slices of that many rows (``slicing.py``), so a
  real-time request waits behind one slice at most instead of a whole batch job request;
- ``background_fill_rows``: a batch led by higher-level requests is topped up to that many rows with rows
  from the head of a background request (co-batching, ``cobatch.py``): the job's rows ride along in batches
  that run anyway, and its request completes across several of them;
- ``background_slice_us``: slices sized by time instead: the most rows whose slices were seen to compute
  within that many microseconds (starting from ``background_slice_rows``, else 1, doubling while they fit;
  ``slicing.SliceSizer``), so one setting fits a CPU (where a call's cost grows past a few rows) and a GPU
  (where 128 rows cost about what 8 do);
- ``background_instances``: the last that many instances of the ``instance_group`` run background
  requests first, whole, computing at the OS's idle CPU priority (``background_thread_priority``: ``idle``,
  ``nice`` or ``normal``); the others take no background-only work while real-time work is recent and borrow
  slice-sized pieces of it when it is not (the idle lane, ``idle_lane.py``); ``background_lend: 0`` keeps the
  lane for background work only (by default an idle lane instance takes real-time batches).

Public: ``BackgroundSettings``, ``background_from_config(config, priority_levels)``.
Pure: no clock or loop; the batcher passes the times in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from shipyard.serving_runtime.errors import ModelConfigError

HOLDOFF_PARAMETER = "background_holdoff_us"
SHARE_PARAMETER = "background_share_rows"
SLICE_PARAMETER = "background_slice_rows"
SLICE_US_PARAMETER = "background_slice_us"
RECENT_PARAMETER = "background_recent_us"
FILL_PARAMETER = "background_fill_rows"
INSTANCES_PARAMETER = "background_instances"
THREAD_PRIORITY_PARAMETER = "background_thread_priority"
THREAD_PRIORITIES = ("idle", "nice", "normal")
LEND_PARAMETER = "background_lend"
DEFAULT_RECENT_US = 100_000
_UNLIMITED = 1 << 62


class LeveledItem(Protocol):
    @property
    def level(self) -> int: ...

    @property
    def batch_size(self) -> int: ...


@dataclass(frozen=True)
class BackgroundSettings:
    """``level``: the background level's 0-based queue index (the lowest of ``priority_levels``)."""

    level: int
    holdoff_ns: int = 0
    share_rows: int = 0
    slice_rows: int = 0  # 0: background batches keep their size (unless ``slice_ns``)
    slice_ns: int = 0  # a time budget per slice (0: ``slice_rows`` fixed)
    recent_ns: int = DEFAULT_RECENT_US * 1000
    fill_rows: int = 0  # 0: real-time batches are not topped up with background rows
    instances: int = 0  # the idle lane's instances (the last of the group; 0: none)
    thread_priority: str = "idle"  # the idle lane's threads: ``THREAD_PRIORITIES``
    lend: bool = True  # an idle lane instance takes real-time batches (``background_lend``)

    def slicing(self, last_foreground_ns: int, now_ns: int) -> bool:
        """Whether background batches are cut to ``slice_rows`` now (higher-level work is recent)."""
        cut = bool(self.slice_rows or self.slice_ns)
        return cut and bool(last_foreground_ns) and now_ns - last_foreground_ns < self.recent_ns

    def hold_until(self, first_level: int, last_foreground_ns: int, now_ns: int) -> int | None:
        """When a batch led by a ``first_level`` request may start: None now, else the time (ns) to decide
        again."""
        if first_level < self.level or not self.holdoff_ns or not last_foreground_ns:
            return None
        until = last_foreground_ns + self.holdoff_ns
        return until if until > now_ns else None

    def capped(self, items: Iterable[LeveledItem], slice_limit: int = 0) -> Iterator[LeveledItem]:
        """``items`` (in service order) as a batch may take them: a batch led by a higher-level request
        stops before its background rows would exceed ``share_rows``; with a ``slice_limit`` (slicing now), a
        batch led by a background request stops before its rows would exceed it (its first request goes)."""
        background_rows = 0
        first = True
        led_by_foreground = False
        for item in items:
            if first:
                led_by_foreground, first = item.level < self.level, False
                if not led_by_foreground:
                    background_rows = item.batch_size
            elif led_by_foreground and item.level >= self.level:
                background_rows += item.batch_size
                if background_rows > self.share_rows:
                    return
            elif not led_by_foreground and slice_limit:
                background_rows += item.batch_size
                if background_rows > slice_limit:
                    return
            yield item


def _int_parameter(config: Any, key: str, where: str) -> int:
    if key not in config.parameters:
        return 0
    text = config.parameters[key].string_value
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ModelConfigError(f"{where}: parameters {key!r} must be a non-negative integer, got {text!r}")
    return value


def background_from_config(config: Any, priority_levels: int, where: str) -> BackgroundSettings | None:
    """The background rules of a ``ModelConfig`` proto, or None (fewer than 2 levels or both parameters 0).

    Raises: ModelConfigError for a parameter that is not a non-negative integer, or one set without
    ``priority_levels >= 2``.
    """
    holdoff_us = _int_parameter(config, HOLDOFF_PARAMETER, where)
    has_share = SHARE_PARAMETER in config.parameters
    share_rows = _int_parameter(config, SHARE_PARAMETER, where) if has_share else _UNLIMITED
    slice_rows = _int_parameter(config, SLICE_PARAMETER, where)
    slice_us = _int_parameter(config, SLICE_US_PARAMETER, where)
    fill_rows = _int_parameter(config, FILL_PARAMETER, where)
    recent_us = _int_parameter(config, RECENT_PARAMETER, where) if RECENT_PARAMETER in config.parameters else None
    instances = _int_parameter(config, INSTANCES_PARAMETER, where)
    thread_priority = _thread_priority(config, where, instances)
    if not holdoff_us and not has_share and not slice_rows and not slice_us and not fill_rows and not instances:
        if recent_us is not None:
            raise ModelConfigError(
                f"{where}: parameters {RECENT_PARAMETER!r} needs {SLICE_PARAMETER!r} or {SLICE_US_PARAMETER!r}; set one"
            )
        return None
    if priority_levels < 2:
        raise ModelConfigError(
            f"{where}: parameters {HOLDOFF_PARAMETER!r}/{SHARE_PARAMETER!r}/{SLICE_PARAMETER!r}/"
            f"{INSTANCES_PARAMETER!r}/{FILL_PARAMETER!r} "
            "need dynamic_batching priority_levels >= 2 (the lowest level is the background); set priority_levels or "
            "remove them"
        )
    return BackgroundSettings(
        level=priority_levels - 1,
        holdoff_ns=holdoff_us * 1000,
        share_rows=share_rows,
        slice_rows=slice_rows,
        slice_ns=slice_us * 1000,
        recent_ns=(DEFAULT_RECENT_US if recent_us is None else recent_us) * 1000,
        fill_rows=fill_rows,
        instances=instances,
        thread_priority=thread_priority,
        lend=_lend(config, where, instances),
    )


def _lend(config: Any, where: str, instances: int) -> bool:
    if LEND_PARAMETER not in config.parameters:
        return True
    value = config.parameters[LEND_PARAMETER].string_value
    if value not in ("0", "1"):
        raise ModelConfigError(f"{where}: parameters {LEND_PARAMETER!r} must be 1 (an idle lane instance takes "
                               f"real-time batches) or 0 (background work only), got {value!r}")  # fmt: skip
    if not instances:
        raise ModelConfigError(f"{where}: parameters {LEND_PARAMETER!r} needs {INSTANCES_PARAMETER!r}; set it or "
                               "remove this")  # fmt: skip
    return value == "1"


def _thread_priority(config: Any, where: str, instances: int) -> str:
    if THREAD_PRIORITY_PARAMETER not in config.parameters:
        return "idle"
    value = config.parameters[THREAD_PRIORITY_PARAMETER].string_value
    if value not in THREAD_PRIORITIES:
        raise ModelConfigError(
            f"{where}: parameters {THREAD_PRIORITY_PARAMETER!r} must be one of {', '.join(THREAD_PRIORITIES)}, "
            f"got {value!r}"
        )
    if not instances:
        raise ModelConfigError(
            f"{where}: parameters {THREAD_PRIORITY_PARAMETER!r} needs {INSTANCES_PARAMETER!r}; set it or remove this"
        )
    return value
