"""Which models and versions the manager loads, keeps and retires, as pure functions: no threads,
no files, no event loop. Each table row is one situation a repository can be in."""

from __future__ import annotations

import pytest

from shipyard.serving_runtime.version_plan import (
    LOADING,
    READY,
    UNAVAILABLE,
    UNLOADED,
    KnownModel,
    StartupSelection,
    VersionStatus,
    plan_loads,
    plan_swap,
    poll_changes,
    startup_selection,
)

AVAILABLE = {"b", "a", "c"}


@pytest.mark.parametrize(
    ("mode", "startup_models", "expected"),
    [
        ("none", (), StartupSelection(("a", "b", "c"))),
        ("poll", (), StartupSelection(("a", "b", "c"))),
        ("explicit", (), StartupSelection(())),
        ("explicit", ("*",), StartupSelection(("a", "b", "c"))),
        ("explicit", ("c", "a", "c"), StartupSelection(("c", "a"))),
        ("explicit", ("a", "zz"), StartupSelection(("a", "zz"), absent=("zz",))),
    ],
)
def test_startup_selection(mode: str, startup_models: tuple[str, ...], expected: StartupSelection) -> None:
    assert startup_selection(mode, AVAILABLE, startup_models) == expected


DUP = "model 'd' is in more than one model repository (r1/d, r2/d); model names must be unique"


@pytest.mark.parametrize(
    ("label", "known", "available", "fingerprints", "duplicates", "removed", "changed"),
    [
        ("nothing changed", {"a": KnownModel("fa")}, {"a"}, {"a": "fa"}, {}, [], []),
        ("new model", {}, {"a"}, {"a": "fa"}, {}, [], ["a"]),
        ("files changed", {"a": KnownModel("fa")}, {"a"}, {"a": "fa2"}, {}, [], ["a"]),
        ("directory gone", {"a": KnownModel("fa"), "b": KnownModel("fb")}, {"b"}, {"b": "fb"}, {}, ["a"], []),
        ("newly duplicated", {"d": KnownModel("fd")}, {"d"}, {}, {"d": DUP}, [], ["d"]),
        ("duplicate already recorded", {"d": KnownModel(None, DUP)}, {"d"}, {}, {"d": DUP}, [], []),
        ("new duplicate name", {}, {"d"}, {}, {"d": DUP}, [], ["d"]),
        ("changes sorted", {}, {"b", "a"}, {"a": 1, "b": 2}, {}, [], ["a", "b"]),
    ],
)
def test_poll_changes(
    label: str,
    known: dict[str, KnownModel],
    available: set[str],
    fingerprints: dict[str, object],
    duplicates: dict[str, str],
    removed: list[str],
    changed: list[str],
) -> None:
    assert poll_changes(known, available, fingerprints, duplicates) == (removed, changed), label


LOADING_ = VersionStatus(LOADING)


@pytest.mark.parametrize(
    ("label", "selected", "missing", "serving", "loaded", "disk", "config_changed", "load", "status"),
    [
        ("first load", [1, 2], {}, set(), {}, {1: "s1", 2: "s2"}, True, (1, 2), {1: LOADING_, 2: LOADING_}),
        ("nothing changed", [2], {}, {2}, {2: "s2"}, {2: "s2"}, False, (), {}),
        ("files of a serving version changed", [2], {}, {2}, {2: "s2"}, {2: "s2b"}, False, (2,), {}),
        ("config changed reloads every selected", [1, 2], {}, {1, 2}, {1: "s1", 2: "s2"}, {1: "s1", 2: "s2"},
         True, (1, 2), {}),
        ("a newer version appears", [3], {}, {2}, {2: "s2"}, {2: "s2", 3: "s3"}, False, (3,), {3: LOADING_}),
        ("policy names a version with no directory", [1], {7: "no directory 7"}, set(), {}, {1: "s1"}, True, (1,),
         {1: LOADING_, 7: VersionStatus(UNAVAILABLE, "no directory 7")}),
        ("missing but still serving keeps its status", [], {2: "gone"}, {2}, {2: "s2"}, {}, False, (), {}),
    ],
)
def test_plan_loads(
    label: str,
    selected: list[int],
    missing: dict[int, str],
    serving: set[int],
    loaded: dict[int, object],
    disk: dict[int, object],
    config_changed: bool,
    load: tuple[int, ...],
    status: dict[int, VersionStatus],
) -> None:
    plan = plan_loads(selected, missing, serving, loaded, disk, config_changed)
    assert (plan.load, dict(plan.status)) == (load, status), label


R = VersionStatus(READY)


