"""One error style for the CLI, the pipeline steps and the MLflow plugin.

``classify(exc)`` turns any exception into ``(exit_code, one_line)``: 2 for a user error (a missing or
corrupt file, an unknown model version, an unreachable host, a missing optional package, a bad
value), 3 for a gate that said no, 1 for anything else (a bug in shipyard: the line says to rerun with
``--debug`` for the traceback). The line names the problem and, where one is known, the fix.
"""

from __future__ import annotations

import contextlib
import re
import sys
import traceback
from collections.abc import Iterator
from typing import NamedTuple

EXIT_INTERNAL = 1
EXIT_USER_ERROR = 2
EXIT_GATE = 3

# the PyPI package that provides an import name users meet as a missing optional dependency
_PACKAGE_FOR = {"s3fs": "s3fs", "gcsfs": "gcsfs", "tensorrt": "tensorrt", "kfp": "kfp", "mlflow": "mlflow",
                "torch": "torch", "kubernetes": "kubernetes", "kserve": "kserve", "boto3": "boto3"}  # fmt: skip


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Outcome(NamedTuple):
    """An exit code and the one line that explains it."""

    code: int
    message: str


def one_line(text: object, limit: int = 600) -> str:
    """``text`` on one line (whitespace runs collapsed), cut at ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _own_error(exc: BaseException) -> Outcome | None:
    from shipyard.components.deploy.errors import DeployError
    from shipyard.components.errors import ComponentError, ValidationFailed
    from shipyard.registry.errors import PromotionRefused, RegistryError

    if isinstance(exc, ValidationFailed):
        return Outcome(EXIT_GATE, one_line(exc.text.splitlines()[0] if exc.text else exc))
    if isinstance(exc, PromotionRefused):
        reasons = "; ".join(exc.reasons)
        return Outcome(EXIT_GATE, one_line(f"refusing to set alias {exc.alias!r} on {exc.uri}: {reasons}"))
    if isinstance(exc, (ComponentError, RegistryError, DeployError)):
        return Outcome(EXIT_USER_ERROR, one_line(exc))
    return None


def _os_error(exc: OSError) -> Outcome | None:
    if isinstance(exc, FileNotFoundError):
        return Outcome(EXIT_USER_ERROR, f"file not found: {exc.filename or one_line(exc)}: check the path")
    if isinstance(exc, IsADirectoryError):
        return Outcome(EXIT_USER_ERROR, f"{exc.filename} is a folder: give a file")
    if isinstance(exc, NotADirectoryError):
        return Outcome(EXIT_USER_ERROR, f"{exc.filename}: a path component is not a folder")
    if isinstance(exc, PermissionError):
        return Outcome(EXIT_USER_ERROR, f"permission denied: {exc.filename or one_line(exc)}")
    if isinstance(exc, ConnectionError):
        return Outcome(EXIT_USER_ERROR, f"cannot connect: {one_line(exc)}: check the host and port and that it runs")
    return None


def _by_name(exc: BaseException) -> Outcome | None:
    """Third-party errors recognised by class name, so that this module imports none of them."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = one_line(exc)
    if names & {"MaxRetryError", "NewConnectionError", "ConnectTimeoutError"} or (
        "ConnectionError" in names and "requests" in type(exc).__module__
    ):
        host = getattr(getattr(exc, "pool", None), "host", None)
        where = f"{host}:{exc.pool.port}" if host else "the host"  # type: ignore[attr-defined]
        return Outcome(EXIT_USER_ERROR, f"cannot reach {where} ({text}): check the URL and that the server runs")
    botocore = "botocore" in type(exc).__module__
    if botocore and names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"}:
        fix = "check AWS_ENDPOINT_URL and the network"
        return Outcome(EXIT_USER_ERROR, f"cannot reach the object store ({text}): {fix}")
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return Outcome(EXIT_USER_ERROR, f"{text}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile for s3://")
    if names & {"DecodeError"} and "protobuf" in type(exc).__module__:
        return Outcome(EXIT_USER_ERROR, f"a file is not a valid protobuf (ONNX?) model: {text}")
    if "RuntimeError" in names and "finished with status" in text and "Inner task failed" in text:
        step = re.search(r"Inner task failed: \W*'?([\w-]+)", _ANSI.sub("", text))
        where = f" at step {step.group(1)!r}" if step else ""
        return Outcome(EXIT_USER_ERROR, f"the pipeline failed{where}: the step's error is in its log above")
    if "MlflowException" in names:
        code = str(getattr(exc, "error_code", ""))
        user = code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                        "BAD_REQUEST", "INVALID_STATE", "NOT_FOUND"}  # fmt: skip
        message = one_line(getattr(exc, "message", exc))
        return Outcome(EXIT_USER_ERROR, message) if user else None
    return None


def classify(exc: BaseException) -> Outcome:
    """The exit code and one line for ``exc`` (see the module docstring)."""
    outcome = _own_error(exc)
    if outcome is None and isinstance(exc, ImportError):
        module = (exc.name or "").split(".")[0]
        package = _PACKAGE_FOR.get(module, module)
        hint = f": pip install {package}" if package else ""
        outcome = Outcome(EXIT_USER_ERROR, f"a package this needs is not installed ({one_line(exc)}){hint}")
    if outcome is None and isinstance(exc, OSError):
        outcome = _os_error(exc)
    if outcome is None:
        outcome = _by_name(exc)
    if outcome is None:
        outcome = Outcome(
            EXIT_INTERNAL,
            f"internal error: {type(exc).__name__}: {one_line(exc)} (a bug in shipyard; rerun with --debug "
            "for the traceback and report it)",
        )
    return outcome


@contextlib.contextmanager
def step_errors() -> Iterator[None]:
    """For a pipeline step's process (a KFP component body): an error becomes one ``error:`` line on stderr
    and the exit code of ``classify`` (2 user error, 3 gate, 1 bug, whose traceback is printed too)."""
    try:
        yield
    except Exception as exc:
        outcome = classify(exc)
        if outcome.code == EXIT_INTERNAL:
            traceback.print_exc()
        print(f"error: {outcome.message}", file=sys.stderr, flush=True)
        raise SystemExit(outcome.code) from None
