"""Every MLflow flavor a team trains in -> ONNX, checked against the framework's own predictions.

``export_flavor(local_path, output_path, *, max_batch_size=64, atol=1e-4, rtol=1e-3) -> ExportResult`` reads
the MLmodel file of a downloaded model version, picks the converter for its flavor and checks the ONNX file
(``onnx.checker`` full check; ONNX Runtime at batch 1, the example's batch and ``max_batch_size`` against the
framework's own predictions on the logged input example):

- ``onnx``: passed through (the batch axis must be dynamic);
- ``sklearn``: skl2onnx (classifiers give ``label`` and ``probabilities``; no ZipMap), extra ``sklearn``;
- ``keras``: Keras 3's own ONNX export on the torch backend (no TensorFlow), extra ``keras``;
- ``transformers``: the model as a torch module, inputs the tokenizer's (``input_ids``, ...), output
  ``logits``, dynamic batch and sequence axes, extra ``transformers``;
- ``tensorflow``: a TF2 SavedModel (a ``tf.Module``, or a SavedModel folder registered with ``register_file``)
  through tf2onnx on its ``serving_default`` signature,
  extra ``tensorflow`` (TF 1 estimators and tf.keras models are refused with what to log instead);
- ``pytorch`` is not handled here (``export_registered`` keeps the torch path).

A missing extra is an ExportError naming it; an operator the converter cannot translate is an
``UnsupportedOperator`` naming the operator and the fallback (serve the MLflow pyfunc as a Python model).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.components.errors import ExportError
from shipyard.components.export.onnx_export import MAX_BATCH_METADATA_KEY, ExportResult
from shipyard.registry.digest import sha256_file

log = logging.getLogger(__name__)

# flavor -> (module that must import, extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "sklearn": ("skl2onnx", "sklearn"),
    "keras": ("keras", "keras"),
    "transformers": ("transformers", "transformers"),
    "tensorflow": ("tf2onnx", "tensorflow"),
    "onnx": ("onnx", "pipeline"),
    "pytorch": ("torch", "pipeline"),
}
# checked in this order: an MLmodel may carry several (python_function is always there)
FLAVORS = ("onnx", "pytorch", "transformers", "keras", "tensorflow", "sklearn")
FALLBACK = (
    "fallback: serve the MLflow pyfunc as a Python model (a Triton python-backend model.py that loads "
    "mlflow.pyfunc.load_model(...)) instead of ONNX"
)


class UnsupportedOperator(ExportError):
    """The converter has no translation for an operator (or estimator); ``op`` names it."""

    def __init__(self, flavor: str, op: str, detail: str) -> None:
        super().__init__(f"{flavor} model: {op} cannot be converted to ONNX ({detail}); {FALLBACK}")
        self.flavor = flavor
        self.op = op


@dataclass
class Converted:
    """A converter's output: the ONNX file, the example as ONNX feeds, and the framework's own predict."""

    path: Path
    feeds: dict[str, np.ndarray]
    reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    exporter: str
    extra_feeds: list[dict[str, np.ndarray]] = field(default_factory=list)  # e.g. another sequence length


def detect_flavor(local_path: str | Path) -> str:
    """The flavor shipyard exports a downloaded MLflow model with. Raises ExportError naming the flavors found."""
    from mlflow.models import Model

    flavors = Model.load(str(local_path)).flavors
    for name in FLAVORS:
        if name in flavors:
            return name
    found = sorted(f for f in flavors if f != "python_function")
    raise ExportError(
        f"no ONNX converter for the MLflow flavor(s) {found}: supported are {list(FLAVORS)}; {FALLBACK}"
    )


def require(flavor: str) -> Any:
    """Import the flavor's converter module, or raise ExportError naming the extra to install."""
    module, extra = EXTRAS[flavor]
    if flavor == "keras":
        os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 without TensorFlow
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(
            f"the {flavor} flavor needs {module} ({exc}): pip install 'shipyard[{extra}]'"
        ) from None


def _example(local_path: Path) -> Any:
    from mlflow.models import Model

    example = Model.load(str(local_path)).load_input_example(str(local_path))
    if example is None:
        raise ExportError(f"{local_path} has no logged input example; log the model with input_example=...")
    return example


def _rename(model: Any, mapping: Mapping[str, str]) -> None:
    """Rename graph inputs/outputs in place (every node reference follows)."""
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in mapping:
            value.name = mapping[value.name]
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for i, name in enumerate(node.output):
            if name in mapping:
                node.output[i] = mapping[name]


