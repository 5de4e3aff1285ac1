"""A Python model's stub process with stage stamps, for ``benchmarks.py_c1_trace``.

Runs ``shipyard.serving_runtime.backends.python.stub`` unchanged but for wrappers that stamp
(``time.monotonic_ns``) when an ``exec`` call's read returned, when the pb_utils requests were
built, around ONNX Runtime's ``run``, when ``execute`` returned, when the reply was encoded and
when it was written; rows go to ``$SHIPYARD_PY_TRACE_STUB_OUT.<pid>`` at most every 0.5 s.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from shipyard.serving_runtime.backends.python import ipc, stub

now = time.monotonic_ns
_ROW: dict[str, int] = {}
_ROWS: list[str] = []
_FLUSHED = [now()]


def _install() -> None:
    out = os.environ["SHIPYARD_PY_TRACE_STUB_OUT"] + f".{os.getpid()}"

    recv = ipc.Channel.recv

    def traced_recv(self: Any) -> Any:
        message = recv(self)
        if message[0] == "exec":
            _ROW.clear()
            _ROW["s_recv"] = now()
        return message

    send = ipc.Channel.send

    def traced_send(self: Any, message: Any) -> None:
        if message[0] == "done" and _ROW:
            _ROW["s_reply"] = now()
            send(self, message)
            _ROW["s_sent"] = now()
            _ROWS.append(f"{message[1]} " + " ".join(f"{k}={v}" for k, v in _ROW.items()))
            _ROW.clear()
            if now() - _FLUSHED[0] > 500_000_000:
                with open(out, "a") as handle:
                    handle.write("\n".join(_ROWS) + "\n")
                _ROWS.clear()
                _FLUSHED[0] = now()
            return
        send(self, message)

    call = stub.Stub._call

    def traced_call(self: Any, function: Any, *args: Any) -> Any:
        if _ROW:
            _ROW["s_req"] = now()
        result = call(self, function, *args)
        if _ROW:
            _ROW["s_model"] = now()
        return result

    ipc.Channel.recv = traced_recv  # type: ignore[method-assign]
    ipc.Channel.send = traced_send  # type: ignore[method-assign]
    stub.Stub._call = traced_call  # type: ignore[method-assign]
    try:
        import onnxruntime

        run = onnxruntime.InferenceSession.run

        def traced_run(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _ROW:
                _ROW["ort0"] = now()
            result = run(self, *args, **kwargs)
            if _ROW:
                _ROW["ort1"] = now()
            return result

        onnxruntime.InferenceSession.run = traced_run  # type: ignore[method-assign]
    except ImportError:
        pass


if __name__ == "__main__":
    _install()
    sys.exit(stub.main())
