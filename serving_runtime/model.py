"""One served model version: its instances, its scheduler, its metadata.

``load_instances`` (blocking; run it in a worker thread) checks the version's file against the
config, creates one backend instance per ``instance_group`` slot and runs ``model_warmup``
before anything is served. ``ServedModel`` then wraps those instances in the scheduler the
config asks for; ``infer`` is what the protocol layer calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.serving_runtime.backends.base import BackendInstance, Device, InstanceSettings
from shipyard.serving_runtime.cache import ResponseCache, with_cache
from shipyard.serving_runtime.config import config_to_dict, model_side_specs, tensor_specs
from shipyard.serving_runtime.config_model import check_against_model
from shipyard.serving_runtime.datatypes import config_to_triton, deserialize_bytes_tensor, triton_to_numpy
from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError, ModelNotReady
from shipyard.serving_runtime.scheduling import InferenceRequest, Scheduler, create_scheduler

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from shipyard.serving_runtime.repository import ModelDefinition

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------------


def placements(config: ModelConfig, gpu_count: int, source: str) -> list[Device]:
    """One Device per instance, from the (completed) ``instance_group`` list.

    Raises: ModelLoadError when a KIND_GPU group has no GPU, or names a GPU that is not there.
    """
    from tritonclient.grpc import model_config_pb2 as pb

    devices: list[Device] = []
    for group in config.instance_group:
        count = max(int(group.count), 1)
        if group.kind == pb.ModelInstanceGroup.KIND_GPU:
            if gpu_count == 0:
                raise ModelLoadError(
                    f"{source}: instance_group {group.name!r} is KIND_GPU but no CUDA GPU is visible to the "
                    "server; use KIND_CPU (or KIND_AUTO, which falls back to CPU) to run on CPU"
                )
            gpus = list(group.gpus) or list(range(gpu_count))
            absent = [g for g in gpus if g >= gpu_count]
            if absent:
                raise ModelLoadError(
                    f"{source}: instance_group {group.name!r} asks for GPU(s) {absent} but only "
                    f"{gpu_count} GPU(s) are visible (indices 0..{gpu_count - 1})"
                )
            for gpu in gpus:
                devices.extend(Device("gpu", int(gpu)) for _ in range(count))
        else:
            devices.extend(Device("cpu") for _ in range(count))
    return devices or [Device("cpu")]


class ReshapingInstance:
    """Applies the config's ``reshape``: client-side dims -> model-side shape on the way in, and
    model-side shape -> client-side dims on the way out (the batch dim is kept)."""

    def __init__(self, inner: BackendInstance, config: ModelConfig) -> None:
        self._inner = inner
        self._batching = config.max_batch_size > 0
        self._inputs = {t.name: tuple(t.reshape.shape) for t in config.input if t.HasField("reshape")}
        self._outputs = {t.name: tuple(t.dims) for t in config.output if t.HasField("reshape")}

    def _shape(self, array: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
        if self._batching:
            return array.reshape((array.shape[0], *target))
        return array.reshape(target)

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        fed = {
            name: self._shape(array, self._inputs[name]) if name in self._inputs else array
            for name, array in inputs.items()
        }
        results = self._inner.execute(fed, outputs)
        return {
            name: self._shape(array, self._outputs[name]) if name in self._outputs else array
            for name, array in results.items()
        }

    def close(self) -> None:
        self._inner.close()


def _warmup_inputs(config: ModelConfig, warmup: Any, model_dir: Path, rng: np.random.Generator) -> dict[str, Any]:
    batch = [int(warmup.batch_size) or 1] if config.max_batch_size > 0 else []
    reshape = {t.name: t for t in config.input}
    inputs: dict[str, np.ndarray] = {}
    for name, data in warmup.inputs.items():
        datatype = config_to_triton(int(data.data_type)) if data.data_type else None
        if datatype is None:
            datatype = config_to_triton(int(reshape[name].data_type))
        dtype = triton_to_numpy(datatype)
        shape = (*batch, *(int(d) for d in data.dims))
        count = int(np.prod(shape)) if shape else 1
        source = data.WhichOneof("input_data_type")
        if source == "input_data_file":
            path = model_dir / "warmup" / data.input_data_file
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise ModelLoadError(f"model_warmup {warmup.name!r}: cannot read {path}: {exc.strerror}") from None
            if datatype == "BYTES":
                items = deserialize_bytes_tensor(raw)
                array = np.resize(items, count).reshape(shape)
            else:
                flat = np.frombuffer(raw, dtype=dtype)
                if flat.size < count:
                    raise ModelLoadError(
                        f"model_warmup {warmup.name!r}: {path} holds {flat.size} {datatype} values, "
                        f"shape {list(shape)} needs {count}"
                    )
                array = flat[:count].reshape(shape).copy()
        elif datatype == "BYTES":
            array = np.empty(shape, dtype=np.object_)
            if source == "random_data":
                array.reshape(-1)[:] = [rng.bytes(8) for _ in range(count)]
            else:
                array.reshape(-1)[:] = [b""] * count
        elif source == "random_data":
            if dtype.kind == "f":
                array = rng.random(shape, dtype=np.float64).astype(dtype)
            elif dtype.kind == "b":
                array = rng.integers(0, 2, shape).astype(dtype)
            else:
                array = rng.integers(0, 100, shape).astype(dtype)
        else:
            array = np.zeros(shape, dtype=dtype)
        inputs[name] = array
    return inputs


def run_warmup(config: ModelConfig, instances: Sequence[BackendInstance], model_dir: Path) -> None:
    """Run every ``model_warmup`` entry ``count`` times (at least once) on every instance.

    Raises: ModelLoadError naming the warm-up entry and the backend's error.
    """
    rng = np.random.default_rng(0)
    for warmup in config.model_warmup:
        inputs = _warmup_inputs(config, warmup, model_dir, rng)
        for instance in instances:
            for _ in range(max(int(warmup.count), 1)):
                try:
                    instance.execute(inputs, ())
                except Exception as exc:
                    raise ModelLoadError(f"model_warmup {warmup.name!r} failed: {exc}") from None


def load_instances(definition: ModelDefinition, version: int, gpu_count: int) -> list[BackendInstance]:
    """Load every instance of one version, warmed up. Blocking: call in a worker thread.

    Raises: ModelLoadError (missing or broken file, no GPU, warm-up failure) or
    ModelConfigError (the config does not match this version's file); instances created
    before the failure are closed.
    """
    from shipyard.serving_runtime.backends.registry import get_backend

    backend = get_backend(definition.backend_name)
    config = definition.config
    model_path = definition.model_file(version)
    if not model_path.is_file():
        raise ModelLoadError(
            f"{model_path}: model file not found; put {model_path.name} in {model_path.parent} "
            "or set default_model_filename in config.pbtxt"
        )
    signature = backend.inspect(model_path)
    check_against_model(config, signature, source=definition.source, model_path=model_path)
    devices = placements(config, gpu_count, definition.source)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    inputs, outputs = model_side_specs(config)
    optimization = config.optimization if config.HasField("optimization") else None
    needs_reshape = any(t.HasField("reshape") for t in (*config.input, *config.output))
    instances: list[BackendInstance] = []
    try:
        for index, device in enumerate(devices):
            settings = InstanceSettings(
                device=device,
                parameters=parameters,
                max_batch_size=int(config.max_batch_size),
                inputs=inputs,
                outputs=outputs,
                optimization=optimization,
                config=config,
                version=version,
                instance_index=index,
            )
            instance: BackendInstance = backend.load(model_path, settings)
            instances.append(ReshapingInstance(instance, config) if needs_reshape else instance)
        run_warmup(config, instances, definition.model_dir)
    except BaseException:
        for instance in instances:
            try:
                instance.close()
            except Exception:  # pragma: no cover - best effort cleanup
                log.exception("closing instance of %s version %d failed", definition.name, version)
        raise
    return instances


# --------------------------------------------------------------------------------------------
# ServedModel
# --------------------------------------------------------------------------------------------


class ServedModel:
    """One loaded, ready version of a model, as the protocol layer uses it.

    ``inputs``/``outputs`` carry Triton datatype names and dims without the batch dim.
    """

    def __init__(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        instances: Sequence[BackendInstance],
        *,
        model_dir: Path | None = None,
        scheduler: Scheduler | None = None,
        response_cache: ResponseCache | None = None,
    ) -> None:
        """Wrap loaded instances in the config's scheduler (call on the event loop thread);
        ``scheduler`` replaces it (an ensemble's, which has no instances of its own);
        ``response_cache`` is the server's, used when the config enables ``response_cache``.

        Raises: ModelConfigError when the scheduler rejects the config (instances are closed).
        """
        self.name = name
        self.version = int(version)
        self.config = config
        self.inputs, self.outputs = tensor_specs(config)
        self.max_batch_size = int(config.max_batch_size)
        self.platform = str(config.platform) or str(config.backend)  # Triton: "python" for Python models
        self.backend = str(config.backend)
        self.model_dir = model_dir
        self.instances = tuple(instances)
        # model_transaction_policy { decoupled: true }: any number of responses per request,
        # served over gRPC streams only (protocol/decoupled.py).
        self.decoupled = bool(config.model_transaction_policy.decoupled)
        # Set by the manager: every ready version of this model (for metadata's "versions").
        self.versions_source: Callable[[], Sequence[int]] | None = None
        # Set by the manager when a reload replaces this version: requests that reach a
        # draining scheduler go there instead of failing.
        self.successor: ServedModel | None = None
        if scheduler is not None:
            self.scheduler: Scheduler = scheduler
            return
        try:
            self.scheduler = create_scheduler(config, self.instances, name, self.version, model_dir)
            self.scheduler = with_cache(self.scheduler, config, response_cache, name, self.version)
        except Exception as exc:
            for instance in self.instances:
                instance.close()
            if isinstance(exc, (ModelConfigError, ModelLoadError)):
                raise
            raise ModelConfigError(f"model {name!r} version {version}: cannot build the scheduler: {exc}") from exc

    async def infer(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Run one validated request through the scheduler.

        Raises: what ``Scheduler.submit`` raises (QueueFull, RequestTimeout, RequestCancelled,
        BackendError, ModelNotReady).
        """
        try:
            return await self.scheduler.submit(request)
        except ModelNotReady:
            if self.successor is None:
                raise
            return await self.successor.infer(request)

    def metadata(self, versions: Sequence[int] | None = None) -> dict[str, object]:
        """Open Inference Protocol model metadata; shapes start with -1 when the model batches."""
        if versions is None:
            versions = self.versions_source() if self.versions_source is not None else [self.version]
        lead = [-1] if self.max_batch_size > 0 else []

        def tensors(specs: Sequence[Any]) -> list[dict[str, object]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": [*lead, *s.dims]} for s in specs]

        return {
            "name": self.name,
            "versions": [str(v) for v in versions],
            "platform": self.platform or self.backend,  # Triton: the backend name when no platform
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
        }

    def config_dict(self) -> dict[str, object]:
        """The completed config as Triton's model-config endpoint returns it."""
        return config_to_dict(self.config)

    async def retire(self) -> None:
        """Stop taking requests, let accepted ones finish, then close the instances."""
        await self.scheduler.drain()
        await asyncio.to_thread(self.scheduler.close)

    def __repr__(self) -> str:
        return f"ServedModel({self.name!r}, version={self.version}, backend={self.backend!r})"
