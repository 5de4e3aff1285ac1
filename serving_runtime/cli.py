"""Command line of the serving runtime: ``python -m shipyard.serving_runtime`` and ``shipyard serve``.

Flags follow Triton's spelling (``--model-repository``, ``--model-control-mode``...), and KServe's
(``--http_port``, ``--grpc_port``, ``--model_dir``, ``--model_name``) are accepted too, so the same
image runs under a KServe ServingRuntime unchanged: ``--model_dir`` may be a repository or, when
``storageUri`` points at one model, that model's directory (served under ``--model_name``).
Exit codes: 0 after a clean shutdown, 1 when startup fails, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shipyard.serving_runtime.errors import ServingError
from shipyard.serving_runtime.protocol import grpc_limits, http_limits
from shipyard.serving_runtime.server import (
    DEFAULT_GRPC_MAX_CONCURRENT_RPCS,
    DEFAULT_GRPC_MAX_PENDING_RPCS,
    DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION,
    GRPC_FRONTENDS,
    ServerOptions,
)

EXIT_USAGE = 2
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def _limit(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 for no limit), got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or a positive limit, got {value!r}")
    return number


def _cache_config(value: str) -> int:
    from shipyard.serving_runtime.cache import parse_cache_config

    try:
        return parse_cache_config(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _is_model_dir(path: Path) -> bool:
    """A single model's directory (as opposed to a repository): config.pbtxt or numeric version folders."""
    if (path / "config.pbtxt").is_file():
        return True
    return any(child.is_dir() and child.name.isdigit() for child in path.iterdir())


