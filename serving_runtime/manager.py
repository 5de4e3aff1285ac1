"""Model management: which model versions are loaded, and live changes to them.

Control modes, as Triton's:

- ``none``: load every model in the repositories at start; never change them.
- ``poll``: the same, then ``poll()`` (the server calls it every ``--repository-poll-secs``)
  rescans and applies what changed: new or removed models, new or removed versions, changed
  files or ``config.pbtxt``.
- ``explicit``: load ``startup_models`` (``*`` for all) at start; ``load``/``unload`` on request.

A (re)load never interrupts serving: files are read and instances created in worker threads;
the new version is swapped in only once it is loaded and warmed up; the version it replaces
stops taking requests, finishes the ones it accepted (``Scheduler.drain``), and is closed.
When a reload fails, the version already serving stays; when a model has nothing to serve it
is UNAVAILABLE with the reason in ``index()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from shipyard.serving_runtime.errors import (
    InvalidArgument,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ServingError,
)
from shipyard.serving_runtime.model import ServedModel, load_instances
from shipyard.serving_runtime.repository import (
    ModelDefinition,
    ModelFingerprint,
    RepositoryScan,
    check_model_name,
    model_fingerprint,
    prepare_model,
    scan_repositories,
)
from shipyard.serving_runtime.stats import ModelStats

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

log = logging.getLogger(__name__)

ControlMode = Literal["none", "poll", "explicit"]
CONTROL_MODES: tuple[str, ...] = ("none", "poll", "explicit")

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"
UNLOADED_REASON = "unloaded"


class ExplicitModeRequired(InvalidArgument):
    """``load``/``unload`` asked of a server not in explicit model control mode."""


@dataclass
class _VersionStatus:
    state: str
    reason: str = ""


@dataclass
class _ModelRecord:
    name: str
    served: dict[int, ServedModel] = field(default_factory=dict)
    status: dict[int, _VersionStatus] = field(default_factory=dict)
    reason: str = ""  # model-level failure (config, duplicate, no versions) when nothing serves
    last_error: str = ""  # the latest failure, also when an older version kept serving
    definition: ModelDefinition | None = None
    fingerprint: ModelFingerprint | None = None
    stamps: dict[int, object] = field(default_factory=dict)  # version -> files it was loaded from
    override: ModelConfig | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ready_versions(self) -> list[int]:
        return sorted(self.served)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ServingError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


class ModelManager:
    """Loads models from one or more repositories and keeps them current.

    Not thread-safe: call every method from the event loop thread.
    """

    def __init__(
        self,
        repositories: Sequence[str | Path],
        control_mode: str = "none",
        startup_models: Sequence[str] = (),
        exit_on_error: bool = False,
        gpu_count: int | None = None,
    ) -> None:
        """``gpu_count`` overrides GPU detection (None: ask NVML at start).

        Raises: ValueError for an unknown control mode, no repositories, or startup models
        outside explicit mode.
        """
        if control_mode not in CONTROL_MODES:
            raise ValueError(f"model control mode {control_mode!r} is unknown; use one of {', '.join(CONTROL_MODES)}")
        if not repositories:
            raise ValueError("at least one model repository is needed (--model-repository DIR)")
        if startup_models and control_mode != "explicit":
            raise ValueError("--load-model needs --model-control-mode explicit (other modes load every model)")
        self.repositories = tuple(Path(r) for r in repositories)
        self.control_mode = control_mode
        self.startup_models = tuple(startup_models)
        self.exit_on_error = exit_on_error
        self._gpu_count = gpu_count
        self._records: dict[str, _ModelRecord] = {}
        self._started = False
        self._stopping = False
        self._poll_lock = asyncio.Lock()

    # ---------------------------------------------------------------- lifecycle

    @property
    def gpu_count(self) -> int:
        return self._gpu_count or 0

    async def start(self) -> None:
        """Scan the repositories and load the models the control mode asks for.

        Raises: ModelConfigError when a repository does not exist; with ``exit_on_error``,
        ModelLoadError naming every model that failed (after closing what did load).
        """
        if self._gpu_count is None:
            from shipyard.serving_runtime.devices import gpu_count

            self._gpu_count = await asyncio.to_thread(gpu_count)
        scan = await asyncio.to_thread(scan_repositories, self.repositories)
        if self.control_mode == "explicit":
            names = sorted(scan.names()) if "*" in self.startup_models else list(dict.fromkeys(self.startup_models))
        else:
            names = sorted(scan.names())
        for name in names:
            if name not in scan.names():
                record = self._records.setdefault(name, _ModelRecord(name))
                record.reason = record.last_error = (
                    f"model {name!r} (--load-model) is not in any model repository ({self._repo_list()})"
                )
        await asyncio.gather(*(self._sync(name, scan) for name in names if name in scan.names()))
        self._started = True
        failures: list[str] = []
        for name in names:
            record = self._records[name]
            if not record.served:
                failures.append(f"{name}: {self._not_ready_reason(record)}")
            else:
                failures.extend(
                    f"{name} version {v}: {s.reason}"
                    for v, s in sorted(record.status.items())
                    if s.state == UNAVAILABLE and s.reason != UNLOADED_REASON
                )
        for failure in failures:
            log.error("model failed to load: %s", failure)
        if failures and self.exit_on_error:
            await self.shutdown()
            raise ModelLoadError("models failed to load (--exit-on-error): " + "; ".join(failures))

    async def poll(self) -> None:
        """Rescan once (poll mode; a no-op otherwise) and apply what changed.

        Never raises for a model's problem: failures are recorded in ``index()``.
        """
        if self.control_mode != "poll" or self._stopping:
            return
        async with self._poll_lock:
            try:
                scan = await asyncio.to_thread(scan_repositories, self.repositories)
            except ServingError as exc:
                log.error("repository poll failed, keeping the current models: %s", exc.message)
                return
            names = scan.names()
            removed = [name for name in self._records if name not in names]
            fingerprints = await asyncio.to_thread(
                lambda: {name: model_fingerprint(loc.path) for name, loc in scan.models.items()}
            )
            changed = []
            for name in sorted(names):
                record = self._records.get(name)
                if record is None or name in scan.duplicates:
                    if record is None or record.last_error != scan.duplicate_reason(name):
                        changed.append(name)
                elif record.fingerprint != fingerprints.get(name):
                    changed.append(name)
            tasks = [self._remove(name) for name in removed] + [self._sync(name, scan) for name in changed]
            if tasks:
                await asyncio.gather(*tasks)

    async def shutdown(self) -> None:
        """Stop every model: each finishes the requests it accepted, then closes its instances."""
        self._stopping = True
        retiring: list[ServedModel] = []
        for record in self._records.values():
            for version, model in record.served.items():
                record.status[version] = _VersionStatus(UNLOADING)
                retiring.append(model)
        await asyncio.gather(*(self._retire(model) for model in retiring))
        for record in self._records.values():
            for version in record.served:
                record.status[version] = _VersionStatus(UNAVAILABLE, UNLOADED_REASON)
            record.served = {}

    # ---------------------------------------------------------------- explicit control

    async def load(self, name: str, config_json: str | None = None) -> None:
        """Load or reload a model (explicit mode). ``config_json`` replaces its config.pbtxt.

        Versions whose files and config did not change keep serving untouched; changed ones are
        loaded before the old ones retire.

        Raises: ExplicitModeRequired (not explicit mode), InvalidArgument (bad name),
        ModelNotFound (no such model directory), ModelConfigError (bad config JSON),
        ModelLoadError / ModelConfigError (it failed; an older loaded version keeps serving).
        """
        self._require_explicit("load")
        check_model_name(name)
        scan = await asyncio.to_thread(scan_repositories, self.repositories)
        if name not in scan.names():
            raise ModelNotFound(f"model {name!r} is not in any model repository ({self._repo_list()})")
        override = None
        if config_json:
            from shipyard.serving_runtime.config import config_from_json

            override = config_from_json(config_json, source=f"load request config for model {name!r}")
        error = await self._sync(name, scan, override=override, explicit=True)
        if error is not None:
            raise error

    async def unload(self, name: str) -> None:
        """Unload every version of a model (explicit mode); accepted requests finish first.

        Raises: ExplicitModeRequired, InvalidArgument (bad name), ModelNotFound (neither
        loaded nor in a repository).
        """
        self._require_explicit("unload")
        check_model_name(name)
        record = self._records.get(name)
        if record is None:
            scan = await asyncio.to_thread(scan_repositories, self.repositories)
            if name not in scan.names():
                raise ModelNotFound(f"model {name!r} is not loaded and not in any model repository")
            return
        async with record.lock:
            retiring = record.served
            record.served = {}
            for version in retiring:
                record.status[version] = _VersionStatus(UNLOADING)
            await asyncio.gather(*(self._retire(model) for model in retiring.values()))
            record.status = {v: _VersionStatus(UNAVAILABLE, UNLOADED_REASON) for v in record.status}
            if not record.status:
                record.reason = UNLOADED_REASON
            record.definition = None
            record.fingerprint = None
            record.stamps = {}
            record.override = None
        log.info("unloaded model %s", name)

    # ---------------------------------------------------------------- queries

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The ready model version (the highest ready one when ``version`` is None).

        Raises: ModelNotFound (unknown model or version), ModelNotReady (known but not loaded,
        with the reason).
        """
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(f"unknown model {name!r}")
        if version is None:
            if record.served:
                return record.served[max(record.served)]
            raise ModelNotReady(f"model {name!r} is not ready: {self._not_ready_reason(record)}")
        model = record.served.get(int(version))
        if model is not None:
            return model
        status = record.status.get(int(version))
        if status is not None:
            detail = f": {status.reason}" if status.reason else ""
            raise ModelNotReady(f"model {name!r} version {version} is {status.state}{detail}")
        ready = record.ready_versions()
        raise ModelNotFound(f"model {name!r} has no version {version}; ready versions: {ready or 'none'}")

    def versions(self, name: str) -> list[int]:
        """Ready versions of a model, ascending (empty when unknown)."""
        record = self._records.get(name)
        return record.ready_versions() if record else []

    def last_error(self, name: str) -> str:
        """The latest load failure of a model ('' when none), also when an older version serves."""
        record = self._records.get(name)
        return record.last_error if record else ""

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton repository index entries, sorted by name then version.

        Each entry has ``name``, and where known ``version``, ``state`` (READY, LOADING,
        UNLOADING, UNAVAILABLE) and ``reason``. In explicit mode, models in the repositories that
        were never loaded are listed by name only.
        """
        entries: list[dict[str, str]] = []
        names = set(self._records)
        if self.control_mode == "explicit" and not ready_only:
            try:
                names |= scan_repositories(self.repositories).names()
            except ServingError as exc:
                log.warning("index: repository scan failed: %s", exc.message)
        for name in sorted(names):
            record = self._records.get(name)
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

    def is_ready(self, strict: bool = False) -> bool:
        """Server readiness. Non-strict: started and not shutting down. Strict (Triton's
        ``--strict-readiness``): also every model the server manages is loaded without errors."""
        if not self._started or self._stopping:
            return False
        if not strict:
            return True
        for record in self._records.values():
            if record.reason and record.reason != UNLOADED_REASON and not record.served:
                return False
            for status in record.status.values():
                if status.state == LOADING:
                    return False
                if status.state == UNAVAILABLE and status.reason != UNLOADED_REASON:
                    return False
        return True

    def all_stats(self) -> list[ModelStats]:
        """Statistics of every loaded version."""
        return [
            model.scheduler.stats
            for name in sorted(self._records)
            for _, model in sorted(self._records[name].served.items())
        ]

    def loaded_models(self) -> list[ServedModel]:
        """Every loaded version, sorted by name then version."""
        return [model for name in sorted(self._records) for _, model in sorted(self._records[name].served.items())]

    # ---------------------------------------------------------------- internals

    def _repo_list(self) -> str:
        return ", ".join(str(r) for r in self.repositories)

    def _require_explicit(self, action: str) -> None:
        if self.control_mode != "explicit":
            raise ExplicitModeRequired(
                f"cannot {action} models in model control mode {self.control_mode!r}; "
                "start the server with --model-control-mode explicit to load and unload models on request"
            )

    @staticmethod
    def _not_ready_reason(record: _ModelRecord) -> str:
        if record.reason:
            return record.reason
        reasons = [
            f"version {v} {s.state}: {s.reason}" if s.reason else f"version {v} {s.state}"
            for v, s in sorted(record.status.items())
        ]
        return "; ".join(reasons) or "not loaded"

    async def _retire(self, model: ServedModel) -> None:
        try:
            await model.retire()
        except Exception:
            log.exception("retiring %r failed", model)

    async def _remove(self, name: str) -> None:
        """A model whose directory is gone (poll mode): retire its versions and forget it."""
        record = self._records.get(name)
        if record is None:
            return
        async with record.lock:
            retiring = list(record.served.values())
            record.served = {}
            for version in record.status:
                record.status[version] = _VersionStatus(UNLOADING)
            await asyncio.gather(*(self._retire(model) for model in retiring))
            if self._records.get(name) is record:
                del self._records[name]
        log.info("model %s removed from the repository: unloaded", name)

    async def _load_version(self, definition: ModelDefinition, version: int) -> ServedModel:
        instances = await asyncio.to_thread(load_instances, definition, version, self.gpu_count)
        served = ServedModel(definition.name, version, definition.config, instances, model_dir=definition.model_dir)
        for instance in served.instances:  # Python models call other models (BLS) through this manager
            if hasattr(instance, "bind_server"):
                instance.bind_server(self)
        return served

    def _fail_model(self, record: _ModelRecord, reason: str) -> None:
        record.last_error = reason
        if record.served:
            log.error("reload of model %s failed, previous versions keep serving: %s", record.name, reason)
        else:
            record.reason = reason
            record.status = {v: s for v, s in record.status.items() if s.state == READY}
            log.error("model %s is unavailable: %s", record.name, reason)

    async def _sync(
        self, name: str, scan: RepositoryScan, override: ModelConfig | None = None, explicit: bool = False
    ) -> ServingError | None:
        """Bring one model in line with the repository. Returns the error when nothing new
        loaded (for an explicit load to report); never raises for the model's own problems."""
        record = self._records.setdefault(name, _ModelRecord(name))
        async with record.lock:
            if self._stopping:
                return ModelNotReady("the server is shutting down")
            location = scan.models.get(name)
            if location is None:
                reason = scan.duplicate_reason(name) if name in scan.duplicates else f"model {name!r} not found"
                self._fail_model(record, reason)
                record.fingerprint = None
                return ModelLoadError(reason)
            fingerprint = await asyncio.to_thread(model_fingerprint, location.path)
            if explicit:
                record.override = override
            try:
                definition = await asyncio.to_thread(prepare_model, location, self.gpu_count, record.override)
            except Exception as exc:
                record.fingerprint = fingerprint
                self._fail_model(record, _reason(exc))
                return exc if isinstance(exc, ServingError) else ModelLoadError(_reason(exc))
            record.reason = ""
            old = record.definition
            config_changed = old is None or old.config != definition.config
            to_load = [
                v
                for v in definition.versions
                if config_changed or v not in record.served or record.stamps.get(v) != fingerprint.versions.get(v)
            ]
            for version in to_load:
                if version not in record.served:
                    record.status[version] = _VersionStatus(LOADING)
            for version, why in definition.missing.items():
                if version not in record.served:
                    record.status[version] = _VersionStatus(UNAVAILABLE, why)
            results = await asyncio.gather(
                *(self._load_version(definition, v) for v in to_load), return_exceptions=True
            )
            if self._stopping:  # shutdown began while loading: close what just loaded
                await asyncio.gather(*(self._retire(r) for r in results if isinstance(r, ServedModel)))
                return ModelNotReady("the server is shutting down")
            served = dict(record.served)
            retiring: list[ServedModel] = []
            errors: list[str] = []
            loaded_any = False
            for version, result in zip(to_load, results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    reason = _reason(result)
                    errors.append(f"version {version}: {reason}")
                    if version in served:
                        log.error(
                            "reload of %s version %d failed, the loaded one keeps serving: %s", name, version, reason
                        )
                    else:
                        record.status[version] = _VersionStatus(UNAVAILABLE, reason)
                        log.error("model %s version %d failed to load: %s", name, version, reason)
                    continue
                loaded_any = True
                previous = served.get(version)
                if previous is not None:
                    retiring.append(previous)
                    previous.successor = result
                served[version] = result
                record.status[version] = _VersionStatus(READY)
                record.stamps[version] = fingerprint.versions.get(version)
                log.info("model %s version %d loaded (%s)", name, version, definition.backend_name)
            selected_ready = any(v in served for v in definition.versions)
            if selected_ready:
                # Only once a selected version serves do versions outside the policy retire.
                for version in [v for v in served if v not in definition.versions]:
                    retiring.append(served.pop(version))
                    record.status[version] = _VersionStatus(UNAVAILABLE, UNLOADED_REASON)
                    record.stamps.pop(version, None)
            elif served:
                log.error("model %s: no newly selected version loaded; versions %s keep serving", name, sorted(served))
            for version in list(record.status):
                if version in served or version in definition.versions or version in definition.missing:
                    continue
                if version in fingerprint.versions:
                    record.status[version] = _VersionStatus(UNAVAILABLE, UNLOADED_REASON)
                else:  # its directory is gone
                    del record.status[version]
            for model in served.values():
                model.versions_source = record.ready_versions
            record.served = served  # the swap: new requests go to the new versions from here on
            if loaded_any or not to_load:
                record.definition = definition
            record.fingerprint = fingerprint
            record.last_error = "; ".join(errors)
            await asyncio.gather(*(self._retire(model) for model in retiring))
            if errors and (not loaded_any or explicit):
                return ModelLoadError(f"model {name!r} failed to load: " + "; ".join(errors))
            return None
