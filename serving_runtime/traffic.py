"""Canary traffic between two loaded versions of a model (the local target's canary rollout).

A model config may carry ``parameters { key: "shipyard.canary" value: { string_value: "VERSION:PERCENT" } }``:
requests that name no version go to ``VERSION`` with probability ``PERCENT``/100 and otherwise to the highest
other ready version. Without the parameter, or when either side is not loaded, they go to the highest ready
version (Triton's rule). Requests naming a version are never rerouted.

- ``parse_canary(text: str) -> tuple[int, float] | None`` (None for "", raises ValueError naming the format)
- ``pick_version(ready: Sequence[int], canary: tuple[int, float] | None, draw: float) -> int`` (pure; ``draw``
  uniform in [0, 1))
- ``canary_of(config) -> tuple[int, float] | None`` (a malformed value counts as no canary)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CANARY_PARAMETER = "shipyard.canary"


def parse_canary(text: str) -> tuple[int, float] | None:
    """``"2:10"`` -> (2, 10.0). Raises ValueError for anything but VERSION:PERCENT with 0 <= PERCENT <= 100."""
    text = text.strip()
    if not text:
        return None
    version, sep, percent = text.partition(":")
    try:
        parsed = (int(version), float(percent))
    except ValueError:
        parsed = None
    if not sep or parsed is None or not 0.0 <= parsed[1] <= 100.0 or parsed[0] < 1:
        raise ValueError(f"{CANARY_PARAMETER}={text!r}: expected VERSION:PERCENT, e.g. '2:10'")
    return parsed


def canary_of(config: Any) -> tuple[int, float] | None:
    """The canary a ModelConfig asks for (None when absent or malformed)."""
    if config is None or CANARY_PARAMETER not in config.parameters:
        return None
    try:
        return parse_canary(config.parameters[CANARY_PARAMETER].string_value)
    except ValueError:
        return None


def pick_version(ready: Sequence[int], canary: tuple[int, float] | None, draw: float) -> int:
    """The version an unversioned request goes to (``ready`` must not be empty)."""
    newest = max(ready)
    if canary is None:
        return newest
    version, percent = canary
    others = [v for v in ready if v != version]
    if version not in ready or not others:
        return newest
    return version if draw * 100.0 < percent else max(others)
