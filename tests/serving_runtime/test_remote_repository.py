"""The object-store mirror (serving_runtime/remote.py) against moto in server mode: one listing per
sync, downloads only of what changed (also after a restart), never a half-downloaded version."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from object_stores import Store, count_requests, start_s3

from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.remote import RemoteRepository, RepositoryMirrors
from shipyard.serving_runtime.remote_store import COMPLETE_MARKER, check_support, parse_listing
from shipyard.serving_runtime.repository import scan_repositories, version_dirs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = start_s3(tmp_path_factory.mktemp("moto"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in store.env.items():
            patch.setenv(key, value)
        yield store
    store.stop()


_buckets = iter(range(10_000))


@pytest.fixture
def bucket(s3: Store) -> str:
    name = f"repo-{next(_buckets)}"
    s3.make_bucket(name)
    return name


def put_version(fs: Any, root: str, model: str, version: int, payload: bytes, complete: bool = True) -> None:
    fs.pipe_file(f"{root}/{model}/{version}/model.onnx", payload)
    if complete:
        fs.pipe_file(f"{root}/{model}/{version}/{COMPLETE_MARKER}", b"")


def put_model(fs: Any, root: str, model: str, versions: dict[int, bytes]) -> None:
    fs.pipe_file(f"{root}/{model}/config.pbtxt", f'name: "{model}"\n'.encode())
    for version, payload in versions.items():
        put_version(fs, root, model, version, payload)


# ---------------------------------------------------------------- pure parts


def test_parse_listing_keeps_complete_versions_of_plain_models() -> None:
    def obj(size: int = 1, etag: str = "e") -> dict[str, Any]:
        return {"type": "file", "size": size, "ETag": f'"{etag}"'}

    listing = {
        "b/r/m/config.pbtxt": obj(),
        "b/r/m/1/model.onnx": obj(5),
        f"b/r/m/1/{COMPLETE_MARKER}": obj(0),
        "b/r/m/2/model.onnx": obj(5),  # no marker: a publish in progress
        "b/r/m/extra/readme.txt": obj(),  # not numeric: ignored
        "b/r/.publish-x/1/model.onnx": obj(),  # hidden model: ignored
        "b/r/half/config.pbtxt": obj(),  # no complete version: not a model yet
        "b/r/half/1/model.onnx": obj(),
        "b/r/m/1/": obj(0),  # a directory placeholder object
    }
    models = parse_listing(listing, "b/r")
    assert list(models) == ["m"]
    model = models["m"]
    assert sorted(model.versions) == [1] and model.incomplete == {2}
    assert set(model.versions[1].files) == {"model.onnx", COMPLETE_MARKER}
    assert set(model.files) == {"config.pbtxt"}
    changed = parse_listing({**listing, "b/r/m/1/model.onnx": obj(5, "other")}, "b/r")
    assert changed["m"].versions[1].token() != model.versions[1].token()


def test_unknown_scheme_and_missing_extra_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelConfigError, match="unknown scheme 'ftp'"):
        check_support("ftp://host/repo")
    with pytest.raises(ModelConfigError, match="names no bucket"):
        check_support("s3://")
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if the gcs extra were not installed
    with pytest.raises(ModelConfigError) as info:
        RepositoryMirrors(["gs://bucket/models"])
    assert "pip install 'shipyard[gcs]'" in info.value.message and "\n" not in info.value.message


# ---------------------------------------------------------------- against moto


def test_sync_mirrors_complete_versions_and_skips_incomplete(s3: Store, bucket: str, tmp_path: Path) -> None:
    fs: Any = s3.fs()
    root = f"{bucket}/repo"
    put_model(fs, root, "a", {1: b"one", 2: b"two"})
    put_version(fs, root, "a", 3, b"three", complete=False)
    remote = RemoteRepository(f"s3://{root}", tmp_path / "cache")
    report = remote.sync()
    assert report.listings == 1 and report.errors == []
    assert sorted(version_dirs(remote.local / "a")) == [1, 2]
    assert (remote.local / "a" / "2" / "model.onnx").read_bytes() == b"two"
    assert scan_repositories([remote.local]).names() == {"a"}
    # the version's marker arrives: it appears whole
    fs.pipe_file(f"{root}/a/3/{COMPLETE_MARKER}", b"")
    report = remote.sync()
    assert report.updated == ["a/3"] and (remote.local / "a" / "3" / "model.onnx").read_bytes() == b"three"


def test_unchanged_poll_of_50_models_lists_once_and_downloads_nothing(s3: Store, bucket: str, tmp_path: Path) -> None:
    fs: Any = s3.fs()
    root = f"{bucket}/repo"
    for index in range(50):
        put_model(fs, root, f"model{index:02d}", {1: b"x" * 100})
    remote = RemoteRepository(f"s3://{root}", tmp_path / "cache")
    first = remote.sync()
    assert first.objects_downloaded == 150 and len(first.updated) == 100

    def listings(line: str) -> bool:
        return f"GET /{bucket}?list-type=2" in line

    def object_gets(line: str) -> bool:
        return f'"GET /{bucket}/' in line

    before = (count_requests(s3, listings), count_requests(s3, object_gets))
    second = remote.sync()
    after = (count_requests(s3, listings), count_requests(s3, object_gets))
    assert second.bytes_downloaded == 0 and second.updated == [] and second.removed == []
    assert after[0] - before[0] == 1, "one listing request per poll (moto's request log)"
    assert after[1] == before[1], "no object was fetched"
    # a restart (a new mirror on the same cache directory) downloads nothing either
    restarted = RemoteRepository(f"s3://{root}", tmp_path / "cache").sync()
    assert restarted.bytes_downloaded == 0 and restarted.updated == []


def test_only_what_changed_is_downloaded_and_removals_follow(s3: Store, bucket: str, tmp_path: Path) -> None:
    fs: Any = s3.fs()
    root = f"{bucket}/repo"
    put_model(fs, root, "a", {1: b"one", 2: b"two"})
    put_model(fs, root, "b", {1: b"bee"})
    remote = RemoteRepository(f"s3://{root}", tmp_path / "cache")
    remote.sync()
    untouched = (remote.local / "a" / "1" / "model.onnx").stat().st_mtime_ns
    fs.pipe_file(f"{root}/a/2/model.onnx", b"two, rebuilt")
    report = remote.sync()
    assert report.updated == ["a/2"] and report.bytes_downloaded == len(b"two, rebuilt")
    assert (remote.local / "a" / "2" / "model.onnx").read_bytes() == b"two, rebuilt"
    assert (remote.local / "a" / "1" / "model.onnx").stat().st_mtime_ns == untouched
    fs.rm(f"{root}/a/1", recursive=True)
    fs.rm(f"{root}/b", recursive=True)
    report = remote.sync()
    assert sorted(report.removed) == ["a/1", "b"]
    assert sorted(p.name for p in remote.local.iterdir()) == ["a"]


def test_a_failed_download_never_shows_a_version(
    s3: Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs: Any = s3.fs()
    root = f"{bucket}/repo"
    put_model(fs, root, "a", {1: b"one"})
    remote = RemoteRepository(f"s3://{root}", tmp_path / "cache")
    remote.sync()
    fs.pipe_file(f"{root}/a/2/weights.bin", b"w" * 1000)
    put_version(fs, root, "a", 2, b"two")
    real_get = remote.fs.get_file

    def dies_midway(rpath: str, lpath: str, **kwargs: Any) -> None:
        if rpath.endswith("weights.bin"):
            Path(lpath).write_bytes(b"w" * 10)  # half a file, then the connection drops
            raise ConnectionError("connection reset by peer")
        real_get(rpath, lpath, **kwargs)

    monkeypatch.setattr(remote.fs, "get_file", dies_midway)
    report = remote.sync()
    assert report.errors and "weights.bin" in report.errors[0]
    assert sorted(version_dirs(remote.local / "a")) == [1], "the half-downloaded version is not there"
    monkeypatch.setattr(remote.fs, "get_file", real_get)
    report = remote.sync()
    assert report.updated == ["a/2"]
    assert (remote.local / "a" / "2" / "weights.bin").stat().st_size == 1000
    assert not [p for p in (remote.local / "a").iterdir() if p.name.startswith((".sync-", ".old-"))]


async def test_mirrors_raise_at_start_and_log_later(
    s3: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirrors = RepositoryMirrors([f"s3://no-such-bucket-{next(_buckets)}/repo", tmp_path], tmp_path / "cache")
    assert mirrors.local_paths[1] == tmp_path
    with pytest.raises(ModelConfigError, match="cannot list model repository s3://no-such-bucket"):
        await mirrors.refresh(initial=True)
    await mirrors.refresh()
    assert "repository sync failed, serving the cached models" in caplog.text


def test_credentials_and_endpoint_from_aws_profile_files(
    s3: Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No AWS_* variables: the profile files under $HOME give the keys and the endpoint (botocore's chain)."""
    fs: Any = s3.fs()
    put_model(fs, f"{bucket}/repo", "a", {1: b"one"})
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("[ci]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    endpoint = s3.env["AWS_ENDPOINT_URL"]
    (home / ".aws" / "config").write_text(f"[profile ci]\nregion = us-east-1\nendpoint_url = {endpoint}\n")
    for key in s3.env:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_PROFILE", "ci")
    remote = RemoteRepository(f"s3://{bucket}/repo", tmp_path / "cache")
    assert remote.sync().updated == ["a/config.pbtxt", "a/1"]
    monkeypatch.setenv("AWS_PROFILE", "missing")
    with pytest.raises(ModelConfigError, match=r"cannot (open|list) model repository"):
        RemoteRepository(f"s3://{bucket}/repo", tmp_path / "cache2").sync()


def test_command_line_takes_store_uris_and_refuses_unknown_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.serving_runtime.cli import parse_options

    options = parse_options(["--model-repository", "s3://bucket/models/", "--model-repository", str(tmp_path),
                             "--model-cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert options.repositories == ["s3://bucket/models", tmp_path]
    assert options.model_cache_dir == tmp_path / "cache"
    with pytest.raises(SystemExit) as exc:
        parse_options(["--model-repository", "ftp://host/models"])
    assert exc.value.code == 2
    assert "unknown scheme 'ftp'; use a local path or s3://" in capsys.readouterr().err
