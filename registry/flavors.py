"""Which MLflow flavor logs a trained object, and a content digest that identifies it.

- ``flavor_of(obj) -> str``: ``pytorch`` (an ``nn.Module``), ``keras`` (a Keras 3 model), ``sklearn`` (an
  estimator or pipeline), ``transformers`` (a ``{"model": ..., "tokenizer": ...}`` dict or a pipeline),
  ``onnx`` (an ``onnx.ModelProto``), ``tensorflow`` (a TF2 ``tf.Module`` whose ``__call__`` is a ``tf.function``
  with an input signature: MLflow stores it as a SavedModel). Raises RegistryError naming the type and what is accepted.
- ``digest(obj, flavor) -> str``: SHA-256 of the weights (or the serialized model).
- ``log_flavor(obj, flavor, input_example) -> mlflow ModelInfo`` (inside an active run, ``name="model"``).

Each flavor's library is imported only when an object of it is logged; a missing one is a RegistryError
naming the shipyard extra to install.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import pickle
import sys
from collections.abc import Iterator
from typing import Any

from shipyard.registry.errors import RegistryError

_EXTRA = {"keras": "keras", "sklearn": "sklearn", "transformers": "transformers", "onnx": "pipeline",
          "tensorflow": "tensorflow"}


def _module_root(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def flavor_of(obj: Any) -> str:
    """The MLflow flavor for a trained object. Raises RegistryError for anything else."""
    root = _module_root(obj)
    if isinstance(obj, dict) and "model" in obj:
        return "transformers"
    if root == "transformers":
        return "transformers"
    if root == "keras":
        return "keras"
    tf = sys.modules.get("tensorflow")  # only when the caller has imported it: a tf.Module cannot exist otherwise
    if tf is not None and isinstance(obj, tf.Module):
        return "tensorflow"
    if root == "sklearn" or (hasattr(obj, "fit") and hasattr(obj, "get_params")):
        return "sklearn"
    if root == "onnx":
        return "onnx"
    if hasattr(obj, "state_dict") and hasattr(obj, "forward"):
        return "pytorch"
    raise RegistryError(
        f"cannot register a {type(obj).__module__}.{type(obj).__name__}: pass a torch nn.Module, a Keras 3 model, "
        "an sklearn estimator, an onnx.ModelProto or a transformers {'model': ..., 'tokenizer': ...} dict"
    )


def _require(flavor: str) -> None:
    if flavor == "keras":
        os.environ.setdefault("KERAS_BACKEND", "torch")
    module = {"sklearn": "sklearn", "keras": "keras", "transformers": "transformers", "onnx": "onnx",
              "tensorflow": "tensorflow"}.get(flavor)  # fmt: skip
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRA[flavor]
        raise RegistryError(f"the {flavor} flavor needs {module} ({exc}): pip install 'shipyard[{extra}]'") from None


def digest(obj: Any, flavor: str) -> str:
    """SHA-256 identifying the trained object's content (so registering it again finds the same version)."""
    from shipyard.registry.register import module_digest

    if flavor == "pytorch":
        return module_digest(obj)
    if flavor == "transformers":
        model = obj["model"] if isinstance(obj, dict) else obj.model
        return module_digest(model)
    h = hashlib.sha256(f"{flavor}|{type(obj).__module__}.{type(obj).__qualname__}".encode())
    if flavor == "tensorflow":
        for variable in obj.variables:
            h.update(variable.name.encode())
            h.update(variable.numpy().tobytes())
    elif flavor == "keras":
        h.update(obj.to_json().encode())
        for weights in obj.get_weights():
            h.update(weights.tobytes())
    elif flavor == "onnx":
        h.update(obj.SerializeToString())
    else:
        h.update(pickle.dumps(obj, protocol=4))
    return h.hexdigest()


