"""The differential conformance suite: the same repository served by the real Triton 2.51 and by
shipyard; the corpus (corpus.py) is sent to both and what clients see is compared.

Compared: HTTP statuses and gRPC codes of every request, outputs bit for bit (datatype, shape,
bytes), response model name, version and id, model metadata, configs after auto-completion,
the repository index, the shape of the statistics. Error messages are not compared (each server
words its own; shipyard's name the fix). Every class where shipyard answers differently on
purpose is in ``DELIBERATE`` with its reason, and in docs/triton-compatibility.md; the test checks
that both servers still answer those classes as documented.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from typing import Any

import pytest
from conformance_repo import python_backend_available
from conformance_servers import Served
from corpus import Clients, Outcome, build_corpus

# class -> (Triton's status, shipyard's status, why shipyard differs). gRPC codes are the same as
# Triton's for every class; these are REST statuses.
DELIBERATE: dict[str, tuple[str, str, str]] = {
    "bad-json": ("500", "400", "a malformed body is the client's error: 400, not Triton's 500"),
    "json-not-object": ("500", "400", "a malformed body is the client's error: 400, not Triton's 500"),
    "inputs-not-list": ("500", "400", "a malformed body is the client's error: 400, not Triton's 500"),
    "data-count-mismatch": ("500", "400", "a malformed body is the client's error: 400, not Triton's 500"),
    "shape-not-list": ("500", "400", "a malformed body is the client's error: 400, not Triton's 500"),
    "missing-datatype": ("500", "400", "a malformed body is the client's error: 400, not Triton's 500"),
    "non-numeric-data": ("500", "400", "a malformed body is the client's error: 400, not Triton's 500"),
    "fp16-json": ("400", "200", "shipyard accepts FP16 tensors as JSON numbers; Triton refuses FP16 over JSON"),
    "ready-unknown-model": ("400", "404", "an unknown model is 404 on every endpoint (Triton: 400 on /ready)"),
    "stats-unknown-model": ("400", "404", "an unknown model is 404 on every endpoint (Triton: 400 on /stats)"),
    "load-in-none-mode": (
        "503",
        "400",
        "load/unload outside explicit mode is a request the server will never accept: 400 (Triton: 503)",
    ),
}


# A BLS call's error keeps the status of the model it reached (Triton 2.51: 500 / INTERNAL).
for _kind, _rest in (("bls-to-nope", "404"), ("bls-to-typed", "400")):
    DELIBERATE[_kind] = ("500", _rest, "a BLS call's error keeps the status of the model it reached (Triton: 500)")
# gRPC codes where shipyard differs on purpose (same reasons as above).
DELIBERATE_GRPC: dict[str, tuple[str, str]] = {
    "stats-unknown-model": ("INVALID_ARGUMENT", "NOT_FOUND"),
    "load-in-none-mode": ("UNAVAILABLE", "INVALID_ARGUMENT"),
    "bls-to-nope": ("INTERNAL", "NOT_FOUND"),
    "bls-to-typed": ("INTERNAL", "INVALID_ARGUMENT"),
}

CORPUS = build_corpus(python=python_backend_available())
MIN_CORPUS = 300


def _clients(server: Served) -> Clients:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return Clients(
        server.name,
        httpclient.InferenceServerClient(server.http_url, network_timeout=60),
        grpcclient.InferenceServerClient(server.grpc_url),
        server.http_port,
        server.grpc_url,
    )


def _get(server: Served, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def outcomes(servers: tuple[Served, Served]) -> dict[str, tuple[Outcome, Outcome]]:
    """Every corpus case's outcome on (triton, shipyard), run once per module."""
    triton, shipyard = (_clients(s) for s in servers)
    try:
        return {case.id: (case.run(triton), case.run(shipyard)) for case in CORPUS}
    finally:
        for clients in (triton, shipyard):
            clients.http.close()
            clients.grpc.close()


def _expected_pair(case_id: str, kind: str) -> tuple[str, str] | None:
    grpc = case_id.startswith("grpc/") or "/grpc/" in case_id
    if grpc:
        return DELIBERATE_GRPC.get(kind)
    entry = DELIBERATE.get(kind)
    return (entry[0], entry[1]) if entry else None


def _without_platform(outcome: Outcome) -> Outcome:
    """Metadata without ``platform`` (python vs onnxruntime_onnx while shipyard serves the ONNX twins)."""
    body = outcome.body
    if isinstance(body, dict) and "platform" in body and body.get("platform") != "ensemble":
        return Outcome(outcome.status, {k: v for k, v in body.items() if k != "platform"})
    return outcome


def test_corpus_answers_match_triton(outcomes: dict[str, tuple[Outcome, Outcome]]) -> None:
    """Same status and same outputs for every request, except the documented classes."""
    kinds = Counter(case.kind for case in CORPUS)
    print(f"\nconformance corpus: {len(CORPUS)} requests to each server ({len(kinds)} classes: {dict(kinds)})")
    assert len(CORPUS) >= MIN_CORPUS
    mismatches = []
    for case in CORPUS:
        triton, shipyard = outcomes[case.id]
        expected = _expected_pair(case.id, case.kind)
        if expected is not None:
            if (triton.status, shipyard.status) != expected:
                mismatches.append(
                    f"{case.id} [{case.kind}, deliberate {expected}]: "
                    f"triton {triton.brief()} | shipyard {shipyard.brief()}"
                )
            continue
        if not python_backend_available():
            triton, shipyard = _without_platform(triton), _without_platform(shipyard)
        if triton != shipyard:
            mismatches.append(f"{case.id} [{case.kind}]: triton {triton.brief()} | shipyard {shipyard.brief()}")
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} differ:\n" + "\n".join(mismatches)


