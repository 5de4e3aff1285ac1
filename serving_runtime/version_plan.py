"""Which models and versions to load, keep and retire, as pure functions.

``manager.py`` does the I/O (scanning, loading in worker threads) and the locking; every decision
about *which* models and versions it acts on is made here, from plain values:

- ``startup_selection``: the models to load at start, per control mode (``none``/``poll``: every
  model in the repositories; ``explicit``: ``--load-model`` names, ``*`` for all).
- ``poll_changes``: in poll mode, the models whose directory went away and the ones to bring in
  line (new, changed files or config, a name newly or differently duplicated).
- ``plan_loads``: for one model, the versions to (re)load (new, changed files, or every selected
  one when the config changed) and what the index shows while they load.
- ``plan_swap``: once those loads finished, what serves, what retires and every version's status.
  A failed reload keeps the loaded version serving; versions outside the version policy retire
  only once a selected version serves.

No files, threads, locks or clock: everything comes in as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"
UNLOADED_REASON = "unloaded"


@dataclass(frozen=True)
class VersionStatus:
    """A version's state in the repository index, with the reason when it is not READY."""

    state: str
    reason: str = ""


UNLOADED = VersionStatus(UNAVAILABLE, UNLOADED_REASON)


# -- which models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StartupSelection:
    """``names``: every model asked for, in load order; ``absent``: those in no repository."""

    names: tuple[str, ...]
    absent: tuple[str, ...] = ()


def startup_selection(
    control_mode: str, available: AbstractSet[str], startup_models: Sequence[str]
) -> StartupSelection:
    """The models to load at start: all in the repositories, or (explicit mode) the named ones."""
    if control_mode == "explicit":
        names = sorted(available) if "*" in startup_models else list(dict.fromkeys(startup_models))
    else:
        names = sorted(available)
    return StartupSelection(tuple(names), tuple(name for name in names if name not in available))


@dataclass(frozen=True)
class KnownModel:
    """What the manager remembers of a model between polls."""

    fingerprint: object | None  # its files and config at the last sync (None: never read)
    last_error: str = ""


def poll_changes(
    known: Mapping[str, KnownModel],
    available: AbstractSet[str],
    fingerprints: Mapping[str, object],
    duplicate_reasons: Mapping[str, str],
) -> tuple[list[str], list[str]]:
    """``(removed, changed)``: known models no longer in any repository, and the available models
    to sync (sorted): new ones, ones whose fingerprint changed, and duplicated names whose
    duplicate reason is not already recorded."""
    removed = [name for name in known if name not in available]
    changed: list[str] = []
    for name in sorted(available):
        model = known.get(name)
        if model is None:
            changed.append(name)
        elif name in duplicate_reasons:
            if model.last_error != duplicate_reasons[name]:
                changed.append(name)
        elif model.fingerprint != fingerprints.get(name):
            changed.append(name)
    return removed, changed


# -- which versions --------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    """``load``: versions to load, ascending; ``status``: what to show for them meanwhile
    (LOADING for versions not serving yet, UNAVAILABLE for policy versions with no directory)."""

    load: tuple[int, ...]
    status: Mapping[int, VersionStatus]


def plan_loads(
    selected: Sequence[int],
    missing: Mapping[int, str],
    serving: AbstractSet[int],
    loaded_stamps: Mapping[int, object],
    disk_stamps: Mapping[int, object],
    config_changed: bool,
) -> LoadPlan:
    """The versions of one model to (re)load.

    ``selected``: the versions the version policy selects (ascending); ``missing``: versions the
    policy names that have no directory, with the reason; ``serving``: versions serving now;
    ``loaded_stamps``: the files each serving version was loaded from; ``disk_stamps``: each
    version's files now. A selected version loads when it does not serve, its files changed, or
    the config changed (then every selected version reloads).
    """
    load = tuple(
        v for v in selected if config_changed or v not in serving or loaded_stamps.get(v) != disk_stamps.get(v)
    )
    status = {v: VersionStatus(LOADING) for v in load if v not in serving}
    status.update({v: VersionStatus(UNAVAILABLE, why) for v, why in missing.items() if v not in serving})
    return LoadPlan(load, status)


@dataclass(frozen=True)
class Swap:
    """What to do once the loads of a ``LoadPlan`` finished.

    ``installed``: loaded versions that serve from now on (in load order); ``replaced``: those of
    them that replace a serving object of the same version (the old one retires, requests that
    reach it go to the new one); ``retired``: serving versions outside the policy that retire;
    ``kept``: versions whose reload failed while the loaded one keeps serving; ``serving``: every
    version serving after the swap; ``status``: every version's index status after the swap;
    ``errors``: ``"version N: reason"`` per failed load; ``selected_serving``: whether a version
    the policy selects serves (when not, older versions that serve keep serving).
    """

    installed: tuple[int, ...]
    replaced: tuple[int, ...]
    retired: tuple[int, ...]
    kept: tuple[int, ...]
    serving: frozenset[int]
    status: Mapping[int, VersionStatus]
    errors: tuple[str, ...]
    selected_serving: bool

    def adopt_definition(self, attempted: int) -> bool:
        """Whether the model's new definition (config, policy) becomes the current one: when a
        version loaded, or nothing needed loading (``attempted`` versions were tried)."""
        return bool(self.installed) or attempted == 0

    def reported_error(self, explicit: bool) -> bool:
        """Whether the sync reports failure: a load failed and nothing new loaded, or (an explicit
        load request) any load failed."""
        return bool(self.errors) and (not self.installed or explicit)


def plan_swap(
    selected: Sequence[int],
    missing: Mapping[int, str],
    serving: AbstractSet[int],
    outcomes: Mapping[int, str | None],
    status: Mapping[int, VersionStatus],
    on_disk: AbstractSet[int],
) -> Swap:
    """The swap after loading: ``outcomes`` maps each version of the ``LoadPlan`` (in load order)
    to None when it loaded or the failure's reason; ``status`` is the index status before the
    swap (after ``LoadPlan.status``); ``on_disk`` holds the versions that have a directory.

    Statuses: a loaded version is READY; a failed new version UNAVAILABLE with the reason; a
    retired or no-longer-selected version with a directory UNAVAILABLE "unloaded"; one whose
    directory is gone disappears from the index.
    """
    new_status = dict(status)
    now_serving = set(serving)
    installed: list[int] = []
    replaced: list[int] = []
    kept: list[int] = []
    errors: list[str] = []
    for version, reason in outcomes.items():
        if reason is not None:
            errors.append(f"version {version}: {reason}")
            if version in serving:
                kept.append(version)
            else:
                new_status[version] = VersionStatus(UNAVAILABLE, reason)
            continue
        installed.append(version)
        if version in serving:
            replaced.append(version)
        now_serving.add(version)
        new_status[version] = VersionStatus(READY)
    selected_set = set(selected)
    selected_serving = bool(now_serving & selected_set)
    retired: list[int] = []
    if selected_serving:  # only once a selected version serves do versions outside the policy retire
        retired = sorted(v for v in now_serving if v not in selected_set)
        for version in retired:
            now_serving.discard(version)
            new_status[version] = UNLOADED
    for version in list(new_status):
        if version in now_serving or version in selected_set or version in missing:
            continue
        if version in on_disk:
            new_status[version] = UNLOADED
        else:  # its directory is gone
            del new_status[version]
    return Swap(
        installed=tuple(installed),
        replaced=tuple(replaced),
        retired=tuple(retired),
        kept=tuple(kept),
        serving=frozenset(now_serving),
        status=new_status,
        errors=tuple(errors),
        selected_serving=selected_serving,
    )
