"""The ``shipyard promotion`` service: MLflow webhooks in, rollouts out, one event at a time.

``POST /webhook``: a signed MLflow delivery (``webhooks.verify``; 401 unsigned/forged/stale, 409 replayed).
``model_version.created`` -> ``Promoter.prepare``; ``model_version_alias.created`` with the configured alias ->
``Promoter.roll_out``; other events are acknowledged and ignored. ``GET /healthz``, ``GET /status`` (the state).
With ``poll_s > 0`` a poller also reads the registry (for MLflow servers without webhooks: file store, managed
services) and queues the same work. A single worker thread runs the queue, so rollouts never overlap.

``build_app(promoter, secret, *, poll_s=0.0, models=None) -> starlette app`` (starts its worker on startup).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from shipyard.components.promotion.rollout import Promoter
from shipyard.components.promotion.webhooks import WebhookRefused, verify

log = logging.getLogger(__name__)
Job = tuple[str, str, int]  # (kind: "prepare" | "rollout", model name, version)


class Worker:
    def __init__(self, promoter: Promoter, poll_s: float = 0.0, models: Sequence[str] | None = None) -> None:
        self.promoter = promoter
        self.poll_s = poll_s
        self.models = set(models) if models else None
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.outcomes: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def wanted(self, name: str) -> bool:
        return self.models is None or name in self.models

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name="promotion-worker", daemon=True)]
        if self.poll_s > 0:
            self._threads.append(threading.Thread(target=self._poll, name="promotion-poller", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.jobs.put(None)

    def _run(self) -> None:
        try:
            self.outcomes.extend(self.promoter.resume())
        except Exception:
            log.exception("resuming an interrupted rollout failed")
        while not self._stop.is_set():
            job = self.jobs.get()
            if job is None:
                return
            kind, name, version = job
            try:
                if kind == "prepare":
                    done = self.promoter.prepare(name, version)
                    outcome = f"{name}/{version} prepared" if done["ok"] else f"{name}/{version}: {done['reason']}"
                else:
                    outcome = self.promoter.roll_out(name, version)
            except Exception as exc:
                log.exception("%s %s/%s failed", kind, name, version)
                outcome = f"{kind} {name}/{version} failed: {exc}"
            log.info("%s", outcome)
            self.outcomes.append(outcome)

    def _poll(self) -> None:
        """Registry polling: unprepared versions are prepared; an alias that moved is rolled out."""
        while not self._stop.wait(self.poll_s):
            try:
                self._poll_once()
            except Exception:
                log.exception("polling the registry failed; retrying in %s s", self.poll_s)

    def _poll_once(self) -> None:
        client, state, alias = self.promoter._client(), self.promoter.state, self.promoter.settings.alias
        for model in client.search_registered_models():
            if not self.wanted(model.name):
                continue
            for mv in client.search_model_versions(f"name='{model.name}'"):
                if state.get("prepared", f"{model.name}/{mv.version}") is None:
                    self.jobs.put(("prepare", model.name, int(mv.version)))
            target = (model.aliases or {}).get(alias)
            serving = state.get("serving", model.name)
            if target is not None and (serving is None or str(serving["version"]) != str(target)):
                self.jobs.put(("rollout", model.name, int(target)))

    def handle(self, event: dict[str, Any]) -> str:
        """Queue the work an event asks for; returns what was queued (or why nothing was)."""
        entity, action, data = event.get("entity"), event.get("action"), event.get("data") or {}
        name, version = data.get("name", ""), data.get("version")
        if not self.wanted(name) or version is None:
            return "ignored"
        if (entity, action) == ("model_version", "created"):
            self.jobs.put(("prepare", name, int(version)))
            return f"prepare {name}/{version}"
        if (entity, action) == ("model_version_alias", "created") and data.get("alias") == self.promoter.settings.alias:
            self.jobs.put(("rollout", name, int(version)))
            return f"rollout {name}/{version}"
        return "ignored"


def build_app(promoter: Promoter, secret: str, *, poll_s: float = 0.0, models: Sequence[str] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    if not secret:
        raise ValueError("the webhook secret is empty: set --secret-env to a variable holding it")
    worker = Worker(promoter, poll_s, models)

    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            delivery, event = verify(dict(request.headers), body, secret, now=time.time())
        except WebhookRefused as refused:
            log.warning("refused a webhook delivery: %s", refused.reason)
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        if not promoter.state.accept_delivery(delivery, time.time()):
            return JSONResponse({"error": f"delivery {delivery} was already accepted (replay)"}, status_code=409)
        return JSONResponse({"queued": worker.handle(event)})

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({**promoter.state.snapshot(), "outcomes": worker.outcomes[-50:],
                             "pending": worker.jobs.qsize()})  # fmt: skip

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    app = Starlette(
        routes=[Route("/webhook", webhook, methods=["POST"]), Route("/status", status), Route("/healthz", healthz)],
        lifespan=lifespan,
    )  # fmt: skip
    app.state.worker = worker
    return app