def test_every_error_class_is_an_error_on_both(outcomes: dict[str, tuple[Outcome, Outcome]]) -> None:
    """The corpus really exercises the bad-input classes: each is refused by both servers."""
    for case in CORPUS:
        if case.kind in ("valid", "fp16-json"):
            continue
        triton, shipyard = outcomes[case.id]
        assert triton.status not in ("200", "OK") and shipyard.status not in ("200", "OK"), case.id


def _normalize_config(config: dict[str, Any], same_backend: bool) -> dict[str, Any]:
    config = dict(config)
    if "ensemble_scheduling" in config:
        # max_inflight_requests: a field of newer config schemas (tritonclient 2.73) than Triton 2.51's
        scheduling = dict(config["ensemble_scheduling"])
        scheduling.pop("max_inflight_requests", None)
        config["ensemble_scheduling"] = scheduling
    if not same_backend:  # the ONNX twin: what only the backend decides
        for key in ("backend", "platform", "default_model_filename", "runtime"):
            config.pop(key, None)
    return config


@pytest.mark.parametrize("model", ["simple", "typed", "pipeline"])
def test_config_after_auto_completion_matches(servers: tuple[Served, Served], model: str) -> None:
    triton, shipyard = servers
    same_backend = python_backend_available() or model == "pipeline"
    expected = _normalize_config(_get(triton, f"/v2/models/{model}/config"), same_backend)
    got = _normalize_config(_get(shipyard, f"/v2/models/{model}/config"), same_backend)
    differing = {k: (expected.get(k), got.get(k)) for k in set(expected) | set(got) if expected.get(k) != got.get(k)}
    assert not differing, differing


def test_repository_index_and_metadata_match(servers: tuple[Served, Served]) -> None:
    triton, shipyard = servers
    assert _get(shipyard, "/v2/repository/index", b"{}") == _get(triton, "/v2/repository/index", b"{}")
    for path in ("/v2/models/simple", "/v2/models/simple/versions/2", "/v2/models/typed", "/v2/models/pipeline"):
        expected, got = _get(triton, path), _get(shipyard, path)
        if not python_backend_available() and "pipeline" not in path:
            expected.pop("platform"), got.pop("platform")
        assert got == expected, path
    server_t, server_s = _get(triton, "/v2"), _get(shipyard, "/v2")
    assert set(server_s) == set(server_t)
    assert set(server_s["extensions"]) <= set(server_t["extensions"])


def _shape(value: Any) -> Any:
    """The keys of a JSON value, recursively (lists: the shape of their first item)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_statistics_have_triton_shape(servers: tuple[Served, Served], outcomes: Any) -> None:
    """After the corpus ran (so every model has served requests), statistics have the same keys."""
    triton, shipyard = servers
    for path in ("/v2/models/stats", "/v2/models/simple/versions/1/stats", "/v2/models/pipeline/stats"):
        expected, got = _get(triton, path), _get(shipyard, path)
        assert _shape(got) == _shape(expected), path
        assert [(s["name"], s["version"]) for s in got["model_stats"]] == [
            (s["name"], s["version"]) for s in expected["model_stats"]
        ]


def test_statistics_count_the_same_requests(servers: tuple[Served, Served], outcomes: Any) -> None:
    """After the same corpus, each model version (ensembles and their composing models included)
    counts the same successful inferences. Execution counts and batch sizes may differ: how
    requests were batched depends on timing."""
    triton, shipyard = servers

    def counts(server: Served) -> dict[tuple[str, str], tuple[int, int]]:
        entries = _get(server, "/v2/models/stats")["model_stats"]
        return {
            (s["name"], s["version"]): (s["inference_count"], s["inference_stats"]["success"]["count"]) for s in entries
        }

    expected, got = counts(triton), counts(shipyard)
    for key in STATS_UNSTABLE:
        expected.pop(key, None), got.pop(key, None)
    differing = {
        key: (expected.get(key), got.get(key)) for key in set(expected) | set(got) if expected.get(key) != got.get(key)
    }
    assert set(differing) <= set(STATS_EXCEPTIONS), differing
    for key in STATS_EXCEPTIONS:  # each listed gap is still there (remove it from the list once fixed)
        assert key in differing, f"{key} now counts as Triton does: remove it from STATS_EXCEPTIONS"


# (model, version) -> why its counts differ from Triton's after the corpus (docs/triton-compatibility.md)
STATS_EXCEPTIONS = {
    ("typed", "1"): "deliberate: shipyard serves the FP16-over-JSON requests Triton refuses (20 more successes)",
}
# Left out: counts that differ from run to run in shipyard (open; docs/triton-compatibility.md).
STATS_UNSTABLE: dict[tuple[str, str], str] = {}