@pytest.mark.parametrize(
    ("label", "selected", "serving", "outcomes", "status", "on_disk", "expect"),
    [
        (
            "first load succeeds",
            [1, 2], set(), {1: None, 2: None}, {1: LOADING_, 2: LOADING_}, {1, 2},
            dict(installed=(1, 2), replaced=(), retired=(), kept=(), serving={1, 2}, status={1: R, 2: R}),
        ),
        (
            "new version replaces the old one, which retires (still on disk)",
            [2], {1}, {2: None}, {1: R, 2: LOADING_}, {1, 2},
            dict(installed=(2,), replaced=(), retired=(1,), kept=(), serving={2}, status={1: UNLOADED, 2: R}),
        ),
        (
            "reload of the same version swaps objects",
            [2], {2}, {2: None}, {2: R}, {2},
            dict(installed=(2,), replaced=(2,), retired=(), kept=(), serving={2}, status={2: R}),
        ),
        (
            "failed reload keeps the loaded version serving",
            [2], {2}, {2: "bad file"}, {2: R}, {2},
            dict(installed=(), replaced=(), retired=(), kept=(2,), serving={2}, status={2: R},
                 errors=("version 2: bad file",)),
        ),
        (
            "failed new version: the old one keeps serving outside the policy",
            [2], {1}, {2: "bad file"}, {1: R, 2: LOADING_}, {1, 2},
            dict(installed=(), replaced=(), retired=(), kept=(), serving={1},
                 status={1: R, 2: VersionStatus(UNAVAILABLE, "bad file")}, errors=("version 2: bad file",),
                 selected_serving=False),
        ),
        (
            "one of two loads fails",
            [1, 2], set(), {1: None, 2: "oom"}, {1: LOADING_, 2: LOADING_}, {1, 2},
            dict(installed=(1,), replaced=(), retired=(), kept=(), serving={1},
                 status={1: R, 2: VersionStatus(UNAVAILABLE, "oom")}, errors=("version 2: oom",)),
        ),
        (
            "a retired version whose directory is gone leaves the index",
            [2], {1}, {2: None}, {1: R, 2: LOADING_}, {2},
            dict(installed=(2,), replaced=(), retired=(1,), kept=(), serving={2}, status={2: R}),
        ),
        (
            "an old unloaded status whose directory is gone is dropped",
            [2], {2}, {}, {2: R, 1: UNLOADED}, {2},
            dict(installed=(), replaced=(), retired=(), kept=(), serving={2}, status={2: R}),
        ),
    ],
)
def test_plan_swap(
    label: str,
    selected: list[int],
    serving: set[int],
    outcomes: dict[int, str | None],
    status: dict[int, VersionStatus],
    on_disk: set[int],
    expect: dict[str, object],
) -> None:
    swap = plan_swap(selected, {}, serving, outcomes, status, on_disk)
    got = dict(
        installed=swap.installed, replaced=swap.replaced, retired=swap.retired, kept=swap.kept,
        serving=set(swap.serving), status=dict(swap.status),
    )
    want = {k: v for k, v in expect.items() if k not in ("errors", "selected_serving")}
    assert got == want, label
    assert swap.errors == expect.get("errors", ()), label
    assert swap.selected_serving == expect.get("selected_serving", True), label


def test_policy_missing_versions_keep_their_reason_after_the_swap() -> None:
    gone = VersionStatus(UNAVAILABLE, "no directory 7")
    swap = plan_swap([1], {7: "no directory 7"}, set(), {1: None}, {1: LOADING_, 7: gone}, {1})
    assert dict(swap.status) == {1: R, 7: gone}


@pytest.mark.parametrize(
    ("installed_any", "errors", "explicit", "attempted", "adopt", "report"),
    [
        (True, False, False, 1, True, False),
        (False, False, False, 0, True, False),  # nothing to load: the new definition stands
        (False, True, False, 1, False, True),  # nothing loaded: keep the old definition, report
        (True, True, False, 2, True, False),  # poll: a partial success is not an error
        (True, True, True, 2, True, True),  # an explicit load reports any failure
    ],
)
def test_adopt_and_report(
    installed_any: bool, errors: bool, explicit: bool, attempted: int, adopt: bool, report: bool
) -> None:
    outcomes: dict[int, str | None] = {}
    if installed_any:
        outcomes[1] = None
    if errors:
        outcomes[2] = "bad"
    swap = plan_swap([1, 2], {}, set(), outcomes, {}, {1, 2})
    assert swap.adopt_definition(attempted) is adopt
    assert swap.reported_error(explicit) is report