def _plain_names(path: Path, prefix_in: str = "input", prefix_out: str = "output") -> None:
    """Give generated I/O names (``keras_tensor``, ``23``) plain ones: input, output (or input__0, ...)."""
    import onnx

    model = onnx.load(str(path))
    ins, outs = [v.name for v in model.graph.input], [v.name for v in model.graph.output]
    mapping = {n: prefix_in if len(ins) == 1 else f"{prefix_in}__{i}" for i, n in enumerate(ins)}
    mapping.update({n: prefix_out if len(outs) == 1 else f"{prefix_out}__{i}" for i, n in enumerate(outs)})
    _rename(model, mapping)
    onnx.save(model, str(path))


# --- converters: each writes ``out`` and returns what the check needs ------------------------------------


def _convert_onnx(local: Path, out: Path) -> Converted:
    import onnx
    import onnxruntime as ort
    from mlflow.models import Model

    data = Model.load(str(local)).flavors["onnx"].get("data", "model.onnx")
    model = onnx.load(str(local / data))  # MLflow may keep the weights as external data beside it
    onnx.save(model, str(out), save_as_external_data=model.ByteSize() > 1_900_000_000)
    for value in model.graph.input:
        dim = value.type.tensor_type.shape.dim
        if dim and dim[0].HasField("dim_value"):
            raise ExportError(
                f"the ONNX model's input {value.name!r} has a fixed batch dimension {dim[0].dim_value}: re-export it "
                "with a dynamic batch axis (torch.onnx.export(..., dynamic_shapes=...) / dynamic_axes={0: 'batch'})"
            )
    example = _example(local)
    names = [v.name for v in model.graph.input]
    dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in model.graph.input}
    feeds = {n: a.astype(dtypes[n]) for n, a in _feeds_from(example, names).items()}  # JSON gives float64
    original = ort.InferenceSession(str(local / data), providers=["CPUExecutionProvider"])

    def reference(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in original.run(None, f)]

    return Converted(out, feeds, reference, "onnx-passthrough")


def _feeds_from(example: Any, names: list[str]) -> dict[str, np.ndarray]:
    if hasattr(example, "to_dict") and not isinstance(example, np.ndarray):  # a DataFrame
        example = example.to_numpy()
    if isinstance(example, Mapping):
        missing = [n for n in names if n not in example]
        if missing:
            raise ExportError(f"the input example lacks {missing}: the model takes {names}")
        return {n: np.asarray(example[n]) for n in names}
    if len(names) != 1:
        raise ExportError(f"the model takes {len(names)} inputs {names}: log the input example as a dict")
    return {names[0]: np.asarray(example)}


