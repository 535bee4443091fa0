"""Shared fixtures. ``run_cli`` runs the real console entry point (``dsv3ctl.cli.main``) in-process so
exit codes and the error mapping are exactly what users get."""

from __future__ import annotations

import os
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


# --- local Kubernetes testbed (docs/testbed.md) ------------------------------------------------------


@pytest.fixture(scope="session")
def testbed(request):
    """The local cluster on 127.0.0.1 (``dsv3ctl.adapters.testbed``), started once per test session.

    Tests get a cluster of their own in ``<checkout>/.run/testbed-pytest`` (``$DSV3CTL_PYTEST_TESTBED_DIR``
    overrides), never the one ``make testbed-up`` / ``make demo`` run in ``.run/testbed``: a user's release
    there (the demo's holds all 16 fake GPUs) must not make tests fail, and tests must not touch it.
    Reuses a healthy cluster already running in that directory (another session); stops it at the end
    only if a test session started it and no other session still uses it (``DSV3CTL_TESTBED_KEEP=1``
    keeps it). Returns a :class:`dsv3ctl.adapters.testbed.Testbed` with
    ``kubeconfig``, ``bin_dir``, ``env``, ``helm``, ``helm3``, ``kubectl``, ``kubeconform``, ``lws_crd_dir``,
    ``nodes``, ``real_nodes``, ``load_image()`` and ``api_client()``. On failure the component log tails are
    printed. Real nodes (``DSV3CTL_REAL_NODES``, default 2) are started only when a collected test is marked
    ``realnodes``; a kwok-only session never changes the host.
    """
    import contextlib

    from dsv3ctl.adapters import testbed as tb
    from dsv3ctl.errors import Dsv3Error

    run_dir = Path(os.environ.get("DSV3CTL_PYTEST_TESTBED_DIR") or Path(__file__).resolve().parents[1] / ".run" / "testbed-pytest")
    # real nodes (kubelet + containerd, ~10 s and host changes) only when a collected test needs them
    wants_real = any(item.get_closest_marker("realnodes") for item in request.session.items)
    try:
        handle = tb.acquire(run_dir=run_dir, real_nodes=tb.default_real_nodes() if wants_real else 0)
    except Dsv3Error as e:
        pytest.fail(f"testbed did not come up: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), pytrace=False)
    failed_before = request.session.testsfailed
    yield handle
    if request.session.testsfailed > failed_before:
        capman = request.config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            print(f"\n[testbed] tests failed; component log tails ({handle.run_dir / 'logs'}):", file=sys.stderr)
            print(handle.log_tails(20), file=sys.stderr)
    tb.release(handle)