@contextlib.contextmanager
def _keras_save_dir_created() -> Iterator[None]:
    """MLflow 3.17's ``mlflow.keras.save_model`` writes the input example before it creates the model
    directory (FileNotFoundError under ``log_model``); create the directory first for the duration of the call."""
    import mlflow.keras

    keras_flavor: Any = mlflow.keras
    original = keras_flavor.save_model

    def save_model(*args: Any, **kwargs: Any) -> Any:
        path = kwargs["path"] if "path" in kwargs else args[1]
        os.makedirs(path, exist_ok=True)
        return original(*args, **kwargs)

    keras_flavor.save_model = save_model
    try:
        yield
    finally:
        keras_flavor.save_model = original


def log_flavor(obj: Any, flavor: str, input_example: Any) -> Any:
    """Log ``obj`` as ``model`` in the active run with its flavor's ``log_model``; returns the ModelInfo."""
    _require(flavor)
    if flavor == "keras":
        import keras
        import mlflow.keras

        with _keras_save_dir_created():
            return mlflow.keras.log_model(obj, name="model", input_example=input_example,
                                          pip_requirements=[f"keras=={keras.__version__}", "torch"])  # fmt: skip
    if flavor == "sklearn":
        import mlflow.sklearn
        import sklearn

        return mlflow.sklearn.log_model(obj, name="model", input_example=input_example,
                                        pip_requirements=[f"scikit-learn=={sklearn.__version__}"])  # fmt: skip
    if flavor == "onnx":
        import mlflow.onnx
        import onnx

        return mlflow.onnx.log_model(obj, name="model", input_example=input_example,
                                     pip_requirements=[f"onnx=={onnx.__version__}", "onnxruntime"])  # fmt: skip
    if flavor == "transformers":
        import mlflow.transformers
        import transformers

        # explicit requirements: MLflow's inference would import torchvision, which we do not install
        parts = {k: v for k, v in obj.items() if k != "task"} if isinstance(obj, dict) else obj
        return mlflow.transformers.log_model(
            parts, name="model", input_example=input_example, task=obj.get("task") if isinstance(obj, dict) else None,
            pip_requirements=[f"transformers=={transformers.__version__}", "torch"],
        )  # fmt: skip
    if flavor == "tensorflow":
        import mlflow.tensorflow
        import tensorflow as tf

        signatures = getattr(obj, "shipyard_signatures", None)  # a SavedModel folder: keep its own signatures
        return mlflow.tensorflow.log_model(obj, name="model", input_example=input_example,
                                           saved_model_kwargs={"signatures": signatures} if signatures else None,
                                           pip_requirements=[f"tensorflow=={tf.__version__}"])  # fmt: skip
    raise RegistryError(f"log_flavor: {flavor!r} is logged by register_module's torch path")


def load_saved_model(folder: Any) -> Any:
    """A TF2 SavedModel folder as a ``tf.Module`` that MLflow's tensorflow flavor logs with the folder's own
    ``serving_default`` signature. Raises RegistryError (TensorFlow missing, not a SavedModel, no serving_default)."""
    _require("tensorflow")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(folder))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{folder} is not a TF2 SavedModel ({' '.join(str(exc).split())[:200]})") from None
    serving: Any = getattr(loaded, "signatures", {}).get("serving_default")
    if serving is None:
        raise RegistryError(
            f"{folder} has no 'serving_default' signature: save it with tf.saved_model.save(module, path, "
            "signatures={'serving_default': module.__call__}) where __call__ is a tf.function with an input_signature"
        )
    names = list(serving.structured_input_signature[1])

    class SavedModelModule(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name="saved_model")
            self.loaded = loaded
            self.shipyard_signatures = {"serving_default": serving}

        def __call__(self, *args: Any, **kwargs: Any) -> Any:  # MLflow calls it on the input example
            feeds = kwargs or dict(zip(names, args, strict=False))
            return serving(**{k: tf.convert_to_tensor(v) for k, v in feeds.items()})

    return SavedModelModule()
