"""Python models on the native gRPC fast path (``protocol/native_fast_python.py``).

Real servers on loopback, real tritonclient, one real Python model (``python_fast_repo/py_each``):
a server with the fast path (the default with the native frontend) and one without
(``--no-grpc-fast-path``) must give byte-identical responses and identical errors, whatever the
model answers (outputs, its own error, response parameters, another dtype, rows that do not
match); concurrent requests still reach ``execute`` one ``InferenceRequest`` per client request,
each with its own rows and id; statistics count each request; ``is_cancelled()`` follows the client.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_harness import ServerProcess, grpc_answer, start_server
from tritonclient.utils import InferenceServerException

REPO = Path(__file__).parent / "python_fast_repo"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """(fast path on, fast path off) over the same repository."""
    from shipyard.serving_runtime.protocol import native_grpc

    if (reason := native_grpc.unavailable_reason()) is not None:
        pytest.skip(reason)
    from shipyard.serving_runtime.protocol import native_fast_python

    if not native_fast_python.supported():
        pytest.skip("the native gRPC module predates FastBatch.answer_each; rebuild it with `make native`")
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO, repo, dirs_exist_ok=True)
    _SERVED["repo"] = repo
    started: list[ServerProcess] = []
    previous = os.environ.get(native_fast_python.PYTHON_MODELS_ENV)
    os.environ[native_fast_python.PYTHON_MODELS_ENV] = "1"  # off by default; the servers inherit it
    try:
        for flags in ((), ("--no-grpc-fast-path",)):
            server = start_server(
                tmp_path_factory.mktemp("pyfast"),
                [repo],
                "--grpc-frontend",
                "native",
                *flags,
                wait_models=("py_each", "ens_each"),
            )
            started.append(server)
        yield started[0], started[1]
    finally:
        if previous is None:
            os.environ.pop(native_fast_python.PYTHON_MODELS_ENV, None)
        else:
            os.environ[native_fast_python.PYTHON_MODELS_ENV] = previous
        for server in started:
            server.stop()


_SERVED: dict[str, Path] = {}  # "repo": the repository both servers serve (the fixture's copy)


def _release(request_id: str) -> None:
    """Ends the wait of the request ``request_id`` that ``py_each`` holds in ``execute`` (mode -6)."""
    (_SERVED["repo"] / "py_each" / "1" / f"{request_id}.release").touch()


def _x(rows: int, first: float, seed: float = 0.0, name: str = "X") -> list[Any]:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + seed
    x[0, 0] = first
    tensor = grpcclient.InferInput(name, [rows, 4], "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def _infer(server: ServerProcess, model: str = "py_each", **kwargs: Any) -> bytes | tuple[str, str]:
    """The serialized response, or (status, message) of the error."""
    return grpc_answer(server, model, **kwargs)


def _registered(fast: ServerProcess, model: str = "py_each") -> None:
    _infer(fast, model, inputs=_x(1, 0.0, name="IN" if model == "ens_each" else "X"))
    line = f"model '{model}' version (default): gRPC ModelInfer takes the native fast path"
    fast.wait_until(lambda: line in fast.log(), 10, "the fast path registration")  # logged after the answer


CASES: list[dict[str, Any]] = [
    {"inputs": _x(1, 0.0)},
    {"inputs": _x(3, 5.0), "request_id": "id-3"},
    {"inputs": _x(2, 1.0), "outputs": [grpcclient.InferRequestedOutput("N")]},
    {"inputs": _x(2, -1.0), "request_id": "bad"},  # the model's own error
    {"inputs": _x(2, -3.0)},  # Y as FP64
    {"inputs": _x(2, -4.0), "request_id": "p"},  # response parameters
    {"inputs": _x(2, -5.0)},  # more rows than the request's
    {"inputs": _x(1, 2.0), "outputs": [grpcclient.InferRequestedOutput("N"), grpcclient.InferRequestedOutput("Y")]},
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_answers_as_the_python_path(servers: tuple[ServerProcess, ServerProcess], case: int) -> None:
    fast, slow = servers
    _registered(fast)
    got, want = _infer(fast, **CASES[case]), _infer(slow, **CASES[case])
    assert got == want


def _one(server: ServerProcess, i: int) -> tuple[int, Any]:
    """Request ``i``: rows 1..3, every fifth the model's error, every seventh with parameters."""
    rows = 1 + i % 3
    first = -1.0 if i % 5 == 0 else (-4.0 if i % 7 == 0 else float(i))
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        result = client.infer("py_each", _x(rows, first, seed=i), request_id=f"r{i}")
    except InferenceServerException as exc:
        return i, (str(exc.status()), str(exc.message()))
    finally:
        client.close()
    return i, (result.get_response().id, result.as_numpy("Y"), result.as_numpy("N"), result.get_response().parameters)


