"""What the promotion service does for one model version: prepare it, roll it out, roll it back.

- ``Settings``: repository, alias, canary percent, watch time, error-rate and p99 limits, runtime ports.
- ``Promoter(settings, state)``: ``prepare(name, version)`` (export -> optimize -> validate, tags on the
  version), ``roll_out(name, version)`` (publish as a canary beside the serving version, watch the runtime's own
  metrics, then full traffic, or roll back with ``shipyard.rollout.reason`` tagged and the alias moved back),
  ``resume()`` (finish a rollout a restart interrupted).
- ``judge(before, after, version, settings) -> str | None``: the canary verdict from two metric snapshots (pure).

Every step is idempotent: a version already serving is not rolled out again; a rollout found in the state file
on restart continues from what is on disk (the published repository version is never published twice).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.components.promotion.state import State

log = logging.getLogger(__name__)
STATUS_TAG = "shipyard.rollout.status"  # preparing | prepared | failed | canary | serving | rolled_back
REASON_TAG = "shipyard.rollout.reason"


@dataclass(frozen=True)
class Settings:
    repository: Path
    tracking_uri: str | None = None
    alias: str = "champion"
    deployment: str | None = None  # the local deployment's name (default: the model's name)
    canary_percent: float = 20.0
    watch_s: float = 20.0
    max_error_rate: float = 0.01
    max_p99_ms: float = 500.0
    min_canary_requests: int = 5
    ready_timeout_s: float = 120.0
    http_port: int = 8000
    grpc_port: int = 8001
    target: str = "onnxruntime"
    max_batch_size: int = 32
    profile: bool = True
    work_dir: Path | None = None


# --- the runtime's metrics ----------------------------------------------------------------------------------

Snapshot = dict[tuple[str, str], dict[str, Any]]  # (model, version) -> counters and latency buckets


def scrape(http_url: str) -> Snapshot:
    """Per (model, version): success, failure, and cumulative latency buckets {le_seconds: count}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{http_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
            if not key[0]:
                continue
            entry = out.setdefault(key, {"success": 0.0, "failure": 0.0, "buckets": {}})
            name = sample.name.removesuffix("_total")  # the parser names Triton's untyped counters *_total
            if name == "nv_inference_request_success":
                entry["success"] += sample.value
            elif name == "nv_inference_request_failure":
                entry["failure"] += sample.value
            elif sample.name == "shipyard_inference_request_duration_seconds_bucket":
                entry["buckets"][float(sample.labels["le"])] = sample.value
    return out


def judge(before: Snapshot, after: Snapshot, key: tuple[str, str], settings: Settings) -> str | None:
    """Why the canary ``key`` must be rolled back (None: it may take all traffic)."""
    empty: dict[str, Any] = {"success": 0.0, "failure": 0.0, "buckets": {}}
    b, a = before.get(key, empty), after.get(key, empty)
    ok, failed = a["success"] - b["success"], a["failure"] - b["failure"]
    total = ok + failed
    if total < settings.min_canary_requests:
        return None  # too little traffic to judge: no evidence against it
    if failed / total > settings.max_error_rate:
        return f"canary error rate {failed / total:.1%} ({failed:.0f}/{total:.0f}) > {settings.max_error_rate:.1%}"
    p99 = served_p99_ms(before, after, key)
    if p99 is not None and p99 > settings.max_p99_ms:
        return f"canary p99 latency {p99:.0f} ms > {settings.max_p99_ms:g} ms (served, {ok:.0f} requests)"
    return None


def served_p99_ms(before: Snapshot, after: Snapshot, key: tuple[str, str]) -> float | None:
    """The p99 of the requests ``key`` served between the snapshots (a histogram bucket bound), None if none."""
    if key not in after:
        return None
    a, b = after[key], before.get(key, {"success": 0.0, "buckets": {}})
    ok = a["success"] - b["success"]
    deltas = sorted((le, a["buckets"].get(le, 0.0) - b["buckets"].get(le, 0.0)) for le in a["buckets"])
    if ok <= 0 or not deltas:
        return None
    return 1000.0 * next((le for le, count in deltas if count >= 0.99 * ok), float("inf"))


def _version_ready(http_url: str, name: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"{http_url}/v2/models/{name}/versions/{version}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def write_policy(repository: Path, name: str, versions: list[int], canary: str | None) -> None:
    """Rewrite ``config.pbtxt`` atomically: serve exactly ``versions``; ``canary`` ``"V:P"`` or None."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from shipyard.serving_runtime.config import render_config
    from shipyard.serving_runtime.traffic import CANARY_PARAMETER

    path = repository / name / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config.ClearField("version_policy")
    config.version_policy.specific.versions.extend(sorted(set(versions)))
    if canary is None:
        if CANARY_PARAMETER in config.parameters:
            del config.parameters[CANARY_PARAMETER]
    else:
        config.parameters[CANARY_PARAMETER].string_value = canary
    tmp = path.with_name("config.pbtxt.tmp")
    tmp.write_text(render_config(config))
    os.replace(tmp, path)


class Promoter:
    def __init__(self, settings: Settings, state: State) -> None:
        self.settings = settings
        self.state = state
        self.work = settings.work_dir or (settings.repository.parent / "promotion-work")

    # --- MLflow ---
    def _client(self) -> Any:
        from shipyard.registry import get_client

        return get_client(self.settings.tracking_uri)

    def _tag(self, name: str, version: int, **tags: str) -> None:
        """Set ``tags`` on the version, the status last: one MLflow call per tag, so a reader that sees the
        new status (a test, a dashboard, ``shipyard`` itself) also finds the reason that goes with it."""
        client = self._client()
        for key, value in sorted(tags.items(), key=lambda item: item[0] == STATUS_TAG):
            client.set_model_version_tag(name, str(version), key, value)

    # --- prepare ---
    def prepare(self, name: str, version: int) -> dict[str, Any]:
        """Export, optimize and validate ``name/version`` once; the outcome is tagged and remembered."""
        key = f"{name}/{version}"
        done = self.state.get("prepared", key)
        if done is not None:
            return dict(done)
        from shipyard import registry
        from shipyard.components.errors import ComponentError
        from shipyard.components.export import export_registered
        from shipyard.components.optimize import optimize
        from shipyard.components.validate import validate

        s, uri, work = self.settings, f"models:/{name}/{version}", self.work / name / str(version)
        self._tag(name, version, **{STATUS_TAG: "preparing"})
        try:
            exported = export_registered(uri, work / "export" / "model.onnx", max_batch_size=s.max_batch_size,
                                         tracking_uri=s.tracking_uri)  # fmt: skip
            optimized = optimize(exported.path, work / "optimized", target=s.target, max_batch_size=s.max_batch_size)
            registry.record_lineage(uri, optimized.lineage_tags(), s.tracking_uri)
            report = validate(exported.path, optimized.path, dict(exported.example_feeds or {}), None,
                              profile=s.profile, max_batch_size=s.max_batch_size, report_dir=work / "validation",
                              raise_on_failure=False)  # fmt: skip
            registry.record_lineage(uri, report.lineage_tags(), s.tracking_uri)
            if not report.passed:
                raise ComponentError(f"validation failed: {report.lineage_tags().get('shipyard.validation.summary')}")
            rec = report.recommendation.as_dict() if report.recommendation is not None else None
            done = {"ok": True, "onnx": str(exported.path), "engine": str(optimized.path), "batching": rec}
        except Exception as exc:  # any failure is this version's, tagged; the service keeps running
            reason = str(exc).splitlines()[0][:480] if str(exc) else type(exc).__name__
            log.warning("prepare %s failed: %s", key, reason)
            done = {"ok": False, "reason": reason}
        self._tag(name, version, **{STATUS_TAG: "prepared" if done["ok"] else "failed",
                                    REASON_TAG: done.get("reason", "")})  # fmt: skip
        self.state.put("prepared", key, done)
        return done

    # --- roll out ---
    def _runtime_url(self, name: str) -> str:
        from shipyard.components.deploy.local import LocalTarget

        s = self.settings
        target = LocalTarget(self.work / "deployments")
        deployment = s.deployment or name
        found = target.find(deployment)
        if found is None or not found.is_running():
            # the runtime serves the whole repository (poll mode): a second model rides on the one already running
            repository = str(s.repository.resolve())
            for other in target.list():
                if other.is_running() and other.repository == repository:
                    return other.http_url
            if found is not None:
                target.stop(deployment)
            poll = ["--model-control-mode", "poll", "--repository-poll-secs", "1"]
            found = target.start(deployment, s.repository, http_port=s.http_port, grpc_port=s.grpc_port,
                                 extra_args=poll)  # fmt: skip
        return found.http_url

    def roll_out(self, name: str, version: int) -> str:
        """Serve ``name/version`` (canary, watch, full) or roll it back. Returns the outcome in words."""
        serving = self.state.get("serving", name)
        if serving is not None and serving["version"] == version and self.state.get("rollout", name) is None:
            return f"{name}/{version} already serves"
        prepared = self.prepare(name, version)
        if not prepared["ok"]:
            return self._refuse(name, version, serving, f"not deployable: {prepared['reason']}")
        rollout = self.state.get("rollout", name)
        if rollout is None or rollout["version"] != version:
            if rollout is not None:  # a different version was mid-rollout: abandon it first
                self._rollback(name, rollout, serving, "superseded by a newer alias move")
            rollout = self._publish(name, version, prepared, serving)
        return self._watch_and_finish(name, rollout, serving)

    def _publish(self, name: str, version: int, prepared: dict[str, Any], serving: dict[str, Any] | None) -> Any:
        from shipyard.components.publish import publish
        from shipyard.components.publish.repository import list_versions, next_version
        from shipyard.serving_runtime.traffic import CANARY_PARAMETER

        s = self.settings
        expected = next_version(s.repository, name) if (s.repository / name).exists() else 1
        stable = serving["repo_version"] if serving else None
        rollout = {"version": version, "repo_version": expected, "stable": stable}
        self.state.put("rollout", name, rollout)  # before the write: a restart finds it and does not publish again
        if expected not in (list_versions(s.repository, name) if (s.repository / name).exists() else []):
            canary = {CANARY_PARAMETER: f"{expected}:{s.canary_percent:g}"} if stable else {}
            result = publish(prepared["engine"], s.repository, name, batching=prepared.get("batching"),
                             io_model=prepared["onnx"], keep_versions=None,
                             mlflow_model_uri=f"models:/{name}/{version}",
                             parameters=canary, serve_versions=[stable, expected] if stable else None)  # fmt: skip
            if result.version != expected:
                raise RuntimeError(f"published {name} as version {result.version}, expected {expected}")
        self._tag(name, version, **{STATUS_TAG: "canary" if stable else "starting",
                                    "shipyard.rollout.repo_version": str(expected)})  # fmt: skip
        return rollout

    def _watch_and_finish(self, name: str, rollout: dict[str, Any], serving: dict[str, Any] | None) -> str:
        s, rv = self.settings, int(rollout["repo_version"])
        url = self._runtime_url(name)
        deadline = time.monotonic() + s.ready_timeout_s
        while not _version_ready(url, name, rv):
            if time.monotonic() > deadline:
                return self._rollback(name, rollout, serving, f"repository version {rv} did not become ready in "
                                      f"{s.ready_timeout_s:g} s (see the runtime's log)")  # fmt: skip
            time.sleep(0.25)
        if rollout["stable"] is not None:
            key = (name, str(rv))
            before, end = scrape(url), time.monotonic() + s.watch_s
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                verdict = judge(before, scrape(url), key, s)
                if verdict is not None and "error rate" in verdict:
                    return self._rollback(name, rollout, serving, verdict)
            after = scrape(url)
            verdict = judge(before, after, key, s)
            p99 = served_p99_ms(before, after, key)
            if p99 is not None:  # what `shipyard promote --max-served-p99-ms` gates on
                self._tag(name, rollout["version"], **{"shipyard.served.p99_ms": f"{p99:.1f}"})
            if verdict is not None:
                return self._rollback(name, rollout, serving, verdict)
            write_policy(s.repository, name, [rv], None)  # full traffic; the stable version retires
            deadline = time.monotonic() + s.ready_timeout_s
            while _version_ready(url, name, int(rollout["stable"])) and time.monotonic() < deadline:
                time.sleep(0.25)
        self.state.put("serving", name, {"version": rollout["version"], "repo_version": rv})
        self.state.drop("rollout", name)
        self._tag(name, rollout["version"], **{STATUS_TAG: "serving", REASON_TAG: ""})
        return f"{name}/{rollout['version']} serves 100% (repository version {rv})"

    def _rollback(self, name: str, rollout: dict[str, Any], serving: dict[str, Any] | None, reason: str) -> str:
        s, stable = self.settings, rollout.get("stable")
        if stable is not None and (s.repository / name / "config.pbtxt").exists():
            write_policy(s.repository, name, [int(stable)], None)
        self.state.drop("rollout", name)
        log.warning("rolled back %s/%s: %s", name, rollout["version"], reason)
        return self._refuse(name, int(rollout["version"]), serving, reason)

    def _refuse(self, name: str, version: int, serving: dict[str, Any] | None, reason: str) -> str:
        self._tag(name, version, **{STATUS_TAG: "rolled_back", REASON_TAG: reason[:480]})
        client = self._client()
        try:
            current = client.get_model_version_by_alias(name, self.settings.alias)
        except Exception:
            current = None
        if current is not None and int(current.version) == version:  # the alias points back at what serves
            if serving is not None:
                client.set_registered_model_alias(name, self.settings.alias, str(serving["version"]))
            else:
                client.delete_registered_model_alias(name, self.settings.alias)
        return f"{name}/{version} rolled back: {reason}"

    def resume(self) -> list[str]:
        """Finish rollouts a restart interrupted (from the published files; nothing is published twice)."""
        outcomes = []
        for name, rollout in self.state.snapshot()["rollout"].items():
            outcomes.append(self._watch_and_finish(name, rollout, self.state.get("serving", name)))
        return outcomes
