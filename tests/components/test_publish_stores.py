"""Publish into real object-store emulators (moto S3, fake-gcs-server, Azurite) and serve from them.

The CLI publishes; the runtime (a real server process) reads the store itself through its cache;
concurrent publishers get distinct versions; a publisher killed midway leaves nothing the runtime
loads; a new version appears while a client runs, with no failed request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from object_stores import STARTERS, Store, azurite_binary

from shipyard.components.publish import COMPLETE_MARKER, list_versions, publish

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving_runtime"))
from server_harness import ServerProcess, http_post, start_server

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

_names = iter(range(10_000))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Store]]:
    """``stores(scheme)``: that store's emulator, started on first use (bucket ``models``), env applied."""
    running: dict[str, Store] = {}
    with pytest.MonkeyPatch.context() as patch:

        def get(scheme: str) -> Store:
            if scheme not in running:
                if scheme == "az" and azurite_binary() is None:
                    pytest.fail("azurite-blob is not installed: run `make emulators` (make test does)")
                started = STARTERS[scheme](tmp_path_factory.mktemp(f"store-{scheme}"))
                running[scheme] = started
                for key, value in started.env.items():
                    patch.setenv(key, value)
                started.make_bucket("models")
            return running[scheme]

        yield get
    for started in running.values():
        started.stop()


def _uri(store: Store) -> str:
    return store.uri("models", f"repo{next(_names)}")


def _serve(tmp_path: Path, uri: str, *extra: str, wait_models: tuple[str, ...] = ("digits",)) -> ServerProcess:
    return start_server(
        tmp_path,
        [uri],
        "--model-cache-dir",
        str(tmp_path / "cache"),
        *extra,
        wait_models=wait_models,  # type: ignore[list-item]
    )


def _infer(server: ServerProcess, x: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_host)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out = client.infer("digits", [tensor]).as_numpy("logits")
    assert out is not None
    return out


@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_cli_publish_then_serve_from_the_store(
    stores: Callable[[str], Store], scheme: str, tmp_path: Path, digits_onnx: Path, digits: Any
) -> None:
    store = stores(scheme)
    uri = _uri(store)
    cli = subprocess.run(
        [sys.executable, "-m", "shipyard", "publish", str(digits_onnx), "--repository", uri, "--name", "digits",
         "--max-batch-size", "16"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert f"published digits version 1 at {uri}/digits/1" in cli.stderr
    server = _serve(tmp_path, uri)
    try:
        x = np.asarray(digits.x_test[:8], dtype=np.float32)
        want = ort.InferenceSession(str(digits_onnx)).run(["logits"], {"input": x})[0]
        np.testing.assert_allclose(_infer(server, x), want, rtol=1e-5, atol=1e-5)
        assert f"{uri}: downloading 5 objects" in server.log()  # claim, model, record, marker + config
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_concurrent_publishers_get_distinct_whole_versions(
    stores: Callable[[str], Store], scheme: str, digits_onnx: Path
) -> None:
    store = stores(scheme)
    uri = _uri(store)
    results: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(publish(digits_onnx, uri, "digits", keep_versions=None).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(results) == [1, 2, 3, 4]
    fs: Any = store.fs()
    root = uri.split("://", 1)[1]
    for version in results:
        assert fs.cat_file(f"{root}/digits/{version}/model.onnx") == digits_onnx.read_bytes()
        assert fs.exists(f"{root}/digits/{version}/{COMPLETE_MARKER}")


_KILLED_PUBLISHER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from shipyard.components.publish import publish, repository

    real_pipe = None

    def patch(fs):
        global real_pipe
        real_pipe = fs.pipe_file
        def pipe_file(path, data, **kw):
            if path.endswith("/config.pbtxt"):  # every model file is up; the marker is next
                Path(sys.argv[3]).write_text("uploaded")
                import time; time.sleep(120)  # SIGKILLed here
            return real_pipe(path, data, **kw)
        fs.pipe_file = pipe_file

    real_fs = repository._fs
    def fs_with_patch(repo):
        fs, root, local = real_fs(repo)
        patch(fs)
        return fs, root, local
    repository._fs = fs_with_patch
    publish(sys.argv[1], sys.argv[2], "digits")
    """
)


def test_a_publisher_killed_midway_leaves_nothing_loaded(
    stores: Callable[[str], Store], tmp_path: Path, digits_onnx: Path
) -> None:
    store = stores("s3")  # the marker logic is the same on every store
    uri = _uri(store)
    publish(digits_onnx, uri, "digits")
    server = _serve(tmp_path, uri, "--model-control-mode", "poll", "--repository-poll-secs", "0.5")
    try:
        flag = tmp_path / "flag"
        child = subprocess.Popen([sys.executable, "-c", _KILLED_PUBLISHER, str(digits_onnx), uri, str(flag)])
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the publisher never uploaded"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        fs: Any = store.fs()
        root = uri.split("://", 1)[1]
        assert fs.exists(f"{root}/digits/2/model.onnx") and not fs.exists(f"{root}/digits/2/{COMPLETE_MARKER}")
        time.sleep(2.0)  # several polls
        assert not server.model_ready("digits", 2) and server.model_ready("digits", 1)
        assert "digits version 2 has no completion marker yet" in server.log()
        # the next publish takes the next number and is served
        assert publish(digits_onnx, uri, "digits").version == 3
        server.wait_until(lambda: server.model_ready("digits", 3), 30, "version 3 ready")
        assert list_versions(uri, "digits") == [1, 2, 3]
    finally:
        assert server.stop() == 0


def test_new_version_appears_within_one_poll_with_no_failed_request(
    stores: Callable[[str], Store], tmp_path: Path, digits_onnx: Path, digits: Any
) -> None:
    uri = _uri(stores("s3"))
    publish(digits_onnx, uri, "digits")
    poll_s = 1.0
    server = _serve(tmp_path, uri, "--model-control-mode", "poll", "--repository-poll-secs", str(poll_s))
    x = np.asarray(digits.x_test[:1], dtype=np.float32)
    stop = threading.Event()
    ok, failures = [0], []

    def client() -> None:
        while not stop.is_set():
            try:
                _infer(server, x)
                ok[0] += 1
            except Exception as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        published = publish(digits_onnx, uri, "digits")
        start = time.monotonic()
        server.wait_until(lambda: server.model_ready("digits", 2), 60, "version 2 ready")
        took = time.monotonic() - start
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
        code = server.stop()
    assert published.version == 2 and code == 0
    assert failures == [] and ok[0] > 10
    print(
        f"version 2 ready {took:.2f} s after its publish returned (poll every {poll_s} s); {ok[0]} requests, 0 failed"
    )
    # one poll interval plus the load (a few seconds on this shared 2-core machine)
    assert took < poll_s + 10.0


def test_explicit_mode_loads_from_the_store_on_request(
    stores: Callable[[str], Store], tmp_path: Path, digits_onnx: Path
) -> None:
    uri = _uri(stores("az"))  # explicit mode on one store; the sync is the same for all
    server = _serve(tmp_path, uri, "--model-control-mode", "explicit", wait_models=())
    try:
        publish(digits_onnx, uri, "digits")  # published after the server started
        status, _ = http_post(f"{server.http_url}/v2/repository/models/digits/load", b"")
        assert status == 200, server.log()
        assert server.model_ready("digits", 1)
    finally:
        assert server.stop() == 0
