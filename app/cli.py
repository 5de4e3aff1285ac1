"""The ``shipyard`` command: one entry point, sub-commands owned by each package.

Each package contributes its commands through a ``register_commands(app)`` function so this
file stays a table of contents; heavy imports happen inside the command bodies.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import traceback
import warnings

import typer

# (module, what it adds); a module that is not installed is skipped with a note in --help.
_COMMAND_MODULES = (
    ("shipyard.components.cli", "register, export, optimize, validate, publish, promote"),
    ("shipyard.pipelines.cli", "pipeline run/compile/submit, deploy"),
    ("shipyard.components.score.cli", "score"),
    ("shipyard.components.promotion.cli", "promotion serve (MLflow webhooks -> canary rollouts)"),
)


# --help needs room for option names and their help; rich would otherwise fit it into 80 columns when
# the output is not a terminal (pipes, CI logs) and cut names such as --prometheus-url.
HELP_MIN_WIDTH = 120


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"shipyard {version('shipyard')}")
        except PackageNotFoundError:
            typer.echo("shipyard (not installed as a package)")
        raise typer.Exit(0)


def _widen_help() -> None:
    import typer.rich_utils

    if not os.environ.get("TERMINAL_WIDTH"):
        typer.rich_utils.MAX_WIDTH = max(shutil.get_terminal_size((HELP_MIN_WIDTH, 24)).columns, HELP_MIN_WIDTH)


def build_app() -> typer.Typer:
    """Assemble the CLI. Nothing runs until the returned app is called."""
    _widen_help()
    app = typer.Typer(
        name="shipyard",
        help="Take a trained model to production: MLflow -> ONNX/TensorRT -> model repository -> KServe.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def options(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
        debug: bool = typer.Option(False, "--debug", help="On an error, print the traceback too."),
    ) -> None:
        """Take a trained model to production: MLflow -> ONNX/TensorRT -> model repository -> KServe."""

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
    """Console-script entry point: one line and exit code 2 for a user error, 3 for a failed gate, 1 for a bug.

    ``--debug`` (before the command) or ``SHIPYARD_DEBUG=1`` also prints the traceback.
    """
    from shipyard.components.user_errors import classify

    args = list(argv if argv is not None else sys.argv[1:])
    debug = bool(os.environ.get("SHIPYARD_DEBUG")) or "--debug" in args
    try:
        with warnings.catch_warnings():
            if not debug:  # libraries' deprecation notes are not the user's business; --debug shows them
                warnings.simplefilter("ignore")
            build_app()(args=args, prog_name="shipyard")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # the one place every command's errors end up
        outcome = classify(exc)
        if debug:
            traceback.print_exc()
        print(f"error: {outcome.message}", file=sys.stderr)
        sys.exit(outcome.code)
