"""The ``dsv3ctl`` command line: one module per noun, mounted here.

Heavy libraries (kubernetes, tritonclient, numpy, huggingface_hub, torch) are imported only inside the
commands that use them, so ``dsv3ctl --help`` stays fast. Errors derived from
:class:`dsv3ctl.errors.Dsv3Error` become one clean message and exit code 2 (spec/usage) or 1 (runtime);
a traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dsv3ctl import __version__
from dsv3ctl.cli import clients as _clients
from dsv3ctl.cli import convert as _convert
from dsv3ctl.cli import deploy as _deploy
from dsv3ctl.cli import image as _image
from dsv3ctl.cli import launch as _launch
from dsv3ctl.cli import plan as _plan
from dsv3ctl.cli import prepare as _prepare
from dsv3ctl.cli import repo as _repo
from dsv3ctl.cli import slurm as _slurm
from dsv3ctl.cli import spec as _spec
from dsv3ctl.cli import weights as _weights
from dsv3ctl.cli._common import STATE

app = typer.Typer(
    name="dsv3ctl",
    help="Deploy DeepSeek-V3 on Triton + TensorRT-LLM across GPU nodes, from one spec file (dsv3.yaml).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dsv3ctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail (repeat for more).")] = 0,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    STATE.verbose = verbose
    STATE.debug = debug


# Mounts: a noun module registers its commands on ``app`` (top-level verbs) or exposes a Typer group.
_spec.register(app)
_plan.register(app)
_deploy.register(app)
_prepare.register(app)
_clients.register(app)
_repo.register(app)
_launch.register(app)
_image.register(app)
_slurm.register(app)
_weights.register(app)
_convert.register(app)


def _json_mode(argv: list[str]) -> bool:
    """Whether the command line asked for ``--output json`` (errors then go out as a JSON document too)."""
    for i, a in enumerate(argv):
        if a in ("-o", "--output") and i + 1 < len(argv) and argv[i + 1] == "json":
            return True
        if a in ("--output=json", "-ojson"):
            return True
    return False


def _report(message: str, hint: str | None, code: int) -> None:
    """One clean error: a JSON document on stdout with ``--output json``, else ``error:``/``fix:`` on stderr."""
    if _json_mode(sys.argv[1:]):
        import json

        sys.stdout.write(json.dumps({"error": message, "hint": hint, "exit_code": code}, indent=2) + "\n")
    else:
        from rich.console import Console
        from rich.markup import escape

        con = Console(stderr=True, highlight=False, soft_wrap=True)
        con.print(f"[bold red]error:[/] {escape(message)}")
        if hint:
            con.print(f"[bold]fix:[/] {escape(hint)}")
    sys.exit(code)


def main() -> None:
    """Console-script entry point: run the app and map errors to exit codes (2 spec/usage, 1 runtime)."""
    from dsv3ctl.errors import Dsv3Error

    try:
        app()
    except Dsv3Error as err:
        if STATE.debug:
            raise
        _report(err.message, err.hint, err.exit_code)
    except OSError as err:
        # A file-system or network error no adapter mapped: still one line, never a traceback.
        if STATE.debug:
            raise
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        _report(f"{err.strerror or err}{where}", "rerun with --debug for the traceback", 1)
    except KeyboardInterrupt:
        sys.exit(130)
