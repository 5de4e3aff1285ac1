"""What both frontends do, independent of the wire: health, metadata, inference, config, stats,
repository. The REST app and the gRPC servicer are thin adapters over ``InferenceService``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.serving_runtime.errors import InvalidArgument, ModelNotFound, ModelNotReady
from shipyard.serving_runtime.protocol.shared_memory import SharedMemoryRegistry
from shipyard.serving_runtime.protocol.types import DecodedRequest, EncodedOutput, ManagerLike, ModelLike
from shipyard.serving_runtime.protocol.validate import build_request, collect_outputs
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.stats import ModelStats

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

log = logging.getLogger(__name__)

__all__ = ["EXTENSIONS", "InferResult", "InferenceService", "ManagerLike", "ModelLike", "parse_version"]

SERVER_NAME = "shipyard"
EXTENSIONS: tuple[str, ...] = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "parameters",
    "schedule_policy",
    "sequence",
    "statistics",
    "system_shared_memory",
)


def server_version() -> str:
    """The installed shipyard version (``0.0.0`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shipyard")
    except PackageNotFoundError:  # pragma: no cover - always installed in practice
        return "0.0.0"


def parse_version(model: str, version: str | int | None) -> int | None:
    """A version from a URL path or gRPC field: empty/None means latest.

    Raises: ModelNotFound when the version is not a positive integer (no such version exists).
    """
    if version is None or version == "":
        return None
    if isinstance(version, int):
        return version
    try:
        number = int(version)
    except ValueError:
        number = -1
    if number < 1:
        raise ModelNotFound(f"model {model!r} has no version {version!r}; versions are positive integers")
    return number


def _check_model_name(name: str) -> None:
    from shipyard.serving_runtime.repository import check_model_name

    check_model_name(name)


@dataclass
class InferResult:
    """A served request: the model version that ran it and its outputs."""

    model_name: str
    model_version: str
    outputs: list[EncodedOutput]
    parameters: Mapping[str, object] | None = None  # set by the model (a Python model's response parameters)


class InferenceService:
    """Protocol-independent handlers. ``started`` turns on once the manager has started; while
    ``shutting_down`` the server reports not ready (accepted requests still finish).
    """

    def __init__(self, manager: ManagerLike, strict_readiness: bool = True) -> None:
        self.manager = manager
        self.strict_readiness = strict_readiness
        self.started = False
        self.shutting_down = False
        self.shared_memory = SharedMemoryRegistry()

    # -- health and metadata ------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and not self.shutting_down and bool(self.manager.is_ready(self.strict_readiness))

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model(self, name: str, version: str | int | None = None) -> ModelLike:
        """The served model version. Raises: InvalidArgument (bad name), ModelNotFound (404),
        ModelNotReady (503)."""
        try:
            return self.manager.get(name, parse_version(name, version))
        except ModelNotFound:
            # Only names the manager does not know can be malformed: check them on this path
            # (not on every request), so a bad name still reads as InvalidArgument.
            _check_model_name(name)
            raise

    def model_ready(self, name: str, version: str | int | None = None) -> bool:
        """True when that version (latest when None) serves. Raises: ModelNotFound, InvalidArgument."""
        try:
            self.model(name, version)
        except ModelNotReady:
            return False
        return True

    def model_metadata(self, name: str, version: str | int | None = None) -> dict[str, Any]:
        """Model metadata; asked for one version, ``versions`` lists only that one (as Triton's)."""
        model = self.model(name, version)
        if parse_version(name, version) is not None:
            return dict(model.metadata([model.version]))
        return dict(model.metadata())

    def model_config(self, name: str, version: str | int | None = None) -> ModelConfig:
        """The completed ``ModelConfig`` proto of the served version."""
        return self.model(name, version).config

    # -- inference ----------------------------------------------------------------------------

    async def infer(self, name: str, version: str | int | None, decoded: DecodedRequest) -> InferResult:
        """Validate, run and collect one request.

        When the version being asked for is swapped out (a reload in poll or explicit mode) after
        lookup, the request is retried once on the new version, so clients see no failure.

        Raises: ModelNotFound, ModelNotReady, InvalidArgument, QueueFull, RequestTimeout,
        BackendError (see ``Scheduler.submit``).
        """
        binding = self.shared_memory.bind(decoded)  # inputs read from, outputs held in, shared memory
        model, request, results = await self.execute(name, version, lambda m: build_request(m, decoded))
        outputs = collect_outputs(model, request, results)
        return InferResult(
            model.name,
            str(model.version),
            binding.write(outputs) if binding else outputs,
            getattr(results, "parameters", None),
        )

    async def execute(
        self,
        name: str,
        version: str | int | None,
        build: Callable[[ModelLike], InferenceRequest],
        model: ModelLike | None = None,
    ) -> tuple[ModelLike, InferenceRequest, dict[str, np.ndarray]]:
        """Run the request ``build(model)`` makes on the served version (``model`` when the
        caller already looked it up); returns the model that ran it, the request and its outputs.

        When the version being asked for is swapped out after lookup, the request is built and
        run once more on the new version.

        Raises: what ``build`` raises (InvalidArgument), ModelNotFound, ModelNotReady, QueueFull,
        RequestTimeout, BackendError (see ``Scheduler.submit``).
        """
        if model is None:
            model = self.model(name, version)
        request = build(model)
        try:
            results = await model.infer(request)
        except ModelNotReady:
            replacement = self.model(name, version)  # raises when no version serves any more
            if replacement is model:
                raise
            model = replacement
            request = build(model)
            results = await model.infer(request)
        return model, request, results

    # -- statistics and repository ------------------------------------------------------------

    def statistics(self, name: str | None = None, version: str | int | None = None) -> list[dict[str, Any]]:
        """Triton statistics entries for all models, one model (all its versions) or one version.

        Raises: ModelNotFound when ``name`` (or the version) is unknown.
        """
        wanted = None if name is None else parse_version(name, version)
        stats: Iterable[ModelStats] = self.manager.all_stats()
        if name is not None:
            stats = [s for s in stats if s.name == name and (wanted is None or s.version == wanted)]
            if not stats:
                self.model(name, wanted)  # raises ModelNotFound / ModelNotReady with the reason
        return [s.as_triton_dict() for s in stats]

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        entries = []
        for entry in self.manager.index(ready_only=ready_only):
            cleaned = {k: v for k, v in entry.items() if v is not None}
            if "version" in cleaned:
                cleaned["version"] = str(cleaned["version"])
            entries.append(cleaned)
        return entries

    async def load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """Load or reload ``name`` (explicit mode); ``parameters['config']`` overrides its config (JSON).

        Raises: InvalidArgument for a bad name or unsupported parameters; ServingError from the manager.
        """
        _check_model_name(name)
        parameters = parameters or {}
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidArgument("load parameter 'config' must be a string holding the model config as JSON")
        files = [key for key in parameters if key.startswith("file:")]
        if files:
            raise InvalidArgument(f"loading model files through the API ({', '.join(files)}) is not supported")
        await self.manager.load(name, config)

    async def unload(self, name: str) -> None:
        _check_model_name(name)
        await self.manager.unload(name)
