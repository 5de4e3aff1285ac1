"""A local cache that mirrors a model repository in object storage; the runtime serves the cache.

``RemoteRepository(uri).sync()`` lists the store once, then downloads what changed into
``<cache dir>/<key>/`` (``key`` names the URI), which is an ordinary Triton-layout repository the
manager scans like any local one. ``RepositoryMirrors`` holds every repository of a server and
syncs the remote ones before each scan (start, poll, explicit load).

- **Keyed by content.** Each cached version records the token of what it was downloaded from
  (``<model>/<version>/.shipyard-cache-state.json``: a digest of every object's path, size and
  ETag/generation); each model its model-level files' tokens (``<model>/.shipyard-cache-state.json``).
  A poll or a restart downloads only versions and files whose tokens changed: an unchanged
  repository costs one listing and no download.
- **Never half a version.** A version is downloaded into a dot-directory (the scan ignores it),
  sizes checked, then renamed into place; a new model is staged whole and renamed in one step. A
  download that fails or is killed leaves only dot-entries, removed by the next sync. Versions
  without the store's completion marker are not mirrored at all (``remote_store.parse_listing``).
- **Parallel downloads** on a thread pool (``max_workers``), with a progress line in the log at
  most every ``PROGRESS_INTERVAL_S`` and one when done.
- One sync at a time per cache directory, also across processes (``fcntl.flock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.serving_runtime.errors import ModelConfigError, ServingError
from shipyard.serving_runtime.remote_store import RemoteModel, RemoteObject, is_remote, open_store, parse_listing

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "SHIPYARD_MODEL_CACHE_DIR"
STATE_FILE = ".shipyard-cache-state.json"
STAGING_PREFIX = ".sync-"
OLD_PREFIX = ".old-"
PROGRESS_INTERVAL_S = 2.0
DEFAULT_WORKERS = 8


def default_cache_dir() -> Path:
    """``$SHIPYARD_MODEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/shipyard/model-repositories`` (``~/.cache/...``)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shipyard" / "model-repositories"


