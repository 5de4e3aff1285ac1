"""The canary split of unversioned requests (serving_runtime/traffic.py): a pure function and its parser."""

from __future__ import annotations

import pytest

from shipyard.serving_runtime.traffic import parse_canary, pick_version


@pytest.mark.parametrize(
    ("ready", "canary", "draw", "expected"),
    [
        ([1, 2], None, 0.0, 2),  # Triton's rule: the highest ready version
        ([1, 2], (2, 20.0), 0.10, 2),  # inside the canary's share
        ([1, 2], (2, 20.0), 0.30, 1),  # outside it: the stable version
        ([1, 2], (2, 0.0), 0.0, 1),
        ([1, 2], (2, 100.0), 0.99, 2),
        ([1], (2, 50.0), 0.0, 1),  # the canary is not loaded (yet, or any more)
        ([2], (2, 50.0), 0.9, 2),  # only the canary is loaded
        ([1, 2, 3], (2, 10.0), 0.5, 3),  # the rest goes to the highest other version
    ],
)
def test_pick_version(ready: list[int], canary: tuple[int, float] | None, draw: float, expected: int) -> None:
    assert pick_version(ready, canary, draw) == expected


def test_split_matches_the_percentage() -> None:
    picks = [pick_version([1, 2], (2, 30.0), i / 1000) for i in range(1000)]
    assert picks.count(2) == 300


@pytest.mark.parametrize("text", ["2", "x:10", "2:101", "0:10", "2:-1"])
def test_malformed_canary_names_the_format(text: str) -> None:
    with pytest.raises(ValueError, match="expected VERSION:PERCENT"):
        parse_canary(text)


def test_canary_parses() -> None:
    assert parse_canary("3:12.5") == (3, 12.5) and parse_canary("") is None
