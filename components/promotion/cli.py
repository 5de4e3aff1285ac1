"""``shipyard promotion serve``: the long-running promotion service (``register_commands(app)``).

    export SHIPYARD_WEBHOOK_SECRET=...   # the secret given to MlflowClient().create_webhook(..., secret=...)
    shipyard promotion serve --tracking-uri http://mlflow:5000 --repository /srv/models --port 8090
    shipyard promotion manifest --image IMAGE --tracking-uri ...   # a Kubernetes Deployment + Service

Exit codes: 0 stopped cleanly; 2 a user error (no secret, no repository) in one line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

DEFAULT_SECRET_ENV = "SHIPYARD_WEBHOOK_SECRET"


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def register_commands(app: typer.Typer) -> None:
    promotion = typer.Typer(help="MLflow alias moves deploy by themselves (webhooks or polling).")
    app.add_typer(promotion, name="promotion")

    @promotion.command("serve")
    def serve_cmd(
        repository: Path = typer.Option(..., "--repository", help="Local model repository the runtime serves."),
        tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow (default: $MLFLOW_TRACKING_URI)."),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8090, "--port", help="Where MLflow delivers webhooks (POST /webhook)."),
        secret_env: str = typer.Option(DEFAULT_SECRET_ENV, "--secret-env", help="Variable holding the HMAC secret."),
        alias: str = typer.Option("champion", "--alias", help="The alias whose moves are rolled out."),
        model: list[str] = typer.Option([], "--model", help="Only these registered models (default: all)."),
        canary_percent: float = typer.Option(20.0, "--canary-percent"),
        watch_s: float = typer.Option(20.0, "--watch-s", help="How long the canary is watched."),
        max_error_rate: float = typer.Option(0.01, "--max-error-rate"),
        max_p99_ms: float = typer.Option(500.0, "--max-p99-ms", help="Served p99 limit for the canary."),
        http_port: int = typer.Option(8000, "--http-port", help="The runtime's REST port."),
        grpc_port: int = typer.Option(8001, "--grpc-port", help="The runtime's gRPC port."),
        state_dir: Path = typer.Option(None, "--state-dir", help="State and work files (default: next to the repo)."),
        poll_s: float = typer.Option(0.0, "--poll-s", help="Also poll the registry every N s (0: webhooks only)."),
        no_profile: bool = typer.Option(False, "--no-profile", help="Skip latency profiling in validation."),
    ) -> None:
        """Run the promotion service until stopped (SIGTERM/Ctrl-C)."""
        import logging

        import uvicorn

        from shipyard.components.promotion.rollout import Promoter, Settings
        from shipyard.components.promotion.service import build_app
        from shipyard.components.promotion.state import State

        secret = os.environ.get(secret_env, "")
        if not secret:
            _fail(f"${secret_env} is empty: set it to the secret of the MLflow webhook (create_webhook(secret=...))")
        repository = repository.resolve()
        repository.mkdir(parents=True, exist_ok=True)
        work = (state_dir or repository.parent / "promotion").resolve()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = Settings(repository=repository, tracking_uri=tracking_uri, alias=alias,
                            canary_percent=canary_percent, watch_s=watch_s, max_error_rate=max_error_rate,
                            max_p99_ms=max_p99_ms, http_port=http_port, grpc_port=grpc_port, work_dir=work,
                            profile=not no_profile)  # fmt: skip
        app_ = build_app(Promoter(settings, State(work / "state.json")), secret, poll_s=poll_s, models=model or None)
        uvicorn.run(app_, host=host, port=port, log_level="warning")

    @promotion.command("manifest")
    def manifest_cmd(
        image: str = typer.Option(..., "--image", help="An image with shipyard[serve,pipeline] installed."),
        tracking_uri: str = typer.Option(..., "--tracking-uri", help="The MLflow server, as the pod reaches it."),
        claim: str = typer.Option(..., "--claim", help="PersistentVolumeClaim for the repository and state."),
        namespace: str = typer.Option("default", "--namespace"),
        secret_name: str = typer.Option("shipyard-webhook", "--secret-name", help="Secret with key 'secret'."),
        alias: str = typer.Option("champion", "--alias"),
        canary_percent: float = typer.Option(20.0, "--canary-percent"),
        watch_s: float = typer.Option(60.0, "--watch-s"),
        poll_s: float = typer.Option(0.0, "--poll-s"),
    ) -> None:
        """Print the service's Kubernetes Deployment and Service (YAML for kubectl apply -f -)."""
        import yaml

        from shipyard.components.promotion.manifest import promotion_manifests

        try:
            docs = promotion_manifests(image=image, tracking_uri=tracking_uri, claim=claim, namespace=namespace,
                                       secret_name=secret_name, alias=alias, canary_percent=canary_percent,
                                       watch_s=watch_s, poll_s=poll_s)  # fmt: skip
        except ValueError as exc:
            _fail(str(exc))
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
