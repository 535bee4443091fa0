"""The ``dsv3ctl`` command line: one module per noun, mounted here.

Heavy libraries (kubernetes, tritonclient, numpy, huggingface_hub, torch) are imported only inside the
commands that use them, so ``dsv3ctl --help`` stays fast. Errors derived from
:class:`dsv3ctl.errors.Dsv3Error` become one clean message and exit code 2 (spec/usage) or 1 (runtime);
a traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from dsv3ctl import __version__
from dsv3ctl.cli import clients as _clients
from dsv3ctl.cli import convert as _convert
from dsv3ctl.cli import deploy as _deploy
from dsv3ctl.cli import fabric as _fabric
from dsv3ctl.cli import image as _image
from dsv3ctl.cli import launch as _launch
from dsv3ctl.cli import plan as _plan
from dsv3ctl.cli import prepare as _prepare
from dsv3ctl.cli import repo as _repo
from dsv3ctl.cli import slurm as _slurm
from dsv3ctl.cli import smoke as _smoke
from dsv3ctl.cli import spec as _spec
from dsv3ctl.cli import weights as _weights
from dsv3ctl.cli._common import STATE

app = typer.Typer(
    name="dsv3ctl",
    help="Deploy DeepSeek-V3 on Triton + TensorRT-LLM across GPU nodes, from one spec file (dsv3.yaml).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # paragraphs of a docstring reflow to the terminal (rich mode keeps its line breaks)
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _flags_without_type() -> None:
    """Help shows ``--dry-run`` and ``--wait/--no-wait`` without a ``<bool>`` type: a flag takes no value.
    typer 0.29 renders every option's type through ``TyperOption.display_type_rich`` (typer/core.py), which
    returns ``self.metavar`` when set; a flag's is set to "" here (click's ``Option.is_flag``)."""
    from typer.core import TyperOption

    orig = TyperOption.display_type_rich
    if getattr(orig, "_dsv3ctl", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else orig(self, ctx)

    display_type_rich._dsv3ctl = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_type()


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
_fabric.register(app)
_image.register(app)
_slurm.register(app)
_weights.register(app)
_convert.register(app)
_smoke.register(app)


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

    real_stdout = sys.stdout
    sys.stdout = _StdoutGuard(real_stdout)  # type: ignore[assignment]
    try:
        app()
    except _ReaderGone:
        # the reader of stdout went away (`dsv3ctl plan | head -1`): what it wanted it got. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again (Python docs, signal module: "Note
        # on SIGPIPE") and exit 0. (click itself would exit 1 on EPIPE, so the guard raises its own type.)
        import os

        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, real_stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
            pass
        sys.exit(0)
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
    finally:
        sys.stdout = real_stdout


class _ReaderGone(Exception):  # noqa: N818 - not an error: the pipe's reader is done
    """stdout's reader closed the pipe."""


class _StdoutGuard:
    """sys.stdout that turns BrokenPipeError into :class:`_ReaderGone` (which click does not catch)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, s: str) -> int:
        try:
            return int(self._f.write(s))
        except BrokenPipeError:
            raise _ReaderGone from None

    def flush(self) -> None:
        try:
            self._f.flush()
        except BrokenPipeError:
            raise _ReaderGone from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)