def _single_model_repository(model_dir: Path, name: str) -> Path:
    """A temporary repository holding ``name`` -> ``model_dir`` (a symlink), removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="shipyard-repository-"))
    (root / name).symlink_to(model_dir.resolve(), target_is_directory=True)
    atexit.register(shutil.rmtree, root, True)
    return root


def _add_repository_options(parser: argparse.ArgumentParser) -> None:
    """Where the models come from and which load (``model repository``)."""
    repo = parser.add_argument_group("model repository")
    repo.add_argument(
        "--model-repository",
        "--model_repository",
        dest="repositories",
        action="append",
        default=[],
        metavar="DIR",
        help="a model repository (repeatable): a directory, or s3://BUCKET/PREFIX, gs://..., az://CONTAINER/PREFIX "
        "(read through a local cache; extras s3, gcs, azure); a model name found in two repositories fails "
        "for that model",
    )
    repo.add_argument(
        "--model_dir",
        "--model-dir",
        dest="model_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="KServe's spelling (storageUri is mounted at /mnt/models): a model repository, or one model's "
        "directory (config.pbtxt and/or numeric version folders), served as --model_name",
    )
    repo.add_argument(
        "--model_name",
        "--model-name",
        help="KServe's model name: names the model when --model_dir is a single model's directory",
    )
    repo.add_argument(
        "--model-control-mode",
        "--model_control_mode",
        choices=("none", "poll", "explicit"),
        default="none",
        help="none: load everything at start; poll: also rescan every --repository-poll-secs; "
        "explicit: load/unload through the repository API (default: none)",
    )
    repo.add_argument(
        "--repository-poll-secs",
        "--repository_poll_secs",
        type=_positive_float,
        default=15.0,
        metavar="N",
        help="seconds between repository scans in poll mode (default: 15)",
    )
    repo.add_argument(
        "--model-cache-dir",
        "--model_cache_dir",
        metavar="DIR",
        help="where repositories in object storage (s3://, gs://, az://) are cached "
        "(default: $SHIPYARD_MODEL_CACHE_DIR, else ~/.cache/shipyard/model-repositories)",
    )
    repo.add_argument(
        "--load-model",
        "--load_model",
        dest="load_models",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: a model to load at start (repeatable; '*' loads all)",
    )


def _add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    """Ports, frontends and connection limits (``endpoints``)."""
    net = parser.add_argument_group("endpoints")
    net.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    net.add_argument("--http-port", "--http_port", type=_port, default=8080, help="REST port (default: 8080)")
    net.add_argument("--grpc-port", "--grpc_port", type=_port, default=8081, help="gRPC port (default: 8081)")
    net.add_argument(
        "--grpc-frontend",
        choices=GRPC_FRONTENDS,
        default="auto",
        help="native: gRPC on grpc++ threads (built by `make native`), far less event-loop time per call; "
        "aio: grpc.aio; auto: native when built, else aio (default: auto)",
    )
    net.add_argument(
        "--grpc-fast-path",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="native gRPC frontend: plain ModelInfer requests for dynamically batched models are parsed, "
        "grouped and answered in C++, and Python runs once per group; anything else takes the Python path "
        "(default: on; --no-grpc-fast-path: every request takes the Python path)",
    )
    net.add_argument(
        "--rest-fast-path",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="plain REST inference requests (binary or JSON tensors, no shared memory) for dynamically batched "
        "models skip the ASGI app and are grouped, Python running once per group; anything else, errors "
        "included, takes the ASGI path (default: on; --no-rest-fast-path: every request takes the ASGI path)",
    )
    net.add_argument(
        "--grpc-max-concurrent-rpcs",
        type=_limit,
        default=DEFAULT_GRPC_MAX_CONCURRENT_RPCS,
        metavar="N",
        help="gRPC calls in progress at most; beyond it a call gets RESOURCE_EXHAUSTED at once, before any "
        f"model work, so a burst cannot pile up in the server's memory; 0: no limit "
        f"(default: {DEFAULT_GRPC_MAX_CONCURRENT_RPCS})",
    )
    net.add_argument(
        "--grpc-max-pending-rpcs",
        type=_limit,
        default=DEFAULT_GRPC_MAX_PENDING_RPCS,
        metavar="N",
        help="gRPC calls that may wait inside grpc for the server to take them; past N grpc starts refusing "
        "new calls at once (CANCELLED), past 2N it refuses all; 0: grpc's defaults, 1000/3000; aio frontend only "
        f"(default: {DEFAULT_GRPC_MAX_PENDING_RPCS})",
    )
    net.add_argument(
        "--grpc-max-streams-per-connection",
        type=_limit,
        default=DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION,
        metavar="N",
        help="gRPC calls one client connection may have open at once (HTTP/2 max concurrent streams); "
        "more wait in the client, so one greedy connection cannot crowd out the others; 0: no limit "
        f"(default: {DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION})",
    )
    net.add_argument(
        "--http-max-concurrency",
        type=_limit,
        default=0,
        metavar="N",
        help="REST connections and requests in progress at most; beyond it a request gets 503 at once "
        "(uvicorn's limit_concurrency; note it counts open keep-alive connections too); 0: no limit (default: 0)",
    )
    net.add_argument(
        "--grpc-watchdog-secs",
        type=float,
        default=5.0,
        metavar="S",
        help="native gRPC frontend: probe its port this often and restart it after 3 failed probes (grpc core "
        "stops accepting after running out of file descriptors); 0: off (default: 5)",
    )


def _add_behaviour_options(parser: argparse.ArgumentParser) -> None:
    """Readiness, polling, logging and shutdown (``behaviour``)."""
    behaviour = parser.add_argument_group("behaviour")
    behaviour.add_argument(
        "--cache-config",
        "--cache_config",
        type=_cache_config,
        default=0,
        metavar="local,size=BYTES",
        help="a response cache of BYTES, LRU, for models whose config says response_cache { enable: true } "
        "(Triton's flag; default: no cache)",
    )
    behaviour.add_argument(
        "--strict-readiness",
        "--strict_readiness",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="/v2/health/ready only when every model is available (default: true, as Triton)",
    )
    behaviour.add_argument(
        "--exit-on-error",
        "--exit_on_error",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="exit when a model fails to load at start instead of serving the others (default: false)",
    )
    behaviour.add_argument(
        "--graceful-shutdown-secs",
        type=_positive_float,
        default=30.0,
        metavar="N",
        help="on SIGTERM, how long accepted requests may take to finish (default: 30)",
    )
    behaviour.add_argument(
        "--log-level", "--log_level", type=str.lower, choices=_LOG_LEVELS, default="info", help="(default: info)"
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (nothing is parsed here)."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m shipyard.serving_runtime",
        description="Serve a Triton-layout model repository over the Open Inference Protocol (REST + gRPC).",
        allow_abbrev=False,
    )
    _add_repository_options(parser)
    _add_endpoint_options(parser)
    http_limits.add_flags(parser.add_argument_group("REST limits"))
    grpc_limits.add_flags(parser.add_argument_group("gRPC connection limits"))
    _add_behaviour_options(parser)
    return parser


def parse_options(argv: Sequence[str] | None = None, prog: str | None = None) -> ServerOptions:
    """Parse and check the command line.

    Raises: SystemExit(2) with the usage for unknown flags, bad values, no repository, or a
    repository that is not a directory.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not args.repositories and not args.model_dirs:
        parser.error("give at least one --model-repository DIR")
    repositories: list[Path | str] = []
    for raw in args.repositories:
        if "://" in raw:  # object storage (serving_runtime/remote.py)
            from shipyard.serving_runtime.remote_store import check_support

            try:
                check_support(raw)
            except ServingError as exc:
                parser.error(exc.message)
            repositories.append(raw.rstrip("/"))
        else:
            repositories.append(Path(raw))
    for path in [*(p for p in repositories if isinstance(p, Path)), *(Path(p) for p in args.model_dirs)]:
        if not path.is_dir():
            parser.error(f"model repository {str(path)!r} is not a directory")
    for model_dir in (Path(p) for p in args.model_dirs):
        if _is_model_dir(model_dir):
            if not args.model_name:
                parser.error(f"--model_dir {str(model_dir)!r} holds one model; name it with --model_name")
            from shipyard.serving_runtime.repository import check_model_name

            try:
                check_model_name(args.model_name)
            except ServingError as exc:
                parser.error(exc.message)
            repositories.append(_single_model_repository(model_dir, args.model_name))
        else:
            repositories.append(model_dir)
    if args.load_models and args.model_control_mode != "explicit":
        parser.error("--load-model needs --model-control-mode explicit (the other modes load every model)")
    try:
        limits = http_limits.from_args(args)
        grpc_connection_limits = grpc_limits.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    return ServerOptions(
        repositories=repositories,
        control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        model_cache_dir=Path(args.model_cache_dir) if args.model_cache_dir else None,
        load_models=list(args.load_models),
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        grpc_max_concurrent_rpcs=args.grpc_max_concurrent_rpcs,
        grpc_max_pending_rpcs=args.grpc_max_pending_rpcs,
        grpc_max_streams_per_connection=args.grpc_max_streams_per_connection,
        http_max_concurrency=args.http_max_concurrency,
        http_limits=limits,
        grpc_limits=grpc_connection_limits,
        grpc_watchdog_secs=args.grpc_watchdog_secs,
        grpc_frontend=args.grpc_frontend,
        grpc_fast_path=args.grpc_fast_path,
        rest_fast_path=args.rest_fast_path,
        cache_size_bytes=args.cache_config,
        strict_readiness=args.strict_readiness,
        exit_on_error=args.exit_on_error,
        graceful_shutdown_secs=args.graceful_shutdown_secs,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the server; returns the exit code (2 for a usage error)."""
    try:
        options = parse_options(argv, prog)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from shipyard.serving_runtime.server import run

    return run(options)
