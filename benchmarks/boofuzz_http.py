"""boofuzz against the REST port: the request line, the headers and the body of an inference request.

Triton fuzzes its HTTP endpoint with boofuzz (qa/L0_http_fuzz: the method, URI and version of a
request line); this does the same and also the headers and the JSON body of ``POST
/v2/models/MODEL/infer``, one boofuzz request for each of the three, every case on a new TCP
connection. boofuzz's own case list (``max_depth=1``: one field mutated at a time, each field through
its whole string library: long strings, format strings, delimiters, encodings, numbers) is sampled
evenly down to the budget asked for. Each answer's status line is read: a 5xx other than 503 is a
failure; a case the server did not answer within ``RECV_TIMEOUT_S`` (it is waiting for the rest of a
body whose length the mutation inflated, and closes it at its body timeout) is counted apart.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECV_TIMEOUT_S = 0.5
MAX_FIELD_BYTES = 20_000  # longer strings only repeat what 20 KB shows (the head limit is 16 KiB by default)


@dataclass
class BoofuzzReport:
    cases: int = 0  # cases sent
    status: collections.Counter[int] = field(default_factory=collections.Counter)
    no_answer: int = 0  # sent, but no status line within RECV_TIMEOUT_S
    no_answer_samples: list[bytes] = field(default_factory=list)  # what the first few such cases sent
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"boofuzz HTTP cases: {self.cases} (request line, headers, body)  statuses: "
            f"{dict(sorted(self.status.items()))}  no answer within {RECV_TIMEOUT_S:g} s: {self.no_answer}"
        )


def _body(model_inputs: tuple[str, ...], width: int) -> str:
    data = ",".join(str(i) for i in range(width))
    inputs = ",".join(
        f'{{"name":"{name}","shape":[1,{width}],"datatype":"FP32","data":[{data}]}}' for name in model_inputs
    )
    return f'{{"inputs":[{inputs}]}}'


def requests(model: str, inputs: tuple[str, ...] = ("INPUT0", "INPUT1"), width: int = 16) -> list[Any]:
    """The three boofuzz requests: request line, headers, body of an inference request for ``model``."""
    from boofuzz import Block, Delim, Group, Request, Size, Static, String

    def string(name: str, value: str) -> Any:
        return String(name=name, default_value=value, max_len=MAX_FIELD_BYTES)

    path = f"/v2/models/{model}/infer"
    body = _body(inputs, width)
    line = Request("request-line", children=(
        Group(name="method", values=["POST", "GET", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"]),
        Delim(name="space1", default_value=" "), string("uri", path), Delim(name="space2", default_value=" "),
        string("version", "HTTP/1.1"), Static(name="crlf", default_value="\r\n"),
        Static(name="host", default_value="Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "),
        Size(name="length", block_name="body", output_format="ascii", fuzzable=False),
        Static(name="end", default_value="\r\n\r\n"),
        Block(name="body", children=(Static(name="json", default_value=body),)),
    ))  # fmt: skip
    headers = Request("headers", children=(
        Static(name="line", default_value=f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
        string("type-name", "Content-Type"), Delim(name="colon", default_value=":"),
        Delim(name="sp", default_value=" "),
        string("type", "application/json"), Static(name="crlf1", default_value="\r\n"),
        Static(name="encoding-name", default_value="Content-Encoding: "), string("encoding", "identity"),
        Static(name="crlf2", default_value="\r\nInference-Header-Content-Length: "),
        string("inference-header-length", str(len(body))),
        Static(name="crlf3", default_value="\r\nContent-Length: "), string("length", str(len(body))),
        Static(name="end", default_value="\r\n\r\n"), Static(name="json", default_value=body),
    ))  # fmt: skip
    data = ",".join(str(i) for i in range(width))
    rest = "".join(f',{{"name":"{name}","shape":[1,{width}],"datatype":"FP32","data":[{data}]}}' for name in inputs[1:])
    json_body = Block(name="body", children=(
        Static(name="open", default_value='{"inputs":[{"name":"'), string("name", inputs[0]),
        Static(name="shape-open", default_value='","shape":['), string("shape", f"1,{width}"),
        Static(name="datatype-open", default_value='],"datatype":"'), string("datatype", "FP32"),
        Static(name="data-open", default_value='","data":['), string("data", data),
        Static(name="close", default_value="]}" + rest + "]}"),
    ))  # fmt: skip
    body_request = Request("body", children=(
        Static(name="line", default_value=f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Content-Type: application/json\r\nContent-Length: "),
        Size(name="length", block_name="body", output_format="ascii", fuzzable=False),
        Static(name="end", default_value="\r\n\r\n"), json_body,
    ))  # fmt: skip
    return [line, headers, body_request]


def _status(answer: bytes) -> int | None:
    """The status code of an HTTP/1.x answer, or None when ``answer`` has no status line."""
    if not answer.startswith(b"HTTP/1."):
        return None
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def run(port: int, cases: int, model: str = "add_sub", host: str = "127.0.0.1") -> BoofuzzReport:
    """Send about ``cases`` boofuzz cases (all of them when ``cases`` is 0) to the REST port; report
    the statuses. Raises ImportError naming the fix when boofuzz is not installed."""
    try:
        import boofuzz
    except ImportError:
        raise ImportError("boofuzz is not installed; install the dev extra: pip install -e '.[dev]'") from None

    report = BoofuzzReport()
    fuzzed = requests(model)

    class SampledSession(boofuzz.Session):  # type: ignore[misc]
        """boofuzz's case list, every ``stride``-th case (boofuzz has no sampling of its own)."""

        stride = 1

        def _generate_mutations_indefinitely(self, max_depth: int | None = None, path: Any = None) -> Iterator[Any]:
            for index, case in enumerate(super()._generate_mutations_indefinitely(max_depth, path)):
                if index % self.stride == 0:
                    yield case

    def check(target: Any, fuzz_data_logger: Any, session: Any, *args: Any, **kwargs: Any) -> None:
        report.cases += 1
        answer = session.last_recv or b""
        status = _status(answer)
        if status is None:
            report.no_answer += 1
            if len(report.no_answer_samples) < 5:
                report.no_answer_samples.append((session.last_send or b"")[:300])
            return
        report.status[status] += 1
        if status >= 500 and status != 503:
            sent = (session.last_send or b"")[:300]
            report.failures.append(f"boofuzz case {report.cases} -> {status}: {answer[:200]!r} for {sent!r}")

    with tempfile.TemporaryDirectory(prefix="shipyard-boofuzz-") as tmp:
        connection = boofuzz.TCPSocketConnection(host, port, send_timeout=5.0, recv_timeout=RECV_TIMEOUT_S)
        session = SampledSession(
            target=boofuzz.Target(connection=connection),
            web_port=None,
            fuzz_loggers=[],
            db_filename=str(Path(tmp) / "boofuzz.db"),
            receive_data_after_fuzz=True,
            post_test_case_callbacks=[check],
            restart_threshold=3,  # the server does not accept connections any more: stop, the caller reports it
            ignore_connection_reset=True,
            ignore_connection_aborted=True,
        )
        for request in fuzzed:
            session.connect(request)
        total = session.num_mutations(max_depth=1)
        session.stride = max(1, total // cases) if cases else 1
        session.fuzz(max_depth=1)
    return report
