"""Replay a recorded HTTP API conversation on loopback (a plain module: ``from replay import ReplayServer``).

The server answers each request with the next recorded exchange when method and path match,
remembers what the client sent, and reports mismatches. Used for APIs no test can run for real
(the Kubeflow Pipelines API server).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ReplayServer:
    """Serve ``exchanges`` (``method``, ``path``, ``status``, ``body``) in order; ``requests`` records the client's."""

    def __init__(self, exchanges: list[dict[str, Any]]) -> None:
        self.exchanges = list(exchanges)
        self.position = 0
        self.requests: list[dict[str, Any]] = []
        self.mismatches: list[str] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                replay.requests.append(
                    {
                        "method": self.command,
                        "path": path,
                        "query": query,
                        "authorization": self.headers.get("Authorization"),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status, body = replay.next(self.command, path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ReplayServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def next(self, method: str, path: str) -> tuple[int, Any]:
        if self.position >= len(self.exchanges):
            self.mismatches.append(f"unexpected extra request {method} {path}")
            return 500, {"message": "conversation over"}
        expected = self.exchanges[self.position]
        self.position += 1
        if (expected["method"], expected["path"]) != (method, path):
            self.mismatches.append(f"expected {expected['method']} {expected['path']}, got {method} {path}")
            return 500, {"message": "unexpected request"}
        return int(expected["status"]), expected["body"]

    @property
    def done(self) -> bool:
        return self.position == len(self.exchanges)
