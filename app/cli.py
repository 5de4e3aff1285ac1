"""The ``shipyard`` command: one entry point, sub-commands owned by each package.

Each package contributes its commands through a ``register_commands(app)`` function so this
file stays a table of contents; heavy imports happen inside the command bodies.
"""

from __future__ import annotations

import importlib
import sys

import typer

# (module, what it adds); a module that is not installed is skipped with a note in --help.
_COMMAND_MODULES = (
    ("shipyard.components.cli", "register, export, optimize, validate, publish, promote"),
    ("shipyard.pipelines.cli", "pipeline run/compile/submit, deploy"),
    ("shipyard.components.score.cli", "score"),
)


def build_app() -> typer.Typer:
    """Assemble the CLI. Nothing runs until the returned app is called."""
    app = typer.Typer(
        name="shipyard",
        help="Take a trained model to production: MLflow -> ONNX/TensorRT -> model repository -> KServe.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    def serve(ctx: typer.Context) -> None:
        """Run the serving runtime (same flags as `python -m shipyard.serving_runtime --help`)."""
        from shipyard.serving_runtime.cli import main

        raise typer.Exit(main(list(ctx.args), prog="shipyard serve"))

    @app.command()
    def demo(
        workdir: str = typer.Option(".shipyard/demo", help="Where the demo keeps its MLflow store and repository."),
        serve_after: bool = typer.Option(True, "--serve/--no-serve", help="Keep serving the model until Ctrl-C."),
        http_port: int = typer.Option(8080, help="REST port of the served model (KServe's default)."),
        grpc_port: int = typer.Option(8081, help="gRPC port of the served model (KServe's default)."),
    ) -> None:
        """Run the main job end to end on the embedded default (local KFP, sqlite MLflow, local repository)."""
        from shipyard.demo import run_demo

        raise typer.Exit(run_demo(workdir, serve=serve_after, http_port=http_port, grpc_port=grpc_port))

    for module_name, _ in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part of shipyard is not built or installed
            raise
        module.register_commands(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    build_app()(args=argv if argv is not None else sys.argv[1:], prog_name="shipyard")