@dataclass
class SyncReport:
    """What one sync did."""

    listings: int = 0
    objects_listed: int = 0
    objects_downloaded: int = 0
    bytes_downloaded: int = 0
    updated: list[str] = field(default_factory=list)  # "model/version" or "model/file" now current
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Progress:
    """Bytes done of a sync's downloads; logs a line at most every PROGRESS_INTERVAL_S."""

    def __init__(self, uri: str, total_bytes: int, count: int) -> None:
        self.uri, self.total, self.count = uri, total_bytes, count
        self.done = 0
        self.start = self.last = time.monotonic()
        self.lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            now = time.monotonic()
            if now - self.last < PROGRESS_INTERVAL_S:
                return
            self.last = now
        log.info("%s: downloaded %s of %s (%s/s)", self.uri, _mb(self.done), _mb(self.total), _mb(self._rate()))

    def _rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-6)

    def finish(self) -> None:
        elapsed = time.monotonic() - self.start
        log.info(
            "%s: downloaded %d objects, %s in %.2f s (%s/s)", self.uri, self.count, _mb(self.done), elapsed,
            _mb(self._rate()),
        )  # fmt: skip


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def _callback(progress: _Progress) -> Any:
    from fsspec.callbacks import Callback

    class _Bytes(Callback):  # type: ignore[misc]
        def relative_update(self, inc: int = 1) -> None:
            progress.add(inc)

    return _Bytes()


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}.json")
    tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _discard(path: Path) -> None:
    """Rename ``path`` to a dot-name (the scan stops seeing it at once), then delete it."""
    hidden = path.with_name(f"{OLD_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    if hidden.is_dir():
        shutil.rmtree(hidden, ignore_errors=True)
    else:
        hidden.unlink(missing_ok=True)


def _remove_dot_leftovers(directory: Path) -> None:
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith((STAGING_PREFIX, OLD_PREFIX)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@dataclass
class _ModelPlan:
    """What one model needs: model-level files and versions to download."""

    model: RemoteModel
    files: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    work: Path | None = None  # where it is staged (the model dir, or a dot-dir for a new model)
    failed: bool = False


class RemoteRepository:
    """One repository in object storage, mirrored into a local cache directory.

    Raises (constructor): ModelConfigError for an unknown scheme or a missing extra.
    """

    def __init__(self, uri: str, cache_dir: str | Path | None = None, max_workers: int = DEFAULT_WORKERS) -> None:
        self.uri = str(uri).rstrip("/")
        self.fs, self.root = open_store(self.uri)
        base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        readable = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.uri.split("://", 1)[1])[:48]
        self.local = base / f"{readable}-{key}"
        self._lock_path = base / f".{readable}-{key}.lock"
        self.max_workers = max_workers
        self._lock = threading.Lock()
        self._warned: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        return f"RemoteRepository({self.uri!r} -> {self.local})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.local.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def list_models(self) -> dict[str, RemoteModel]:
        """One recursive listing of the store, parsed. Raises: ModelConfigError naming the store's error."""
        try:
            self.fs.invalidate_cache()
            listing = self.fs.find(self.root, detail=True, withdirs=False)
        except Exception as exc:
            raise ModelConfigError(f"cannot list model repository {self.uri}: {type(exc).__name__}: {exc}") from None
        self._last_listed = len(listing)
        return parse_listing(listing, self.root)

    def sync(self) -> SyncReport:
        """Bring the cache in line with the store (blocking). Raises: ModelConfigError when the
        store cannot be listed; failed downloads are in ``errors`` (the cache keeps what it had)."""
        start = time.monotonic()
        report = SyncReport()
        with self._locked():
            models = self.list_models()
            report.listings, report.objects_listed = 1, self._last_listed
            self._note_incomplete(models)
            _remove_dot_leftovers(self.local)
            plans = [plan for plan in (self._plan(m) for m in models.values()) if plan.files or plan.versions]
            self._download(plans, report)
            for plan in plans:
                if not plan.failed:
                    self._commit(plan, report)
            self._remove_absent(models, report)
        report.seconds = time.monotonic() - start
        return report

    # ---------------------------------------------------------------- planning

    def _note_incomplete(self, models: dict[str, RemoteModel]) -> None:
        for model in models.values():
            for number in sorted(model.incomplete - set(model.versions)):
                if (model.name, number) not in self._warned:
                    self._warned.add((model.name, number))
                    log.info(
                        "%s: %s version %d has no completion marker yet (a publish in progress or interrupted); "
                        "not loaded", self.uri, model.name, number,
                    )  # fmt: skip

    def _plan(self, model: RemoteModel) -> _ModelPlan:
        model_dir = self.local / model.name
        _remove_dot_leftovers(model_dir)
        tokens = _read_state(model_dir / STATE_FILE).get("files", {})
        plan = _ModelPlan(model)
        plan.files = [
            name for name, obj in sorted(model.files.items())
            if tokens.get(name) != obj.token or not (model_dir / name).is_file()
        ]  # fmt: skip
        for number, version in sorted(model.versions.items()):
            state = _read_state(model_dir / str(number) / STATE_FILE)
            if state.get("token") != version.token():
                plan.versions.append(number)
        return plan

    # ---------------------------------------------------------------- downloading

    def _download(self, plans: list[_ModelPlan], report: SyncReport) -> None:
        jobs: list[tuple[_ModelPlan, RemoteObject, Path]] = []
        for plan in plans:
            model_dir = self.local / plan.model.name
            plan.work = model_dir if model_dir.is_dir() else self.local / f"{STAGING_PREFIX}{plan.model.name}-{_tag()}"
            plan.work.mkdir(parents=True, exist_ok=True)
            for name in plan.files:
                jobs.append((plan, plan.model.files[name], plan.work / f"{STAGING_PREFIX}file-{name}"))
            for number in plan.versions:
                stage = plan.work / f"{STAGING_PREFIX}{number}"
                for rel, obj in plan.model.versions[number].files.items():
                    jobs.append((plan, obj, stage / rel))
        if not jobs:
            return
        progress = _Progress(self.uri, sum(obj.size for _, obj, _ in jobs), len(jobs))
        log.info(
            "%s: downloading %d objects (%s) for %s", self.uri, len(jobs), _mb(progress.total),
            ", ".join(_describe(plan) for plan in plans),
        )  # fmt: skip

        def fetch(obj: RemoteObject, target: Path) -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(obj.path, str(target), callback=_callback(progress))
            size = target.stat().st_size
            if size != obj.size:
                raise OSError(f"{obj.path}: got {size} bytes, the listing said {obj.size} (changed while downloading?)")

        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="repository-sync") as pool:
            futures = [(plan, obj, pool.submit(fetch, obj, target)) for plan, obj, target in jobs]
            for plan, obj, future in futures:
                try:
                    future.result()
                except Exception as exc:
                    plan.failed = True
                    message = f"{self.uri}: downloading {obj.path} failed: {type(exc).__name__}: {exc}"
                    report.errors.append(message)
                    log.error("%s; model %s keeps its cached files", message, plan.model.name)
                else:
                    report.objects_downloaded += 1
                    report.bytes_downloaded += obj.size
        progress.finish()

    # ---------------------------------------------------------------- committing

    def _commit(self, plan: _ModelPlan, report: SyncReport) -> None:
        """Move the staged files and versions into place (renames only); a new model last, in one step."""
        assert plan.work is not None
        model = plan.model
        for name in plan.files:
            os.replace(plan.work / f"{STAGING_PREFIX}file-{name}", plan.work / name)
            report.updated.append(f"{model.name}/{name}")
        for number in plan.versions:
            stage = plan.work / f"{STAGING_PREFIX}{number}"
            stage.mkdir(parents=True, exist_ok=True)  # a version whose only object is the (empty) marker
            _write_state(stage / STATE_FILE, {"token": model.versions[number].token(), "uri": self.uri})
            final = plan.work / str(number)
            if final.exists():
                _discard(final)
            os.rename(stage, final)
            report.updated.append(f"{model.name}/{number}")
        _write_state(plan.work / STATE_FILE, {"files": {name: obj.token for name, obj in model.files.items()}})
        model_dir = self.local / model.name
        if plan.work != model_dir:
            os.rename(plan.work, model_dir)

    def _remove_absent(self, models: dict[str, RemoteModel], report: SyncReport) -> None:
        """Models, versions and model-level files the store no longer has (or no longer has complete)."""
        for entry in sorted(self.local.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            model = models.get(entry.name)
            if model is None:
                _discard(entry)
                report.removed.append(entry.name)
                continue
            for child in sorted(entry.iterdir()):
                if child.name.startswith("."):
                    continue
                if child.is_dir() and child.name.isdigit() and int(child.name) not in model.versions:
                    _discard(child)
                    report.removed.append(f"{entry.name}/{child.name}")
                elif child.is_file() and child.name not in model.files:
                    child.unlink(missing_ok=True)
                    report.removed.append(f"{entry.name}/{child.name}")


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _describe(plan: _ModelPlan) -> str:
    parts = [f"{plan.model.name}/{v}" for v in plan.versions] + [f"{plan.model.name}/{f}" for f in plan.files]
    return ", ".join(parts)


class RepositoryMirrors:
    """The repositories of a server: local ones as they are, remote ones through a local cache.

    ``local_paths`` is what the manager scans (in the order given); ``refresh()`` syncs every remote
    repository (in worker threads, in parallel).
    Raises (constructor): ModelConfigError (unknown scheme, missing extra).
    """

    def __init__(self, repositories: Sequence[str | Path], cache_dir: str | Path | None = None) -> None:
        self.remotes: list[RemoteRepository] = []
        self.local_paths: list[Path] = []
        for repository in repositories:
            if is_remote(repository):
                remote = RemoteRepository(str(repository), cache_dir)
                self.remotes.append(remote)
                self.local_paths.append(remote.local)
            else:
                self.local_paths.append(Path(repository))
        self.last_reports: list[SyncReport] = []

    async def refresh(self, initial: bool = False) -> None:
        """Sync every remote repository. A store that cannot be listed raises at the first sync
        (``initial``: ModelConfigError, one line) and is logged later (the cache keeps serving)."""
        if not self.remotes:
            return
        results = await asyncio.gather(*(asyncio.to_thread(r.sync) for r in self.remotes), return_exceptions=True)
        self.last_reports = [r for r in results if isinstance(r, SyncReport)]
        for remote, result in zip(self.remotes, results, strict=True):
            if isinstance(result, SyncReport):
                if result.updated or result.removed:
                    log.info(
                        "%s: %d listed, %d downloaded (%s); updated %s; removed %s", remote.uri,
                        result.objects_listed, result.objects_downloaded, _mb(result.bytes_downloaded),
                        ", ".join(result.updated) or "nothing", ", ".join(result.removed) or "nothing",
                    )  # fmt: skip
                continue
            if not isinstance(result, Exception):
                raise result
            message = result.message if isinstance(result, ServingError) else f"{type(result).__name__}: {result}"
            if initial:
                raise ModelConfigError(message)
            log.error("repository sync failed, serving the cached models: %s", message)