def _executes(server: ServerProcess) -> list[int]:
    return [int(n) for n in re.findall(r"execute of (\d+) requests", server.log())]


def test_concurrent_requests_reach_execute_one_by_one_with_their_own_answers(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    fast, _ = servers
    _registered(fast)
    client = grpcclient.InferenceServerClient(fast.grpc_host)
    before = client.get_inference_statistics("py_each", as_json=True)["model_stats"][0]
    # the model's log lines reach the server's log through another thread: every execution so far
    # logged before counting (else the registration's line, late on a loaded machine, counts here)
    fast.wait_until(
        lambda: len(_executes(fast)) >= int(before["execution_count"]), 10, "the execute log lines so far"
    )
    executes_before = len(_executes(fast))
    count = 240
    with ThreadPoolExecutor(24) as pool:
        answers = dict(pool.map(lambda i: _one(fast, i), range(count)))
    for i, answer in answers.items():
        rows = 1 + i % 3
        if i % 5 == 0:
            assert answer == ("StatusCode.INTERNAL", f"request 'r{i}' failed"), i
            continue
        request_id, y, n, parameters = answer
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + i
        x[0, 0] = -4.0 if i % 7 == 0 else float(i)
        assert request_id == f"r{i}"
        np.testing.assert_array_equal(y, x + 1)
        np.testing.assert_array_equal(n, np.full((rows, 1), rows, np.int32))
        assert (parameters["rows"].int64_param == rows) if i % 7 == 0 else not parameters
    after = client.get_inference_statistics("py_each", as_json=True)["model_stats"][0]
    client.close()
    # the model's own errors count as successes, as Triton counts them (tests/conformance)
    done = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    assert done == count
    rows_total = sum(1 + i % 3 for i in range(count))
    assert int(after["inference_count"]) - int(before["inference_count"]) == rows_total
    fast.wait_until(lambda: sum(_executes(fast)[executes_before:]) >= count, 10, "the execute log lines")
    executes = _executes(fast)[executes_before:]
    assert sum(executes) == count  # one InferenceRequest per client request, however they were grouped
    assert int(after["execution_count"]) - int(before["execution_count"]) == len(executes)


def test_model_sees_the_client_cancel_a_fast_path_call(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, _ = servers
    _registered(fast)
    client = grpcclient.InferenceServerClient(fast.grpc_host)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("py_each", _x(1, -2.0), request_id="cancel-me", client_timeout=0.3)
    client.close()
    assert "DEADLINE_EXCEEDED" in str(raised.value.status())
    fast.wait_until(lambda: "request cancel-me saw is_cancelled()" in fast.log(), 10, "the model to see is_cancelled()")


ENSEMBLE_CASES: list[dict[str, Any]] = [
    {"inputs": _x(2, 0.0, name="IN"), "request_id": "e1"},
    {"inputs": _x(1, 3.0, name="IN"), "outputs": [grpcclient.InferRequestedOutput("ROWS")]},
    {"inputs": _x(2, -1.0, name="IN"), "request_id": "bad"},  # the step's error, "in ensemble ..."
    {"inputs": _x(2, -4.0, name="IN")},
]


@pytest.mark.parametrize("case", range(len(ENSEMBLE_CASES)))
def test_an_ensemble_answers_as_on_the_python_path(servers: tuple[ServerProcess, ServerProcess], case: int) -> None:
    fast, slow = servers
    _registered(fast, "ens_each")
    got, want = _infer(fast, "ens_each", **ENSEMBLE_CASES[case]), _infer(slow, "ens_each", **ENSEMBLE_CASES[case])
    assert got == want


def test_an_ensembles_concurrent_requests_are_each_run_and_counted(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    fast, _ = servers
    _registered(fast, "ens_each")
    client = grpcclient.InferenceServerClient(fast.grpc_host)
    before = client.get_inference_statistics("ens_each", as_json=True)["model_stats"][0]

    def one(i: int) -> tuple[int, Any]:
        rows = 1 + i % 3
        first = -1.0 if i % 5 == 0 else float(i)
        own = grpcclient.InferenceServerClient(fast.grpc_host)
        try:
            result = own.infer("ens_each", _x(rows, first, seed=i, name="IN"), request_id=f"e{i}")
        except InferenceServerException as exc:
            return i, str(exc.message())
        finally:
            own.close()
        return i, (result.get_response().id, result.as_numpy("OUT"), result.as_numpy("ROWS"))

    with ThreadPoolExecutor(24) as pool:
        answers = dict(pool.map(one, range(120)))
    for i, answer in answers.items():
        rows = 1 + i % 3
        if i % 5 == 0:
            assert answer == f"in ensemble 'ens_each', request 'e{i}' failed", i
            continue
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + i
        x[0, 0] = float(i)
        assert answer[0] == f"e{i}"
        np.testing.assert_array_equal(answer[1], x + 1)
        np.testing.assert_array_equal(answer[2], np.full((rows, 1), rows, np.int32))
    after = client.get_inference_statistics("ens_each", as_json=True)["model_stats"][0]
    client.close()
    counted = {
        kind: int(after["inference_stats"][kind]["count"]) - int(before["inference_stats"][kind]["count"])
        for kind in ("success", "fail")
    }
    assert counted == {"success": 96, "fail": 24}  # each request on its own, as on the Python path


@pytest.mark.parametrize("stay_first", [2.0, -4.0], ids=["joined", "answered-each"])
def test_requests_whose_clients_leave_a_queued_group_never_reach_execute(
    servers: tuple[ServerProcess, ServerProcess], stay_first: float
) -> None:
    """Behind a busy instance (a request held in ``execute`` until every client that leaves has left),
    requests whose deadline passes while they wait leave their group: ``execute`` never sees them, they
    count as CANCELED, and the requests that stayed get the Python path's bytes (joined outputs, or each
    answered on its own when one returns response parameters), with the same counts as the Python path.
    (A blocker of a fixed 1.5 s let a request that a starved machine sent or cancelled late miss it: flaky.)"""
    fast, _ = servers
    _registered(fast)
    got = []
    for number, server in enumerate(servers):
        client = grpcclient.InferenceServerClient(server.grpc_host)
        before = client.get_inference_statistics("py_each", "1", as_json=True)["model_stats"][0]["inference_stats"]
        executes_before = len(_executes(server))
        blocker_id = f"blocker-{stay_first}-{number}"

        def counted(client: Any = client, before: Any = before) -> dict[str, int]:
            after = client.get_inference_statistics("py_each", "1", as_json=True)["model_stats"][0]["inference_stats"]
            return {
                w: int(after.get(w, {}).get("count", 0)) - int(before.get(w, {}).get("count", 0))
                for w in ("success", "fail")
            }

        with ThreadPoolExecutor(12) as pool:
            blocker = pool.submit(_infer, server, inputs=_x(1, -6.0), request_id=blocker_id, client_timeout=30)
            server.wait_until(  # (a fixed sleep let a blocker delayed on a loaded machine group with the others)
                lambda s=server, n=executes_before: len(_executes(s)) > n, 10, "the blocker in execute"
            )
            jobs = [(f"left{i}", 0.6) for i in range(4)] + [(f"stay{i}", 30.0) for i in range(4)]
            futures = {
                tag: pool.submit(_infer, server, inputs=_x(2, stay_first if tag == "stay0" else 5.0, i), request_id=tag,
                                 client_timeout=timeout)
                for i, (tag, timeout) in enumerate(jobs)
            }  # fmt: skip
            # the blocker holds the instance until the server has counted every leaving request (CANCELED)
            server.wait_until(lambda: counted()["fail"] >= 4, 10, "the four leaving requests counted")
            _release(blocker_id)
            answers = {tag: future.result() for tag, future in futures.items()}
            assert isinstance(blocker.result(), bytes)

        server.wait_until(lambda: sum(counted().values()) >= 9, 10, "the statistics of all nine requests")
        counts = counted()
        client.close()
        server.wait_until(lambda s=server, n=executes_before: sum(_executes(s)[n:]) >= 5, 10, "the execute log lines")
        time.sleep(0.2)
        got.append((answers, counts, sum(_executes(server)[executes_before:])))
    for answers, counts, executed in got:
        assert all(answers[f"left{i}"] == ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded") for i in range(4))
        assert all(isinstance(answers[f"stay{i}"], bytes) for i in range(4))
        assert counts == {"success": 5, "fail": 4}
        assert executed == 5  # execute saw the blocker and the four that stayed, never the others
    assert got[0] == got[1]
