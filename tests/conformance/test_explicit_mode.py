"""The repository API in explicit model-control mode, against the real Triton: the same sequence
of load/unload/index calls (ensembles included) to both servers, compared step by step."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conformance_repo import add_python_behaviours, build_repository, python_backend_available
from conformance_servers import Served, require_triton, start_shipyard

from benchmarks.servers.triton import start_triton

pytestmark = pytest.mark.skipif(not python_backend_available(), reason="needs shipyard's Python backend")


@pytest.fixture(scope="module")
def explicit_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    require_triton()
    root = tmp_path_factory.mktemp("explicit")
    repo = add_python_behaviours(build_repository(root / "repo", python=True))
    triton = start_triton([repo], root / "tritonserver.log", ["--model-control-mode=explicit"])
    try:
        shipyard = start_shipyard(repo, root / "shipyard.log", "--model-control-mode", "explicit")
    except BaseException:
        triton.stop()
        raise
    try:
        yield Served("triton", triton.http_port, triton.grpc_port, repo, triton.process), shipyard
    finally:
        shipyard.process.stop()
        triton.stop()


def _get(server: Served, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _index(server: Served, ready: bool = False) -> list[tuple[str, str, str]]:
    entries = _get(server, "/v2/repository/index", json.dumps({"ready": ready}).encode())
    return [(e["name"], e.get("version", ""), e.get("state", "")) for e in entries]


def _call(server: Served, transport: str, method: str, *args: Any, **kwargs: Any) -> str:
    """The status of one repository call through tritonclient ("OK" or the error's status)."""
    from tritonclient.utils import InferenceServerException

    if transport == "grpc":
        import tritonclient.grpc as lib

        client: Any = lib.InferenceServerClient(server.grpc_url)
    else:
        import tritonclient.http as lib  # type: ignore[no-redef]

        client = lib.InferenceServerClient(server.http_url)
    try:
        getattr(client, method)(*args, **kwargs)
        return "OK"
    except InferenceServerException as exc:
        return str(exc.status()).replace("StatusCode.", "")
    finally:
        client.close()


def _ready(server: Served, model: str) -> bool:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return bool(client.is_model_ready(model))
    finally:
        client.close()


def _settled_index(server: Served) -> list[tuple[str, str, str]]:
    """The index once no version is UNLOADING (Triton's unload returns before the model is gone)."""
    import time

    deadline = time.monotonic() + 20
    entries = _index(server)
    while any(state == "UNLOADING" for _, _, state in entries) and time.monotonic() < deadline:
        time.sleep(0.2)
        entries = _index(server)
    return entries


# step -> (Triton's answer, shipyard's, why they differ on purpose)
DELIBERATE_STEPS = {
    "load unknown (http)": ("500", "404", "an unknown model is 404 on every endpoint"),
    "load unknown (grpc)": ("INTERNAL", "NOT_FOUND", "an unknown model is NOT_FOUND on every endpoint"),
    "unload unknown (http)": ("OK", "404", "unloading a model that is in no repository is a mistake worth reporting"),
}


def test_load_unload_sequence_matches_triton(explicit_servers: tuple[Served, Served]) -> None:
    triton, shipyard = explicit_servers
    steps: list[tuple[str, Any, Any]] = []

    def both(label: str, action: Any) -> None:
        steps.append((label, action(triton), action(shipyard)))

    both("index before any load", _index)
    both("load the ensemble (http)", lambda s: _call(s, "http", "load_model", "pipeline"))
    both("composing model ready", lambda s: _ready(s, "simple"))
    both("index after", _index)
    both("ready-only index", lambda s: _index(s, ready=True))
    both("load unknown (http)", lambda s: _call(s, "http", "load_model", "nope"))
    both("load unknown (grpc)", lambda s: _call(s, "grpc", "load_model", "nope"))
    both("unload unknown (http)", lambda s: _call(s, "http", "unload_model", "nope"))
    both("load typed (grpc)", lambda s: _call(s, "grpc", "load_model", "typed"))
    both("unload typed (grpc)", lambda s: _call(s, "grpc", "unload_model", "typed"))
    both("typed ready after unload", lambda s: _ready(s, "typed"))
    both("index after unload", _settled_index)
    override = json.dumps({"backend": "python", "max_batch_size": 4, "input": [
        {"name": "CODE", "data_type": "TYPE_INT32", "dims": [1]}], "output": [
        {"name": "OUT", "data_type": "TYPE_INT32", "dims": [1]}]})  # fmt: skip
    both("load errors with a config override", lambda s: _call(s, "http", "load_model", "errors", config=override))
    both("overridden max_batch_size", lambda s: _get(s, "/v2/models/errors/config")["max_batch_size"])
    differing = [
        f"{label}: triton {t!r} | shipyard {s!r}"
        for label, t, s in steps
        if (t, s) != DELIBERATE_STEPS.get(label, (t, t))[:2]
    ]
    assert not differing, "\n".join(differing)
