"""The model repository on disk: Triton's layout.

::

    <repository>/<model>/config.pbtxt             (optional for ONNX: completed from the file)
    <repository>/<model>/<version>/model.onnx     (or model.plan, model.pt, default_model_filename)

Model directories are plain directory names; names starting with ``.`` are skipped (staging
directories of an atomic publish). Version directories are numeric; anything else is ignored.
Fingerprints (mtime and size of the config and of every file under each version directory)
let poll mode tell what changed without reading model files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.serving_runtime.config import CONFIG_FILENAME
from shipyard.serving_runtime.errors import InvalidArgument, ModelConfigError, ModelLoadError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig, ModelVersionPolicy

_MAX_FILES_PER_VERSION = 10_000
_FORBIDDEN = re.compile(r"[/\\\x00]")

# (mtime_ns, size) of one file
FileStamp = tuple[int, int]


def is_plain_name(name: str) -> bool:
    """True for a name usable as one directory entry: not empty, no separators, not hidden."""
    return bool(name) and name not in (".", "..") and not name.startswith(".") and not _FORBIDDEN.search(name)


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a plain directory name.

    Raises: InvalidArgument naming the name (path separators, ``..``, hidden names, empty).
    """
    if not is_plain_name(name):
        raise InvalidArgument(
            f"invalid model name {name!r}: a model name is one plain directory name "
            "(no '/', '\\', NUL, leading '.', or '..')"
        )
    return name


@dataclass(frozen=True)
class ModelLocation:
    """Where one model lives."""

    name: str
    path: Path  # <repository>/<name>
    repository: Path


@dataclass
class RepositoryScan:
    """All models found in the repositories. A name in several repositories is in ``duplicates``
    (with every path) and not in ``models``."""

    models: dict[str, ModelLocation] = field(default_factory=dict)
    duplicates: dict[str, list[Path]] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.models) | set(self.duplicates)

    def duplicate_reason(self, name: str) -> str:
        paths = ", ".join(str(p) for p in self.duplicates[name])
        return f"model {name!r} is in more than one model repository ({paths}); model names must be unique"


