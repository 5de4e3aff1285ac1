"""Commands this package adds to ``shipyard``: ``pipeline run|compile|submit``, ``deploy``, ``undeploy``.

Heavy imports (kfp, kserve, kubernetes) happen inside the command bodies.
"""

from __future__ import annotations

import typer

from shipyard.pipelines.deploy_cli import deploy, undeploy
from shipyard.pipelines.pipeline_cli import pipeline_app


def register_commands(app: typer.Typer) -> None:
    """Add this package's commands to the ``shipyard`` app."""
    app.command(help="Deploy a published model repository to KServe or as a local process.")(deploy)
    app.command(help="Stop a local deployment or delete an InferenceService.")(undeploy)
    app.add_typer(pipeline_app, name="pipeline")
