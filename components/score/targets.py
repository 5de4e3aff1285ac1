"""Where the rows are scored: a served model over gRPC, or the repository's model in this process.

Public: ``Target`` (``info``, ``async infer(inputs, priority)``, ``async close()``), ``GrpcTarget.connect(url,
model, version)``, ``InProcessTarget.load(repository, model, version)``, ``grpc_address(url)``,
``model_info(config, version)``.

gRPC answers UNAVAILABLE (queue full, model not ready, server restarting or unreachable) and
RESOURCE_EXHAUSTED (too many calls in flight) raise ``Retryable``; the scorer backs off and sends again.
Every other refusal is a ``ScoreError`` with the server's message.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from shipyard.components.score.errors import Retryable, ScoreError
from shipyard.components.score.features import ModelInfo, TensorInfo

RETRYABLE_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
_MAX_MESSAGE = 256 * 1024 * 1024


class Target(Protocol):
    """Scores one batch of rows."""

    info: ModelInfo
    description: str

    async def infer(self, inputs: Mapping[str, np.ndarray], priority: int) -> dict[str, np.ndarray]:
        """The model's outputs for ``inputs`` (arrays with the batch dim first).

        Raises: Retryable (try again later), ScoreError (the request is refused for good).
        """
        ...

    async def close(self) -> None: ...


def model_info(config: Any, version: int) -> ModelInfo:
    """ModelInfo from a ``ModelConfig`` message.

    Raises: ScoreError for a model that does not batch or has a variable-size input.
    """
    from shipyard.serving_runtime.config import tensor_specs

    inputs, outputs = tensor_specs(config)
    if int(config.max_batch_size) <= 0:
        raise ScoreError(
            f"model {config.name!r} does not batch (max_batch_size 0); shipyard score sends rows in batches: "
            "publish it with max_batch_size > 0"
        )
    for spec in inputs:
        if any(d < 0 for d in spec.dims):
            raise ScoreError(
                f"model {config.name!r} input {spec.name} has variable dims {list(spec.dims)}; shipyard score "
                "needs fixed dims per row"
            )
    batching = config.dynamic_batching if config.HasField("dynamic_batching") else None
    return ModelInfo(
        name=str(config.name),
        version=version,
        inputs=tuple(TensorInfo(s.name, s.datatype, s.dims) for s in inputs),
        outputs=tuple(TensorInfo(s.name, s.datatype, s.dims) for s in outputs),
        max_batch_size=int(config.max_batch_size),
        preferred_batch_sizes=tuple(int(b) for b in batching.preferred_batch_size) if batching else (),
        priority_levels=int(batching.priority_levels) if batching else 0,
        background_share_rows=_share_rows(config),
    )


def _share_rows(config: Any) -> int:
    from shipyard.serving_runtime.scheduling.background import SHARE_PARAMETER

    text = config.parameters[SHARE_PARAMETER].string_value if SHARE_PARAMETER in config.parameters else ""
    return int(text) if text.isdigit() else 0


def grpc_address(url: str) -> tuple[str, bool]:
    """``(host:port, tls)`` for ``host:port``, ``grpc://host:port``, ``http://host[:port]`` or ``https://host[:port]``
    (an InferenceService URL: its gRPC port is the same host, 80 or 443 unless given).

    Raises: ScoreError for anything else.
    """
    text = url.strip()
    if "://" not in text:
        text = "grpc://" + text
    parts = urlsplit(text)
    default_port = {"grpc": None, "http": 80, "https": 443, "grpcs": 443}
    if parts.scheme not in default_port or not parts.hostname or parts.path not in ("", "/"):
        raise ScoreError(
            f"--url {url!r}: use host:port (gRPC), grpc://host:port, or an InferenceService URL http(s)://host"
        )
    try:
        port = parts.port or default_port[parts.scheme]
    except ValueError:
        port = None
    if port is None:
        raise ScoreError(f"--url {url!r}: name the gRPC port, e.g. {parts.hostname}:8081")
    return f"{parts.hostname}:{port}", parts.scheme in ("https", "grpcs")


def _code(exc: Any) -> str:
    status = str(exc.status() or "") if hasattr(exc, "status") else ""
    return status.rsplit(".", 1)[-1]


class GrpcTarget:
    """A model served by shipyard, Triton or any KServe v2 gRPC server."""

    def __init__(self, client: Any, url: str, info: ModelInfo) -> None:
        self._client = client
        self.info = info
        self.description = f"grpc {url} model {info.name} version {info.version}"
        self._outputs: list[Any] = []

    @classmethod
    async def connect(cls, url: str, model: str, version: int | None = None, patience_s: float = 30.0) -> GrpcTarget:
        """Connect, read the model's config and pin the version (the newest ready one unless given).

        Waits up to ``patience_s`` for a server that is not up yet.
        Raises: ScoreError (unknown model or version, unreachable server, model that cannot be scored).
        """
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        address, tls = grpc_address(url)
        options = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)]
        client = grpcclient.InferenceServerClient(address, ssl=tls, channel_args=options)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + patience_s
        while True:
            try:
                metadata = await client.get_model_metadata(model, str(version or ""))
                chosen = version or max(int(v) for v in metadata.versions)
                response = await client.get_model_config(model, str(chosen))
                break
            except InferenceServerException as exc:
                if _code(exc) == "UNAVAILABLE" and loop.time() < give_up:
                    await asyncio.sleep(0.5)
                    continue
                await client.close()
                if _code(exc) == "UNAVAILABLE":
                    raise ScoreError(
                        f"no server answered at {address} for {patience_s:g} s ({exc.message() or exc}); check --url "
                        "and that the server is up"
                    ) from None
                what = f"model {model!r}" + (f" version {version}" if version else "")
                raise ScoreError(f"{what} at {address}: {exc.message() or exc}") from None
            except ValueError:
                await client.close()
                raise ScoreError(f"model {model!r} at {address} lists no ready version") from None
        return cls(client, address, model_info(response.config, chosen))

    async def infer(self, inputs: Mapping[str, np.ndarray], priority: int) -> dict[str, np.ndarray]:
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        requests = []
        for tensor in self.info.inputs:
            array = inputs[tensor.name]
            item = grpcclient.InferInput(tensor.name, list(array.shape), tensor.datatype)
            item.set_data_from_numpy(array)
            requests.append(item)
        try:
            result = await self._client.infer(
                self.info.name, requests, model_version=str(self.info.version), priority=priority
            )
        except InferenceServerException as exc:
            if _code(exc) in RETRYABLE_CODES:
                raise Retryable(exc.message() or str(exc)) from None
            raise ScoreError(f"model {self.info.name!r} refused a batch: {exc.message() or exc}") from None
        return {t.name: result.as_numpy(t.name) for t in self.info.outputs}

    async def close(self) -> None:
        await self._client.close()


def _download_model(repository: str, model: str) -> Any:
    """Copy ``<repository>/<model>`` from an object store into a temporary local repository (its path)."""
    import tempfile
    from pathlib import Path

    from shipyard.components.score.dataset import url_to_fs

    fs, root = url_to_fs(repository, "repository")
    local = Path(tempfile.mkdtemp(prefix="shipyard-score-"))
    source = f"{root.rstrip('/')}/{model}"
    if fs.exists(source):
        fs.get(source, str(local / model), recursive=True)
    return local


class InProcessTarget:
    """The repository's model run here with the serving runtime's backends (no server, no queue)."""

    def __init__(self, instances: list[Any], info: ModelInfo, description: str, scratch: Any = None) -> None:
        self.info = info
        self._scratch = scratch  # a temporary copy of an object-store repository, removed on close
        self.description = description
        self._instances = instances
        self._feeder: Any = None  # feeder.Feeder, started with the first batch

    @classmethod
    def load(cls, repository: str, model: str, version: int | None = None) -> InProcessTarget:
        """Load every instance of the model's version (the newest selected one unless given). Blocking.

        Raises: ScoreError (no such model or version, a config or file the runtime refuses).
        """
        from pathlib import Path

        from shipyard.serving_runtime.devices import gpu_count
        from shipyard.serving_runtime.errors import ServingError
        from shipyard.serving_runtime.model import load_instances
        from shipyard.serving_runtime.repository import ModelLocation, prepare_model

        root, scratch = Path(repository), None
        if "://" in repository and not repository.startswith("file://"):
            root = scratch = _download_model(repository, model)
        elif repository.startswith("file://"):
            root = Path(urlsplit(repository).path)
        instances: list[Any] = []
        try:
            if not (root / model).is_dir():
                present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
                where = f"has {', '.join(present)}" if present else "does not exist or is empty"
                raise ScoreError(f"model {model!r} is not in repository {repository} ({where})")
            gpus = gpu_count()
            definition = prepare_model(ModelLocation(model, root / model, root), gpus)
            chosen = version or definition.versions[-1]
            if chosen not in definition.versions:
                raise ScoreError(f"model {model!r} has no version {chosen} to serve (versions: {definition.versions})")
            instances = load_instances(definition, chosen, gpus)
        except ServingError as exc:
            raise ScoreError(f"model {model!r} in {repository}: {exc}") from None
        finally:
            if scratch is not None and not instances:
                shutil.rmtree(scratch, ignore_errors=True)
        description = f"in-process {os.path.join(repository, model)} version {chosen} ({len(instances)} instance(s))"
        return cls(instances, model_info(definition.config, chosen), description, scratch)

    async def infer(self, inputs: Mapping[str, np.ndarray], priority: int) -> dict[str, np.ndarray]:
        if self._feeder is None:  # instance threads that run queued batches back to back (feeder.py)
            from shipyard.components.score.feeder import Feeder

            self._feeder = Feeder(self._instances, tuple(t.name for t in self.info.outputs))
        try:
            result: dict[str, np.ndarray] = await self._feeder.run(inputs)
            return result
        except Exception as exc:
            raise ScoreError(f"model {self.info.name!r} failed on a batch: {exc}") from None

    async def close(self) -> None:
        if self._feeder is not None:
            await asyncio.to_thread(self._feeder.close)
            self._feeder = None
        for instance in self._instances:
            await asyncio.to_thread(instance.close)
        self._instances = []
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
