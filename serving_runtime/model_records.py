"""The manager's per-model records and the read-only queries over them: lookup of a serving
version, the repository index, strict readiness, statistics (``RecordQueries``, which
``ModelManager`` extends).

``manager.py`` owns the records (it changes them under each record's lock); everything here only
reads them, on the event loop thread.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shipyard.serving_runtime.errors import ModelNotFound, ModelNotReady
from shipyard.serving_runtime.traffic import canary_of, pick_version
from shipyard.serving_runtime.version_plan import (
    LOADING,
    READY,
    UNAVAILABLE,
    UNLOADED,
    UNLOADED_REASON,
    VersionStatus,
)

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from shipyard.serving_runtime.model import ServedModel
    from shipyard.serving_runtime.repository import ModelDefinition, ModelFingerprint
    from shipyard.serving_runtime.stats import ModelStats


@dataclass
class ModelRecord:
    """Everything the manager knows about one model name."""

    name: str
    served: dict[int, ServedModel] = field(default_factory=dict)
    status: dict[int, VersionStatus] = field(default_factory=dict)
    reason: str = ""  # model-level failure (config, duplicate, no versions) when nothing serves
    last_error: str = ""  # the latest failure, also when an older version kept serving
    definition: ModelDefinition | None = None
    fingerprint: ModelFingerprint | None = None
    stamps: dict[int, object] = field(default_factory=dict)  # version -> files it was loaded from
    override: ModelConfig | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ready_versions(self) -> list[int]:
        return sorted(self.served)

    def not_ready_reason(self) -> str:
        """Why nothing serves: the model-level reason, else each version's state and reason."""
        if self.reason:
            return self.reason
        reasons = [
            f"version {v} {s.state}: {s.reason}" if s.reason else f"version {v} {s.state}"
            for v, s in sorted(self.status.items())
        ]
        return "; ".join(reasons) or "not loaded"

    def fail(self, reason: str) -> bool:
        """Record a model-level failure; returns whether loaded versions keep serving."""
        self.last_error = reason
        if self.served:
            return True
        self.reason = reason
        self.status = {v: s for v, s in self.status.items() if s.state == READY}
        return False

    def forget(self) -> None:
        """After an unload: every version unloaded, nothing remembered of the files or config."""
        self.status = {v: UNLOADED for v in self.status}
        if not self.status:
            self.reason = UNLOADED_REASON
        self.definition = None
        self.fingerprint = None
        self.stamps = {}
        self.override = None

    def failures(self) -> list[str]:
        """What failed to load: the model when nothing serves, else each failed version."""
        if not self.served:
            return [f"{self.name}: {self.not_ready_reason()}"]
        return [
            f"{self.name} version {v}: {s.reason}"
            for v, s in sorted(self.status.items())
            if s.state == UNAVAILABLE and s.reason != UNLOADED_REASON
        ]


def lookup(records: Mapping[str, ModelRecord], name: str, version: int | None) -> ServedModel:
    """The ready model version (the highest ready one when ``version`` is None, unless the config asks for a
    canary split: ``traffic.py``).

    Raises: ModelNotFound (unknown model or version), ModelNotReady (known but not loaded,
    with the reason).
    """
    record = records.get(name)
    if record is None:
        raise ModelNotFound(f"unknown model {name!r}")
    if version is None:
        if record.served:
            canary = canary_of(record.definition.config if record.definition else None)
            return record.served[pick_version(list(record.served), canary, random.random())]
        raise ModelNotReady(f"model {name!r} is not ready: {record.not_ready_reason()}")
    model = record.served.get(int(version))
    if model is not None:
        return model
    status = record.status.get(int(version))
    if status is not None:
        detail = f": {status.reason}" if status.reason else ""
        raise ModelNotReady(f"model {name!r} version {version} is {status.state}{detail}")
    ready = record.ready_versions()
    raise ModelNotFound(f"model {name!r} has no version {version}; ready versions: {ready or 'none'}")


def index_entries(records: Mapping[str, ModelRecord], names: Iterable[str], ready_only: bool) -> list[dict[str, str]]:
    """Triton repository index entries for ``names`` (sorted by name then version); a name with
    no record is listed by name only."""
    entries: list[dict[str, str]] = []
    for name in sorted(names):
        record = records.get(name)
        if record is None:
            entries.append({"name": name})
            continue
        if not record.status:
            if ready_only:
                continue
            if record.reason:
                entries.append({"name": name, "state": UNAVAILABLE, "reason": record.reason})
            else:
                entries.append({"name": name})
            continue
        for version, status in sorted(record.status.items()):
            if ready_only and status.state != READY:
                continue
            entry = {"name": name, "version": str(version), "state": status.state}
            if status.reason:
                entry["reason"] = status.reason
            entries.append(entry)
    return entries


def all_available(records: Iterable[ModelRecord]) -> bool:
    """Strict readiness: no model failed (unloaded ones aside) and no version is loading."""
    for record in records:
        if record.reason and record.reason != UNLOADED_REASON and not record.served:
            return False
        for status in record.status.values():
            if status.state == LOADING:
                return False
            if status.state == UNAVAILABLE and status.reason != UNLOADED_REASON:
                return False
    return True


class RecordQueries:
    """The model manager's read-only queries over its records; ``ModelManager`` adds the scanning,
    loading and locking that change them."""

    _records: dict[str, ModelRecord]

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The ready model version (the highest ready one when ``version`` is None).

        Raises: ModelNotFound (unknown model or version), ModelNotReady (known but not loaded,
        with the reason).
        """
        return lookup(self._records, name, version)

    def versions(self, name: str) -> list[int]:
        """Ready versions of a model, ascending (empty when unknown)."""
        record = self._records.get(name)
        return record.ready_versions() if record else []

    def last_error(self, name: str) -> str:
        """The latest load failure of a model ('' when none), also when an older version serves."""
        record = self._records.get(name)
        return record.last_error if record else ""

    def loaded_models(self) -> list[ServedModel]:
        """Every loaded version, sorted by name then version."""
        return [model for name in sorted(self._records) for _, model in sorted(self._records[name].served.items())]

    def all_stats(self) -> list[ModelStats]:
        """Statistics of every loaded version."""
        return [model.scheduler.stats for model in self.loaded_models()]
