"""Shared CLI pieces: option aliases (typer ``Annotated``), the output sink and global state.

Every command that prints data takes ``--output table|json`` (:data:`OutputOpt`) and prints through
:class:`Sink`, so JSON mode never mixes with human text (human text goes to stderr in JSON mode).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from dsv3ctl.core.spec import Spec


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class State:
    """Global flags set by the root callback."""

    verbose: int = 0
    debug: bool = False


STATE = State()

SpecOpt = Annotated[
    Path | None,
    typer.Option("--spec", "-f", help="Deployment spec (dsv3.yaml); default: the embedded default spec.",
                 envvar="DSV3CTL_SPEC", show_envvar=True),
]
OutputOpt = Annotated[OutputFormat, typer.Option("--output", "-o", help="Output format.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would be done, change nothing.")]


def load(spec_path: Path | None) -> Spec:
    from dsv3ctl.core.spec import load_spec

    return load_spec(spec_path)


class Sink:
    """One place where commands print. ``json`` mode prints exactly one JSON document on stdout."""

    def __init__(self, output: OutputFormat = OutputFormat.table) -> None:
        self.json = output == OutputFormat.json
        self._out: Console | None = None
        self._err: Console | None = None

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            self._out = Console(highlight=False, soft_wrap=True)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    def info(self, text: str) -> None:
        """Human progress text: stdout in table mode, stderr in JSON mode."""
        (self.err if self.json else self.out).print(text)

    def emit(self, data: Any, human: Callable[[Console], None] | None = None) -> None:
        """Print ``data`` as JSON, or call ``human(console)`` to render it for people."""
        if self.json or human is None:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            sys.stdout.flush()
        else:
            human(self.out)
