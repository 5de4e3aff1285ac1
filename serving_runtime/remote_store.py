"""Model repositories in object storage: opening a store and reading one listing of it.

A repository URI is ``s3://bucket/prefix``, ``gs://bucket/prefix`` (also ``gcs://``) or
``az://container/prefix`` / ``abfs[s]://container/prefix`` (also ``abfs://container@account.dfs.core.windows.net/prefix``).
Each scheme is read through fsspec with its cloud's filesystem (s3fs, gcsfs, adlfs: the runtime's
extras ``s3``, ``gcs`` and ``azure``), which take credentials from the cloud's standard sources:

- S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and ``~/.aws/*``, IRSA
  (``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``), instance metadata; ``AWS_ENDPOINT_URL``
  (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible stores (MinIO, Ceph, moto).
- GCS: ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's application default credentials, GKE workload
  identity (metadata server); ``STORAGE_EMULATOR_HOST`` for an emulator.
- Azure: ``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_NAME`` with
  ``AZURE_STORAGE_ACCOUNT_KEY`` / ``AZURE_STORAGE_SAS_TOKEN`` / a service principal
  (``AZURE_STORAGE_CLIENT_ID``...), else ``DefaultAzureCredential`` (workload identity, managed identity).

One listing (a recursive, paginated list of every object under the prefix) tells what the store
holds; ``parse_listing`` turns it into models and versions, keeping only versions that carry the
completion marker (``COMPLETE_MARKER``, written last by ``components/publish``), so a version being
uploaded, or whose publisher died, is never seen.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shipyard.serving_runtime.errors import ModelConfigError

COMPLETE_MARKER = ".shipyard-complete"

# scheme -> (python module of its fsspec filesystem, the shipyard extra that installs it)
SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
}

# listing keys that identify an object's content, most specific first (GCS generation, S3/Azure ETag)
_TOKEN_KEYS = ("generation", "ETag", "etag", "md5Hash", "LastModified", "last_modified", "mtime")


def scheme_of(uri: str) -> str:
    """The lower-cased scheme of ``uri`` ('' for a local path)."""
    head, sep, _ = str(uri).partition("://")
    return head.lower() if sep else ""


def is_remote(uri: object) -> bool:
    """Whether ``uri`` names a repository in object storage (s3://, gs://, az://, abfs://...)."""
    return scheme_of(str(uri)) in SCHEMES


def check_support(uri: str) -> None:
    """Raise unless ``uri``'s scheme is known and its filesystem package is installed.

    Raises: ModelConfigError, one line naming the missing extra (``pip install 'shipyard[s3]'``)
    or the schemes that are supported.
    """
    scheme = scheme_of(uri)
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ModelConfigError(f"model repository {uri!r}: unknown scheme {scheme!r}; use a local path or {known}")
    module, extra = SCHEMES[scheme]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ModelConfigError(
            f"model repository {uri!r} needs the {extra!r} extra ({module} is not installed): "
            f"pip install 'shipyard[{extra}]'"
        ) from None
    bucket = str(uri).split("://", 1)[1].strip("/")
    if not bucket:
        raise ModelConfigError(f"model repository {uri!r} names no bucket or container; use {scheme}://BUCKET/PREFIX")


def open_store(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, root path without scheme or trailing '/') for a remote repository.

    The filesystem keeps no listing cache, so every listing asks the store.
    Raises: ModelConfigError (unknown scheme, missing extra, the filesystem cannot be created).
    """
    check_support(uri)
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(str(uri), skip_instance_cache=True, use_listings_cache=False)
    except Exception as exc:  # credentials or endpoint problems surface here for some stores
        raise ModelConfigError(f"cannot open model repository {uri}: {type(exc).__name__}: {exc}") from None
    return fs, str(root).rstrip("/")


@dataclass(frozen=True)
class RemoteObject:
    """One object of the listing: its path in the store, size and content token (ETag/generation)."""

    path: str
    size: int
    token: str


@dataclass
class RemoteVersion:
    """A complete version: its objects by path relative to the version directory."""

    files: dict[str, RemoteObject] = field(default_factory=dict)

    def token(self) -> str:
        """Changes whenever any object of the version changes, is added or is removed."""
        digest = hashlib.sha256()
        for rel, obj in sorted(self.files.items()):
            digest.update(f"{rel}\0{obj.size}\0{obj.token}\n".encode())
        return digest.hexdigest()

    @property
    def size(self) -> int:
        return sum(obj.size for obj in self.files.values())


@dataclass
class RemoteModel:
    """A model directory in the store: model-level files (config.pbtxt...), complete versions, and
    the numeric versions present without the completion marker."""

    name: str
    files: dict[str, RemoteObject] = field(default_factory=dict)
    versions: dict[int, RemoteVersion] = field(default_factory=dict)
    incomplete: set[int] = field(default_factory=set)


def object_token(info: Mapping[str, Any]) -> str:
    """The content token of one listed object (generation or ETag; else modification time)."""
    for key in _TOKEN_KEYS:
        value = info.get(key)
        if value not in (None, ""):
            return f"{key}={str(value).strip(chr(34))}"
    return ""


def _plain(name: str) -> bool:
    return bool(name) and not name.startswith(".") and name not in ("..",)


def parse_listing(listing: Mapping[str, Mapping[str, Any]], root: str) -> dict[str, RemoteModel]:
    """Models in a recursive listing ``{path: info}`` of ``root`` (as ``fs.find(root, detail=True)`` returns).

    Hidden model names and non-numeric subdirectories are skipped (as in a local repository);
    a numeric version is complete only when ``<model>/<version>/.shipyard-complete`` is listed.
    Models with no complete version are left out (a first publish still in progress).
    """
    prefix = root.rstrip("/") + "/"
    found: dict[str, RemoteModel] = {}
    pending: dict[tuple[str, int], RemoteVersion] = {}
    for path, info in listing.items():
        if info.get("type", "file") != "file" or not path.startswith(prefix) or path.endswith("/"):
            continue
        parts = path[len(prefix) :].split("/")
        if len(parts) < 2 or not _plain(parts[0]) or any(not p for p in parts):
            continue
        model = found.setdefault(parts[0], RemoteModel(parts[0]))
        obj = RemoteObject(path, int(info.get("size") or 0), object_token(info))
        if len(parts) == 2:
            if _plain(parts[1]):
                model.files[parts[1]] = obj
        elif parts[1].isascii() and parts[1].isdigit():
            pending.setdefault((parts[0], int(parts[1])), RemoteVersion()).files["/".join(parts[2:])] = obj
    for (name, number), version in pending.items():
        if COMPLETE_MARKER in version.files:
            found[name].versions[number] = version
        else:
            found[name].incomplete.add(number)
    return {name: model for name, model in sorted(found.items()) if model.versions}