def scan_repositories(repositories: Sequence[str | Path]) -> RepositoryScan:
    """List the model directories of every repository.

    Raises: ModelConfigError when a repository is missing or not a directory.
    """
    scan = RepositoryScan()
    found: dict[str, list[ModelLocation]] = {}
    for raw in repositories:
        repository = Path(raw)
        if not repository.is_dir():
            raise ModelConfigError(f"model repository {repository} does not exist or is not a directory")
        try:
            entries = sorted(os.scandir(repository), key=lambda e: e.name)
        except OSError as exc:
            raise ModelConfigError(f"cannot list model repository {repository}: {exc.strerror or exc}") from None
        for entry in entries:
            if not is_plain_name(entry.name) or not entry.is_dir():
                continue
            found.setdefault(entry.name, []).append(ModelLocation(entry.name, Path(entry.path), repository))
    for name, locations in found.items():
        if len(locations) == 1:
            scan.models[name] = locations[0]
        else:
            scan.duplicates[name] = [loc.path for loc in locations]
    return scan


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numeric subdirectories of a model directory, by version number (others are ignored)."""
    versions: dict[int, Path] = {}
    try:
        entries = list(os.scandir(model_dir))
    except OSError:
        return versions
    for entry in entries:
        if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
            versions[int(entry.name)] = Path(entry.path)
    return versions


def select_versions(policy: ModelVersionPolicy | None, available: Iterable[int]) -> tuple[list[int], list[int]]:
    """Versions to serve under ``version_policy`` (default ``latest { num_versions: 1 }``).

    Returns ``(selected, missing)``: ``selected`` ascending; ``missing`` lists versions a
    ``specific`` policy names that have no directory.
    """
    present = sorted(set(available))
    if policy is None:
        return present[-1:], []
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return present, []
    if choice == "specific":
        wanted = sorted(set(int(v) for v in policy.specific.versions))
        return [v for v in wanted if v in present], [v for v in wanted if v not in present]
    count = 1
    if choice == "latest" and policy.latest.num_versions > 0:
        count = int(policy.latest.num_versions)
    return present[-count:] if present else [], []


def _stamp(path: Path) -> FileStamp | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def version_fingerprint(version_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, mtime_ns, size) of every file under a version directory, sorted."""
    stamps: list[tuple[str, int, int]] = []
    for root, dirs, files in os.walk(version_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            stamp = _stamp(path)
            if stamp is not None:
                stamps.append((str(path.relative_to(version_dir)), *stamp))
            if len(stamps) >= _MAX_FILES_PER_VERSION:
                return tuple(stamps)
    return tuple(stamps)


@dataclass(frozen=True)
class ModelFingerprint:
    """What poll mode compares between scans."""

    config: FileStamp | None
    versions: dict[int, tuple[tuple[str, int, int], ...]]

    def changed_versions(self, other: ModelFingerprint) -> set[int]:
        """Versions added, removed or whose files changed between ``other`` and ``self``."""
        keys = set(self.versions) | set(other.versions)
        return {v for v in keys if self.versions.get(v) != other.versions.get(v)}


def model_fingerprint(model_dir: Path) -> ModelFingerprint:
    """Fingerprint of a model directory: its config file and every version directory."""
    versions = {v: version_fingerprint(p) for v, p in version_dirs(model_dir).items()}
    return ModelFingerprint(_stamp(model_dir / CONFIG_FILENAME), versions)


def files_in(version_dir: Path) -> list[str]:
    """Names directly inside a version directory (to detect the model file)."""
    try:
        return sorted(entry.name for entry in os.scandir(version_dir))
    except OSError:
        return []


# --------------------------------------------------------------------------------------------
# From a model directory to a completed, validated definition
# --------------------------------------------------------------------------------------------


@dataclass
class ModelDefinition:
    """A model directory resolved: completed and validated config, backend, versions to serve."""

    name: str
    model_dir: Path
    config: ModelConfig
    backend_name: str
    source: str  # the config file (or "load request config") named in errors
    versions: list[int]  # selected by version_policy, ascending
    missing: dict[int, str]  # specific versions named by the policy with no directory -> reason

    def version_dir(self, version: int) -> Path:
        return self.model_dir / str(version)

    def model_file(self, version: int) -> Path:
        from shipyard.serving_runtime.backends.registry import default_filename

        filename = self.config.default_model_filename or default_filename(self.backend_name)
        return self.version_dir(version) / filename


def _gpu_usable(backend: object) -> bool:
    """Whether KIND_AUTO should put this backend's instances on a GPU that is present."""
    if not getattr(backend, "supports_gpu", True):
        return False
    check = getattr(backend, "gpu_usable", None)
    return bool(check()) if callable(check) else True


def prepare_model(location: ModelLocation, gpu_count: int, override: ModelConfig | None = None) -> ModelDefinition:
    """Read (or take) the config, pick the backend, select versions, complete and validate.

    ``override`` replaces ``config.pbtxt`` (the repository API's load with a config). Blocking:
    may open the newest version's model file to complete the config; run it off the event loop.

    Raises: ModelConfigError (bad config, unknown platform, no versions, config/file mismatch)
    and ModelLoadError (the newest model file cannot be read while completing the config).
    """
    from shipyard.serving_runtime.backends.registry import get_backend, resolve_backend_name
    from shipyard.serving_runtime.config import load_config, new_config, validate_config
    from shipyard.serving_runtime.config_model import check_against_model, complete_config

    model_dir = location.path
    config_path = model_dir / CONFIG_FILENAME
    if override is not None:
        config, source = override, f"load request config for model {location.name!r}"
    elif config_path.is_file():
        config, source = load_config(config_path), str(config_path)
    else:
        config, source = new_config(), f"{model_dir} (no {CONFIG_FILENAME}; completing from the model file)"
    if config.name and config.name != location.name:
        raise ModelConfigError(
            f"{source}: name {config.name!r} does not match the model directory {location.name!r}; "
            "fix name or rename the directory"
        )
    available = version_dirs(model_dir)
    policy = config.version_policy if config.HasField("version_policy") else None
    selected, missing = select_versions(policy, available)
    if not available:
        raise ModelConfigError(
            f"{model_dir}: no version directories; put the model file in a numeric directory, e.g. {model_dir}/1/"
        )
    if not selected:
        raise ModelConfigError(f"{source}: version_policy selects no version; versions on disk: {sorted(available)}")
    reasons = {v: f"version {v} is named by version_policy but {model_dir / str(v)} does not exist" for v in missing}
    if config.platform == "ensemble":
        from shipyard.serving_runtime.ensemble import prepare_ensemble

        return prepare_ensemble(location, config, source, selected, reasons)
    newest = selected[-1]
    backend_name = resolve_backend_name(
        config.platform,
        config.backend,
        config.default_model_filename,
        files_in(available[newest]),
        source=source,
    )
    backend = get_backend(backend_name)
    filename = config.default_model_filename or backend.default_filename
    auto_complete = getattr(backend, "auto_complete", None)  # the Python backend's auto_complete_config
    if auto_complete is not None and (available[newest] / filename).is_file():
        config = auto_complete(config, available[newest] / filename, location.name, source)
    signature = None
    needs_signature = not config.input or not config.output or config.max_batch_size == 0
    if needs_signature:
        newest_file = available[newest] / filename
        if not newest_file.is_file():
            raise ModelLoadError(
                f"{newest_file}: model file not found; config completion needs it "
                f"(put {filename} there or set default_model_filename)"
            )
        signature = backend.inspect(newest_file)
        if not signature.inputs and not signature.outputs and (not config.input or not config.output):
            raise ModelConfigError(
                f"{source}: {backend_name} model files do not declare their inputs and outputs; "
                "list them (name, data_type, dims) in config.pbtxt"
            )
    completed = complete_config(
        config,
        name=location.name,
        backend_name=backend_name,
        signature=signature,
        gpu_count=gpu_count,
        supports_gpu=gpu_count > 0 and _gpu_usable(backend),
    )
    validate_config(completed, name=location.name, source=source)
    if signature is not None:
        check_against_model(completed, signature, source=source, model_path=available[newest] / filename)
    return ModelDefinition(location.name, model_dir, completed, backend_name, source, selected, reasons)
