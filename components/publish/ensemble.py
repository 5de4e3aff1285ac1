"""Publish a model together with its Python pre- and post-processing, joined by an ensemble.

``publish_with_processing(model_file, repository, model_name, preprocess=DIR, postprocess=DIR)``
publishes, each as its next version and atomically as ``publish`` does:

- the model itself (``publish``: ONNX or TensorRT, config built from the file);
- the pre-processing and post-processing Python models, each a directory holding its
  ``config.pbtxt`` and ``<version>/model.py`` (Triton's Python backend layout; the newest version
  directory's files are published);
- an ensemble (``<model_name>_pipeline`` unless named) whose steps run pre -> model -> post:
  the ensemble's inputs are the pre-processing model's inputs, its outputs the post-processing
  model's outputs. Outputs feed inputs of the next step by equal names, or one to one when each
  side has exactly one tensor.

The ensemble config is checked by the runtime's own ensemble checks (the step graph, then every
step's names, datatypes and dims against the three configs) after the model is published and
before the processing models and the ensemble are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.components.errors import PublishError
from shipyard.components.publish.api import publish
from shipyard.components.publish.repository import PublishResult, publish_files


@dataclass(frozen=True)
class PipelinePublished:
    """What ``publish_with_processing`` wrote: one result per model, the ensemble last."""

    model: PublishResult
    preprocess: PublishResult
    postprocess: PublishResult
    ensemble: PublishResult


def _read_python_model(model_dir: Path) -> tuple[Any, dict[str, Path]]:
    """(config, files of the newest version) of a Python model directory.

    Raises: PublishError naming what is missing.
    """
    from shipyard.serving_runtime.config import load_config
    from shipyard.serving_runtime.errors import ModelConfigError
    from shipyard.serving_runtime.repository import version_dirs

    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise PublishError(f"{model_dir}: no config.pbtxt; a Python model directory needs one")
    try:
        config = load_config(config_path)
    except ModelConfigError as exc:
        raise PublishError(exc.message) from None
    if config.backend != "python":
        raise PublishError(
            f'{config_path}: backend is {config.backend!r}; pre/post-processing models need backend: "python"'
        )
    versions = version_dirs(model_dir)
    if not versions:
        raise PublishError(f"{model_dir}: no version directory; put model.py in {model_dir}/1/")
    newest = versions[max(versions)]
    files = {p.name: p for p in sorted(newest.iterdir()) if p.is_file() and not p.name.startswith(".")}
    if "model.py" not in files:
        raise PublishError(f"{newest}: no model.py")
    return config, files


@dataclass(frozen=True)
class _ConfigModel:
    """A model as the ensemble checks see it, from its config alone."""

    config: Any

    @property
    def inputs(self) -> tuple[Any, ...]:
        from shipyard.serving_runtime.config import tensor_specs

        return tensor_specs(self.config)[0]

    @property
    def outputs(self) -> tuple[Any, ...]:
        from shipyard.serving_runtime.config import tensor_specs

        return tensor_specs(self.config)[1]

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size)


def _connect(producer: Any, consumer: Any) -> dict[str, str]:
    """consumer input -> producer output, by equal names or one to one.

    Raises: PublishError naming both sides' tensors.
    """
    outputs = [t.name for t in producer.output]
    inputs = [t.name for t in consumer.input]
    if set(inputs) <= set(outputs):
        return {name: name for name in inputs}
    if len(inputs) == 1 and len(outputs) == 1:
        return {inputs[0]: outputs[0]}
    raise PublishError(
        f"cannot connect model {producer.name!r} (outputs {', '.join(outputs)}) to model {consumer.name!r} "
        f"(inputs {', '.join(inputs)}): name the tensors alike, or give each side exactly one"
    )


def ensemble_config(name: str, pre: Any, model: Any, post: Any) -> Any:
    """The ensemble config running ``pre`` -> ``model`` -> ``post`` (configs of the three).

    Raises: PublishError when the models cannot be connected or the runtime's checks refuse it.
    """
    from shipyard.serving_runtime.config import new_config
    from shipyard.serving_runtime.ensemble import check_steps, plan_ensemble
    from shipyard.serving_runtime.errors import ModelConfigError

    config = new_config()
    config.name = name
    config.platform = "ensemble"
    sizes = [int(c.max_batch_size) for c in (pre, model, post)]
    config.max_batch_size = min(sizes) if all(sizes) else 0
    config.input.extend(pre.input)
    config.output.extend(post.output)
    for tensor in (*config.input, *config.output):
        tensor.ClearField("reshape")
    chain = (pre, model, post)
    produced: dict[str, str] = {}  # (model name, output) -> ensemble tensor
    for index, step_model in enumerate(chain):
        step = config.ensemble_scheduling.step.add()
        step.model_name = step_model.name
        step.model_version = -1
        if index == 0:
            for tensor in step_model.input:
                step.input_map[tensor.name] = tensor.name
        else:
            for model_input, producer_output in _connect(chain[index - 1], step_model).items():
                step.input_map[model_input] = produced[f"{chain[index - 1].name}/{producer_output}"]
        for tensor in step_model.output:
            ensemble_name = tensor.name if index == len(chain) - 1 else f"{step_model.name}_{tensor.name}"
            step.output_map[tensor.name] = ensemble_name
            produced[f"{step_model.name}/{tensor.name}"] = ensemble_name
    models = {c.name: _ConfigModel(c) for c in chain}
    try:
        source = f"{name}/config.pbtxt (to publish)"
        plan = plan_ensemble(config, source)
        check_steps(plan, config, lambda model_name, _version: models[model_name], source)
    except ModelConfigError as exc:
        raise PublishError(exc.message) from None
    return config


def publish_with_processing(
    model_file: str | Path,
    repository: str | Path,
    model_name: str,
    *,
    preprocess: str | Path,
    postprocess: str | Path,
    ensemble_name: str | None = None,
    keep_versions: int | None = 3,
    **publish_options: Any,
) -> PipelinePublished:
    """Publish ``model_file`` as ``model_name``, the two Python models, and the ensemble joining them.

    ``publish_options`` go to ``publish`` (``max_batch_size``, ``batching``, ``mlflow_model_uri``...).
    The Python model directories are read before anything is written; the ensemble is checked
    before the processing models and the ensemble are written (the model's version is then
    already published: a valid model on its own).

    Raises: PublishError (a directory is not a Python model, the models cannot be connected, the
    ensemble fails the runtime's checks, or a publish fails).
    """
    from shipyard.serving_runtime.config import parse_config_text, render_config

    pre_config, pre_files = _read_python_model(Path(preprocess))
    post_config, post_files = _read_python_model(Path(postprocess))
    if pre_config.name == post_config.name or model_name in (pre_config.name, post_config.name):
        raise PublishError("the model, its pre-processing and its post-processing need three different names")
    name = ensemble_name or f"{model_name}_pipeline"
    published = publish(model_file, repository, model_name, keep_versions=keep_versions, **publish_options)
    model_config = parse_config_text(published.config_text, source=f"{model_name} config")
    config = ensemble_config(name, pre_config, model_config, post_config)
    pre = publish_files(pre_files, repository, pre_config.name, render_config(pre_config), keep_versions=keep_versions)
    post = publish_files(
        post_files, repository, post_config.name, render_config(post_config), keep_versions=keep_versions
    )
    ensemble = publish_files({}, repository, name, render_config(config), keep_versions=keep_versions)
    return PipelinePublished(published, pre, post, ensemble)
