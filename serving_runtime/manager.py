"""Model management: which model versions are loaded, and live changes to them.

Control modes, as Triton's:

- ``none``: load every model in the repositories at start; never change them.
- ``poll``: the same, then ``poll()`` (the server calls it every ``--repository-poll-secs``)
  rescans and applies what changed: new or removed models, new or removed versions, changed
  files or ``config.pbtxt``.
- ``explicit``: load ``startup_models`` (``*`` for all) at start; ``load``/``unload`` on request.

Which models and versions to load, keep and retire is decided by the pure functions of
``version_plan.py``; this module does the scanning, loading and swapping, under a lock per model.

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
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from shipyard.serving_runtime.cache import ResponseCache
from shipyard.serving_runtime.ensemble import ENSEMBLE_BACKEND, dependencies_to_load, load_ensemble, load_waves
from shipyard.serving_runtime.errors import (
    InvalidArgument,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ServingError,
)
from shipyard.serving_runtime.model import ServedModel, load_instances
from shipyard.serving_runtime.model_records import ModelRecord, RecordQueries, all_available, index_entries
from shipyard.serving_runtime.repository import (
    ModelDefinition,
    ModelFingerprint,
    RepositoryScan,
    check_model_name,
    model_fingerprint,
    prepare_model,
    scan_repositories,
)
from shipyard.serving_runtime.version_plan import (
    UNLOADED,
    UNLOADING,
    KnownModel,
    VersionStatus,
    plan_loads,
    plan_swap,
    poll_changes,
    startup_selection,
)

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

log = logging.getLogger(__name__)

ControlMode = Literal["none", "poll", "explicit"]
CONTROL_MODES: tuple[str, ...] = ("none", "poll", "explicit")


class ExplicitModeRequired(InvalidArgument):
    """``load``/``unload`` asked of a server not in explicit model control mode."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ServingError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


