"""Shared fixtures. ``run_cli`` runs the real console entry point (``dsv3ctl.cli.main``) in-process so
exit codes and the error mapping are exactly what users get."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    from dsv3ctl.cli import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["dsv3ctl", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec file from a dict (merged over nothing: missing keys take defaults)."""
    import yaml

    def write(data: dict, name: str = "dsv3.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data))
        return p

    return write
