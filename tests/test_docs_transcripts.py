"""docs/clients.md's transcript is what the commands do: every ``$ dsv3ctl ...`` line of its fenced blocks runs
again (parsed as a shell would, quotes and all) against the Triton protocol TEST DOUBLE
(tests/doubles/triton_server.py, started as the transcript starts it, on free ports), and its exit code must be
the ``[exit N]`` printed after it."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "clients.md"


def transcript() -> list[tuple[str, int]]:
    """(command line, documented exit code) for every ``$ dsv3ctl`` line followed by ``[exit N]``."""
    out: list[tuple[str, int]] = []
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)
    for block in blocks:
        cmd: str | None = None
        for line in block.splitlines():
            if line.startswith("$ dsv3ctl "):
                cmd = line[2:]
            elif cmd and (m := re.fullmatch(r"\[exit (\d+)\]", line.strip())):
                out.append((cmd, int(m.group(1))))
                cmd = None
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def double():
    """The double as the transcript starts it (same delays), on free ports; stopped by its PID."""
    grpc, http = _free_port(), _free_port()
    p = subprocess.Popen([sys.executable, "-m", "tests.doubles.triton_server", "--grpc-port", str(grpc),
                          "--http-port", str(http), "--ttft-ms", "50", "--itl-ms", "20"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", http), timeout=1), \
                    socket.create_connection(("127.0.0.1", grpc), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        p.kill()
        pytest.fail("the Triton test double did not start within 30 s")
    yield {"18001": str(grpc), "18000": str(http)}
    p.terminate()
    p.wait(10)


def test_the_transcript_has_commands():
    cmds = transcript()
    assert len(cmds) >= 8 and any(code != 0 for _, code in cmds)


@pytest.mark.parametrize(("line", "code"), transcript(), ids=[c for c, _ in transcript()])
def test_each_documented_command_exits_as_printed(double, tmp_path, line, code):
    for doc_port, port in double.items():
        line = line.replace(f"127.0.0.1:{doc_port}", f"127.0.0.1:{port}")
    args = [a.replace("/tmp/", f"{tmp_path}/") for a in shlex.split(line)]
    assert args[0] == "dsv3ctl"
    r = subprocess.run([sys.executable, "-m", "dsv3ctl", *args[1:]], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == code, f"{line}\n{r.stdout}\n{r.stderr}"
