"""Write one version into a Triton-layout model repository, atomically.

Layout: ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/<n>/model.onnx|model.plan`` plus
``<repo>/<model>/<n>/.shipyard-publish.json`` (the publish record: digest, MLflow URI, time).

Local paths and ``file://`` (a polling server must never see a half-written version):

1. the version is written into a dot-prefixed staging directory ``<model>/.publish-<uuid>/`` (the runtime,
   like Triton, ignores non-numeric and dot directories), files fsync'ed;
2. a brand-new model is staged whole (``config.pbtxt`` + ``1/``) and renamed to ``<model>`` in one step;
   otherwise the staging directory is renamed to ``<model>/<n>`` (one ``rename``), then ``config.pbtxt`` is
   replaced with ``os.replace`` from a dot-prefixed temporary file. Between those two steps a poll may load
   the new version with the previous config (the config is per model, not per version);
3. versions beyond ``keep_versions`` are first renamed to dot-prefixed names, then deleted.

A publish killed at any point leaves at most a dot-prefixed directory (removed by a later publish after
``STALE_STAGING_S``), never a numeric version.

Object stores (``s3://``, ``gs://``, ``az://``, other fsspec URLs) have no rename:

1. the version number is claimed by creating ``<model>/<n>/.shipyard-claim`` with the store's create-only
   write (a concurrent publisher that loses moves to ``n+1``; a killed one leaves its number taken);
2. the version's files are uploaded, then ``config.pbtxt``;
3. the completion marker ``<model>/<n>/.shipyard-complete`` is written LAST.

The serving runtime reading the store (``serving_runtime/remote.py``) mirrors only versions that carry
the marker, so a version appears to it whole or not at all.

Public: ``PublishResult``, ``publish_files(files, repository, model_name, config_text, *, keep_versions=None,
record=None) -> PublishResult``, ``next_version(repository, model_name) -> int``,
``list_versions(repository, model_name) -> list[int]``, ``COMPLETE_MARKER``, ``RECORD_FILE``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.components.errors import PublishError
from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.remote_store import COMPLETE_MARKER, check_support, is_remote

CONFIG_FILENAME = "config.pbtxt"
CLAIM_FILE = ".shipyard-claim"  # first object of a version on an object store, created only if absent
RECORD_FILE = ".shipyard-publish.json"
STAGING_PREFIX = ".publish-"
RETIRED_PREFIX = ".retired-"
STALE_STAGING_S = 3600.0


@dataclass(frozen=True)
class PublishResult:
    repository: str
    model_name: str
    version: int
    version_uri: str
    config_text: str
    removed_versions: tuple[int, ...] = field(default=())

    def lineage_tags(self) -> dict[str, Any]:
        from shipyard.registry import lineage as L

        return {L.PUBLISHED_URI: self.version_uri, L.PUBLISHED_VERSION: str(self.version)}


def _fs(repository: str | Path) -> tuple[Any, str, bool]:
    """(filesystem, root path, is_local)."""
    import fsspec

    text = str(repository)
    if is_remote(text):
        try:  # the runtime's own check, before fsspec (whose registry keeps a class imported earlier)
            check_support(text)
        except ModelConfigError as exc:
            raise PublishError(exc.message) from None
    try:
        # a fresh filesystem each time: a cached one would keep the endpoint and credentials of its day
        fs, root = fsspec.core.url_to_fs(text, skip_instance_cache=True)
    except ValueError as exc:  # "Protocol not known: ..."
        raise PublishError(
            f"repository {text!r}: {exc}; use a local path, file://, s3://, gs:// or another fsspec URL"
        ) from None
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    local = "file" in protocols or "local" in protocols
    if local:
        root = str(Path(root).resolve())
    return fs, root.rstrip("/"), local


def _numeric(names: list[str]) -> list[int]:
    return sorted(int(n) for n in names if n.isascii() and n.isdigit())


def list_versions(repository: str | Path, model_name: str) -> list[int]:
    """The numeric version directories of a model (ascending; empty when the model does not exist)."""
    fs, root, _ = _fs(repository)
    path = f"{root}/{model_name}"
    if not fs.exists(path):
        return []
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=True) if e["type"] == "directory"]
    return _numeric(names)


def next_version(repository: str | Path, model_name: str) -> int:
    """One more than the highest numeric version present (1 for a new model)."""
    versions = list_versions(repository, model_name)
    return (versions[-1] + 1) if versions else 1


def _copy_file(src: Path, dst: Path) -> None:
    """Copy and fsync (a module-level step, so a test can interrupt a publish exactly here)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_staging(model_dir: Path) -> None:
    if not model_dir.is_dir():
        return
    now = time.time()
    for entry in model_dir.iterdir():
        if entry.name.startswith((STAGING_PREFIX, RETIRED_PREFIX)) and entry.is_dir():
            if entry.name.startswith(RETIRED_PREFIX) or now - entry.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(entry, ignore_errors=True)


def _retire_local(model_dir: Path, keep_versions: int | None) -> tuple[int, ...]:
    if not keep_versions:
        return ()
    versions = _numeric([p.name for p in model_dir.iterdir() if p.is_dir()])
    removed = versions[:-keep_versions] if len(versions) > keep_versions else []
    for version in removed:
        retired = model_dir / f"{RETIRED_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        os.rename(model_dir / str(version), retired)
        shutil.rmtree(retired, ignore_errors=True)
    return tuple(removed)