def _convert_sklearn(local: Path, out: Path) -> Converted:
    skl2onnx = require("sklearn")
    import mlflow.sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier

    model = mlflow.sklearn.load_model(str(local))
    x = np.asarray(_feeds_from(_example(local), ["input"])["input"], dtype=np.float32)
    if x.ndim != 2:
        raise ExportError(f"sklearn input example has shape {x.shape}: log a 2-D (rows, features) example")
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        onx = skl2onnx.convert_sklearn(
            model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], options=options
        )
    except Exception as exc:
        if type(exc).__name__.startswith("Missing"):  # MissingShapeCalculator / MissingConverter
            match = re.search(r"type '?<class '([^']+)'>", str(exc))
            op = f"estimator {match.group(1) if match else type(final).__name__}"
            raise UnsupportedOperator("sklearn", op, "no skl2onnx converter") from None
        raise ExportError(f"skl2onnx failed for {type(model).__name__}: {exc}") from exc
    out.write_bytes(onx.SerializeToString())
    names = [o.name for o in onx.graph.output]

    def reference(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = f["input"]
        answers = {"label": lambda: model.predict(rows), "probabilities": lambda: model.predict_proba(rows),
                   "variable": lambda: model.predict(rows)}  # fmt: skip
        return [np.asarray(answers[n]()) if n in answers else np.asarray(model.transform(rows)) for n in names]

    return Converted(out, {"input": x}, reference, f"skl2onnx {skl2onnx.__version__}")


def _unsupported_torch(flavor: str, exc: Exception) -> ExportError:
    text = str(exc)
    match = re.search(r"(aten::\w+|aten\.\w+(?:\.\w+)?|torch\.ops\.\w+\.\w+)", text)
    if match or "not supported" in text or "Unsupported" in text:
        return UnsupportedOperator(flavor, match.group(1) if match else "an operator", text.splitlines()[0][:300])
    return ExportError(f"{flavor} -> ONNX failed: {text.splitlines()[0][:300] if text else type(exc).__name__}")


def _convert_keras(local: Path, out: Path) -> Converted:
    keras = require("keras")
    import mlflow.keras

    model = mlflow.keras.load_model(str(local))
    x = np.asarray(_feeds_from(_example(local), ["input"])["input"], dtype=np.float32)
    model(x, training=False)  # a loaded model must be called once before it can be exported
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.export(str(out), format="onnx", verbose=False)
    except Exception as exc:
        raise _unsupported_torch("keras", exc) from exc
    _plain_names(out)

    def reference(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        answer = model(f["input"], training=False)
        answers = answer if isinstance(answer, (list, tuple)) else [answer]
        return [np.asarray(keras.ops.convert_to_numpy(a)) for a in answers]

    return Converted(out, {"input": x}, reference, f"keras {keras.__version__} ({keras.backend.backend()})")


def _convert_transformers(local: Path, out: Path) -> Converted:
    require("transformers")
    import mlflow.transformers
    import torch

    parts = mlflow.transformers.load_model(str(local), return_type="components")
    model, tokenizer = parts["model"].eval(), parts.get("tokenizer")
    if tokenizer is None:
        raise ExportError("the transformers model has no tokenizer logged: log {'model': ..., 'tokenizer': ...}")
    texts = _example(local)
    texts = [texts] if isinstance(texts, str) else [str(t) for t in np.asarray(texts).reshape(-1)]
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in encoded if n in accepted]
    if not names:
        raise ExportError(f"the tokenizer gives {list(encoded)} but {type(model).__name__}.forward takes {accepted}")
    feeds = {n: np.asarray(encoded[n], dtype=np.int64) for n in names}

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, args, strict=True))).logits

    wrapper = Logits().eval()
    example = tuple(torch.from_numpy(np.concatenate([feeds[n]] * 2)) for n in names)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, example, str(out), input_names=names, output_names=["logits"], dynamo=False, opset_version=17,
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
            )  # fmt: skip
    except Exception as exc:
        raise _unsupported_torch("transformers", exc) from exc

    def reference(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [wrapper(*[torch.from_numpy(f[n]) for n in names]).numpy()]

    shorter = {n: a[:, : max(2, a.shape[1] - 1)] for n, a in feeds.items()}  # another sequence length
    return Converted(out, feeds, reference, "torch.onnx (transformers)", extra_feeds=[shorter])


def _convert_tensorflow(local: Path, out: Path) -> Converted:
    """A TF2 SavedModel (MLflow's ``tensorflow`` flavor, ``tf2-module``) -> ONNX with tf2onnx, through its
    ``serving_default`` signature (names of inputs and outputs kept; the batch axis stays dynamic)."""
    tf2onnx = require("tensorflow")
    import tensorflow as tf
    from mlflow.models import Model

    conf = Model.load(str(local)).flavors["tensorflow"]
    if conf.get("model_type", "tf2-module") != "tf2-module":
        raise ExportError(
            f"the tensorflow flavor's model_type {conf.get('model_type')!r} is not exported: log a tf.Module (a "
            "SavedModel) with mlflow.tensorflow, or a Keras 3 model with mlflow.keras"
        )
    saved = tf.saved_model.load(str(local / conf["saved_model_dir"]))
    signature = saved.signatures.get("serving_default")
    if signature is None:
        raise ExportError(
            "the SavedModel has no 'serving_default' signature: give the tf.Module's __call__ a tf.function "
            "input_signature (or save it with signatures={'serving_default': ...})"
        )
    specs = signature.structured_input_signature[1]
    names = list(specs)
    onnx_specs = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]
    function = tf.function(lambda *args: signature(**dict(zip(names, args, strict=True))), input_signature=onnx_specs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto, _ = tf2onnx.convert.from_function(function, input_signature=onnx_specs, opset=17)
    except Exception as exc:
        text = str(exc)
        raise ExportError(f"tf2onnx failed: {text.splitlines()[0][:300] if text else type(exc).__name__}") from exc
    import onnx

    # tf2onnx logs a TF op it has no handler for and leaves it in the graph: name it here
    unmapped = sorted({n.op_type for n in proto.graph.node if not n.domain and not onnx.defs.has(n.op_type)})
    if unmapped:
        raise UnsupportedOperator("tensorflow", f"TF op {unmapped[0]}", f"no tf2onnx handler (all: {unmapped})")
    out.write_bytes(proto.SerializeToString())
    example = _feeds_from(_example(local), names)
    feeds = {n: np.asarray(example[n], dtype=specs[n].dtype.as_numpy_dtype) for n in names}
    outputs = [o.name for o in proto.graph.output]

    def reference(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        answer = signature(**{n: tf.constant(f[n]) for n in names})
        return [np.asarray(answer[o].numpy()) for o in outputs]

    return Converted(out, feeds, reference, f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__})")


CONVERTERS: dict[str, Callable[[Path, Path], Converted]] = {
    "onnx": _convert_onnx,
    "sklearn": _convert_sklearn,
    "keras": _convert_keras,
    "transformers": _convert_transformers,
    "tensorflow": _convert_tensorflow,
}


# --- the check every flavor goes through -------------------------------------------------------------------


def _tile(feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    out = {}
    for name, array in feeds.items():
        reps = -(-batch // array.shape[0])
        out[name] = np.concatenate([array] * reps, axis=0)[:batch]
    return out


def check_parity(converted: Converted, max_batch_size: int, atol: float, rtol: float) -> tuple[float, list[int]]:
    """Run ONNX Runtime against the framework at batch 1, the example's batch and ``max_batch_size``.

    Returns (worst absolute difference, batches checked). Raises ExportError naming output, batch and difference.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(converted.path), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    example_batch = next(iter(converted.feeds.values())).shape[0]
    cases = [(b, _tile(converted.feeds, b)) for b in sorted({1, example_batch, max_batch_size})]
    cases += [(example_batch, f) for f in converted.extra_feeds]
    worst, checked = 0.0, []
    for batch, feeds in cases:
        try:
            got = session.run(out_names, feeds)
        except Exception as exc:
            shapes = {n: a.shape for n, a in feeds.items()}
            raise ExportError(f"the ONNX model fails on inputs {shapes} (are the axes dynamic?): {exc}") from exc
        expected = converted.reference(feeds)
        for name, e, g in zip(out_names, expected, got, strict=True):
            e = np.asarray(e)
            if e.shape != g.shape and e.size == g.size:
                e = e.reshape(g.shape)
            if e.shape != g.shape:
                raise ExportError(f"output {name!r} at batch {batch}: ONNX {g.shape} != framework {e.shape}")
            diff = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64)))) if e.size else 0.0
            worst = max(worst, diff)
            if not np.allclose(g, e, atol=atol, rtol=rtol):
                raise ExportError(
                    f"output {name!r} at batch {batch}: ONNX Runtime differs from the framework by up to {diff:.3g} "
                    f"(atol={atol}, rtol={rtol})"
                )
        checked.append(batch)
    return worst, checked


def export_flavor(
    local_path: str | Path,
    output_path: str | Path,
    *,
    flavor: str | None = None,
    max_batch_size: int = 64,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> tuple[ExportResult, dict[str, np.ndarray]]:
    """Convert a downloaded MLflow model (not pytorch) to ONNX and check it; see the module docstring.

    Returns the result and the input example as ONNX feeds. Raises ExportError (missing extra, no converter,
    checker or parity failure), UnsupportedOperator.
    """
    import onnx

    local, out = Path(local_path), Path(output_path)
    flavor = flavor or detect_flavor(local)
    if flavor not in CONVERTERS:
        raise ExportError(f"export_flavor does not handle {flavor!r} (use export_registered for pytorch)")
    require(flavor)
    out.parent.mkdir(parents=True, exist_ok=True)
    converted = CONVERTERS[flavor](local, out)
    model = onnx.load(str(out))
    meta = {p.key: p for p in model.metadata_props}
    if MAX_BATCH_METADATA_KEY in meta:
        meta[MAX_BATCH_METADATA_KEY].value = str(max_batch_size)
    else:
        model.metadata_props.add(key=MAX_BATCH_METADATA_KEY, value=str(max_batch_size))
    onnx.save(model, str(out))
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as exc:
        raise ExportError(f"ONNX checker rejected {out}: {exc}") from exc
    worst, checked = check_parity(converted, max_batch_size, atol, rtol)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    result = ExportResult(
        path=out, sha256=sha256_file(out), opset=int(opset), input_names=tuple(converted.feeds),
        output_names=tuple(o.name for o in model.graph.output), max_batch_size=max_batch_size, max_abs_diff=worst,
        exporter=f"{flavor}: {converted.exporter}", checked_batches=tuple(checked),
    )  # fmt: skip
    log.info("exported %s flavor to %s (max |diff| %.3g)", flavor, out, worst)
    return result, converted.feeds