class ModelManager(RecordQueries):
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
        response_cache: ResponseCache | None = None,
    ) -> None:
        """``gpu_count`` overrides GPU detection (None: ask NVML at start); ``response_cache`` is
        the server's (``--cache-config``), for models whose config enables it.

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
        self.response_cache = response_cache
        self._records: dict[str, ModelRecord] = {}
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
        selection = startup_selection(self.control_mode, scan.names(), self.startup_models)
        for name in selection.absent:
            record = self._records.setdefault(name, ModelRecord(name))
            record.reason = record.last_error = (
                f"model {name!r} (--load-model) is not in any model repository ({self._repo_list()})"
            )
        present = [name for name in selection.names if name not in selection.absent]
        for wave in load_waves(present, scan):  # ensembles after their models
            await asyncio.gather(*(self._sync(name, scan) for name in wave))
        self._started = True
        failures = [failure for name in selection.names for failure in self._records[name].failures()]
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
            fingerprints = await asyncio.to_thread(
                lambda: {name: model_fingerprint(loc.path) for name, loc in scan.models.items()}
            )
            removed, changed = poll_changes(
                {name: KnownModel(r.fingerprint, r.last_error) for name, r in self._records.items()},
                scan.names(),
                fingerprints,
                {name: scan.duplicate_reason(name) for name in scan.duplicates},
            )
            await asyncio.gather(*(self._remove(name) for name in removed))
            for wave in load_waves(changed, scan):  # ensembles after their models
                await asyncio.gather(*(self._sync(name, scan) for name in wave))

    async def shutdown(self) -> None:
        """Stop every model: each finishes the requests it accepted, then closes its instances."""
        self._stopping = True
        retiring: list[ServedModel] = []
        for record in self._records.values():
            for version, model in record.served.items():
                record.status[version] = VersionStatus(UNLOADING)
                retiring.append(model)
        await asyncio.gather(*(self._retire(model) for model in retiring))
        for record in self._records.values():
            for version in record.served:
                record.status[version] = UNLOADED
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
        # An ensemble's composing models load first, as Triton does (their failures: the ensemble's error names them).
        for wave in dependencies_to_load(name, scan, lambda model: bool(self.versions(model)), override):
            await asyncio.gather(*(self._sync(model, scan) for model in wave))
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
                record.status[version] = VersionStatus(UNLOADING)
            await asyncio.gather(*(self._retire(model) for model in retiring.values()))
            record.forget()
        log.info("unloaded model %s", name)

    # ---------------------------------------------------------------- queries
    # get, versions, last_error, all_stats, loaded_models: RecordQueries (model_records.py)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton repository index entries, sorted by name then version.

        Each entry has ``name``, and where known ``version``, ``state`` (READY, LOADING,
        UNLOADING, UNAVAILABLE) and ``reason``. In explicit mode, models in the repositories that
        were never loaded are listed by name only.
        """
        names = set(self._records)
        if self.control_mode == "explicit" and not ready_only:
            try:
                names |= scan_repositories(self.repositories).names()
            except ServingError as exc:
                log.warning("index: repository scan failed: %s", exc.message)
        return index_entries(self._records, names, ready_only)

    def is_ready(self, strict: bool = False) -> bool:
        """Server readiness. Non-strict: started and not shutting down. Strict (Triton's
        ``--strict-readiness``): also every model the server manages is loaded without errors."""
        if not self._started or self._stopping:
            return False
        if not strict:
            return True
        return all_available(self._records.values())

    # ---------------------------------------------------------------- internals

    def _repo_list(self) -> str:
        return ", ".join(str(r) for r in self.repositories)

    def _require_explicit(self, action: str) -> None:
        if self.control_mode != "explicit":
            raise ExplicitModeRequired(
                f"cannot {action} models in model control mode {self.control_mode!r}; "
                "start the server with --model-control-mode explicit to load and unload models on request"
            )

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
                record.status[version] = VersionStatus(UNLOADING)
            await asyncio.gather(*(self._retire(model) for model in retiring))
            if self._records.get(name) is record:
                del self._records[name]
        log.info("model %s removed from the repository: unloaded", name)

    async def _load_version(self, definition: ModelDefinition, version: int) -> ServedModel:
        if definition.backend_name == ENSEMBLE_BACKEND:
            return load_ensemble(definition, version, self.get)
        instances = await asyncio.to_thread(load_instances, definition, version, self.gpu_count)
        served = ServedModel(
            definition.name,
            version,
            definition.config,
            instances,
            model_dir=definition.model_dir,
            response_cache=self.response_cache,
        )
        for instance in served.instances:  # Python models call other models (BLS) through this manager
            if hasattr(instance, "bind_server"):
                instance.bind_server(self)
        return served

    def _fail_model(self, record: ModelRecord, reason: str) -> None:
        if record.fail(reason):
            log.error("reload of model %s failed, previous versions keep serving: %s", record.name, reason)
        else:
            log.error("model %s is unavailable: %s", record.name, reason)

    async def _sync(
        self, name: str, scan: RepositoryScan, override: ModelConfig | None = None, explicit: bool = False
    ) -> ServingError | None:
        """Bring one model in line with the repository. Returns the error when nothing new
        loaded (for an explicit load to report); never raises for the model's own problems."""
        record = self._records.setdefault(name, ModelRecord(name))
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
            return await self._load_and_swap(record, definition, fingerprint, explicit)

    async def _load_and_swap(
        self, record: ModelRecord, definition: ModelDefinition, fingerprint: ModelFingerprint, explicit: bool
    ) -> ServingError | None:
        """Load the versions ``plan_loads`` picks, then apply ``plan_swap`` (call under ``record.lock``)."""
        name = record.name
        old = record.definition
        plan = plan_loads(
            definition.versions,
            definition.missing,
            set(record.served),
            record.stamps,
            fingerprint.versions,
            config_changed=old is None or old.config != definition.config,
        )
        record.status.update(plan.status)
        results = await asyncio.gather(*(self._load_version(definition, v) for v in plan.load), return_exceptions=True)
        if self._stopping:  # shutdown began while loading: close what just loaded
            await asyncio.gather(*(self._retire(r) for r in results if isinstance(r, ServedModel)))
            return ModelNotReady("the server is shutting down")
        loaded: dict[int, ServedModel] = {}
        outcomes: dict[int, str | None] = {}
        for version, result in zip(plan.load, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            if isinstance(result, ServedModel):
                loaded[version] = result
                outcomes[version] = None
            else:
                outcomes[version] = _reason(result)
        on_disk = set(fingerprint.versions)
        swap = plan_swap(definition.versions, definition.missing, set(record.served), outcomes, record.status, on_disk)
        served = dict(record.served)
        retiring: list[ServedModel] = []
        for version in swap.installed:
            previous = served.get(version)
            if previous is not None:
                retiring.append(previous)
                previous.successor = loaded[version]
            served[version] = loaded[version]
            record.stamps[version] = fingerprint.versions.get(version)
            log.info("model %s version %d loaded (%s)", name, version, definition.backend_name)
        for version in swap.retired:
            retiring.append(served.pop(version))
            record.stamps.pop(version, None)
        self._log_failures(name, outcomes, swap.kept)
        if not swap.selected_serving and served:
            log.error("model %s: no newly selected version loaded; versions %s keep serving", name, sorted(served))
        for model in served.values():
            model.versions_source = record.ready_versions
        record.served = served  # the swap: new requests go to the new versions from here on
        record.status = dict(swap.status)
        if swap.adopt_definition(len(plan.load)):
            record.definition = definition
        record.fingerprint = fingerprint
        record.last_error = "; ".join(swap.errors)
        await asyncio.gather(*(self._retire(model) for model in retiring))
        if swap.reported_error(explicit):
            return ModelLoadError(f"model {name!r} failed to load: " + "; ".join(swap.errors))
        return None

    @staticmethod
    def _log_failures(name: str, outcomes: dict[int, str | None], kept: Sequence[int]) -> None:
        for version, reason in outcomes.items():
            if reason is None:
                continue
            if version in kept:
                log.error("reload of %s version %d failed, the loaded one keeps serving: %s", name, version, reason)
            else:
                log.error("model %s version %d failed to load: %s", name, version, reason)
