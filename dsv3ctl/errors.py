"""Errors that the CLI maps to exit codes and one clean message (no traceback unless ``--debug``).

- :class:`SpecError` (exit 2): bad spec, bad usage or a layout that cannot work. The message names the
  field, the rule and a valid alternative.
- :class:`RuntimeFailure` (exit 1): something outside failed (a tool, the cluster, a file on disk).
"""

from __future__ import annotations


class Dsv3Error(Exception):
    """Base class; ``exit_code`` is what the CLI exits with, ``hint`` an optional fix line."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class SpecError(Dsv3Error):
    """Invalid spec or usage: exit code 2."""

    exit_code = 2


class RuntimeFailure(Dsv3Error):
    """A runtime failure outside the spec: exit code 1."""

    exit_code = 1