def _publish_local(
    files: Mapping[str, Path], root: Path, model_name: str, config_text: str, keep: int | None, record: dict[str, Any]
) -> tuple[int, tuple[int, ...]]:
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / model_name
    new_model = not model_dir.exists()
    parent = root if new_model else model_dir
    _remove_stale_staging(model_dir)
    stage = parent / f"{STAGING_PREFIX}{model_name}-{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        if new_model:
            version = 1
            version_dir = stage / "1"
            version_dir.mkdir()
            _write_text(stage / CONFIG_FILENAME, config_text)
        else:
            version_dir = stage
        for filename, src in files.items():
            _copy_file(src, version_dir / filename)
        _write_text(version_dir / RECORD_FILE, json.dumps(record, indent=2))
        _write_text(version_dir / COMPLETE_MARKER, "")
        _fsync_dir(version_dir)
        if new_model:
            try:
                os.rename(stage, model_dir)
            except OSError:  # another publisher created the model meanwhile: publish as a new version of it
                new_model = False
                flat = model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
                os.rename(version_dir, flat)
                shutil.rmtree(stage, ignore_errors=True)
                stage = flat
        if not new_model:
            for _attempt in range(100):
                version = next_version(root, model_name)
                try:
                    os.rename(stage, model_dir / str(version))
                    break
                except OSError:  # a concurrent publisher took this number
                    continue
            else:
                raise PublishError(f"could not claim a version number under {model_dir} after 100 attempts")
            tmp_config = model_dir / f".{CONFIG_FILENAME}.{uuid.uuid4().hex[:8]}.tmp"
            _write_text(tmp_config, config_text)
            os.replace(tmp_config, model_dir / CONFIG_FILENAME)
        _fsync_dir(model_dir)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return version, _retire_local(model_dir, keep)


def _claim_version(fs: Any, model_path: str) -> int:
    """Claim the next free version number with a create-only write of ``<n>/.shipyard-claim``.

    The store's conditional write (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``, Azure
    ``overwrite=False``) lets exactly one of several concurrent publishers create it; the others move
    on to the next number. Raises: PublishError after 100 numbers taken by others.
    """
    version = next_version_fs(fs, model_path)
    claim = json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "id": uuid.uuid4().hex}).encode()
    for _attempt in range(100):
        try:
            fs.pipe_file(f"{model_path}/{version}/{CLAIM_FILE}", claim, mode="create")
            return version
        except FileExistsError:  # another publisher holds this number
            version += 1
    raise PublishError(f"could not claim a version number under {model_path} after 100 attempts")


def _publish_remote(
    fs: Any, files: Mapping[str, Path], root: str, model_name: str, config_text: str, keep: int | None,
    record: dict[str, Any],
) -> tuple[int, tuple[int, ...]]:  # fmt: skip
    model_path = f"{root}/{model_name}"
    fs.invalidate_cache()
    version = _claim_version(fs, model_path)
    version_path = f"{model_path}/{version}"
    for filename, src in files.items():
        fs.put_file(str(src), f"{version_path}/{filename}")
    fs.pipe_file(f"{version_path}/{RECORD_FILE}", json.dumps(record, indent=2).encode())
    fs.pipe_file(f"{model_path}/{CONFIG_FILENAME}", config_text.encode())
    fs.pipe_file(f"{version_path}/{COMPLETE_MARKER}", b"")  # last: the version is complete
    removed: list[int] = []
    if keep:
        complete = [
            v for v in _numeric([p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(model_path, detail=False)])
            if fs.exists(f"{model_path}/{v}/{COMPLETE_MARKER}")
        ]  # fmt: skip
        for old in complete[:-keep] if len(complete) > keep else []:
            fs.rm(f"{model_path}/{old}", recursive=True)
            removed.append(old)
    return version, tuple(removed)


def next_version_fs(fs: Any, model_path: str) -> int:
    """Next version number under an fsspec path (incomplete versions count, so numbers are never reused)."""
    if not fs.exists(model_path):
        return 1
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(model_path, detail=False)]
    versions = _numeric(names)
    return (versions[-1] + 1) if versions else 1


def publish_files(
    files: Mapping[str, str | Path],
    repository: str | Path,
    model_name: str,
    config_text: str,
    *,
    keep_versions: int | None = None,
    record: Mapping[str, Any] | None = None,
) -> PublishResult:
    """Publish ``files`` (``{filename in the version dir: source path}``) as the next version of ``model_name``.

    Raises: PublishError (bad model name, missing file, bad keep count, the filesystem failed; nothing numeric
    is left behind on a local repository).
    """
    from shipyard.serving_runtime.repository import is_plain_name

    if not is_plain_name(model_name):
        raise PublishError(f"invalid model name {model_name!r}: one plain directory name (no '/', no leading '.')")
    if keep_versions is not None and keep_versions < 1:
        raise PublishError(f"keep_versions={keep_versions}: keep at least 1 version (or None to keep all)")
    sources = {name: Path(src) for name, src in files.items()}
    for name, src in sources.items():
        if not src.is_file():
            raise PublishError(f"file to publish not found: {src} (as {name})")
    fs, root, local = _fs(repository)
    data = {**dict(record or {}), "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        if local:
            version, removed = _publish_local(sources, Path(root), model_name, config_text, keep_versions, data)
            version_uri = (Path(root) / model_name / str(version)).as_uri()
        else:
            version, removed = _publish_remote(fs, sources, root, model_name, config_text, keep_versions, data)
            version_uri = f"{str(repository).rstrip('/')}/{model_name}/{version}"  # in the caller's spelling
    except OSError as exc:
        raise PublishError(f"publishing {model_name!r} into {repository} failed: {exc}") from exc
    return PublishResult(str(repository), model_name, version, version_uri, config_text, removed)
