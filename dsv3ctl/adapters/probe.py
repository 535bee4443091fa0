"""Capability probes: ask an installed tool which flags it accepts (its ``--help``) before a long step.

``convert`` and ``build-engine`` run for hours and the server ranks start on every node, so a flag the
installed tool does not know must be refused before the work starts, with the tool, its version and a fix.
The help text is read from the tool itself (the real convert_checkpoint.py / trtllm-build are argparse,
tritonserver prints its option table, trtllm-serve is click); every ``--flag`` token in it counts as
accepted. The flags dsv3ctl passes and their sources are in ``dsv3ctl/data/contracts/*.json``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

FLAG_RE = re.compile(r"(?<![\w-])--[A-Za-z0-9][A-Za-z0-9_-]*")


def emitted_flags(argv: Sequence[str]) -> list[str]:
    """The ``--flags`` in ``argv`` (the name before any ``=value``), in order, each once."""
    out: list[str] = []
    for a in argv:
        if a.startswith("--") and len(a) > 2:
            f = a.split("=", 1)[0]
            if f not in out:
                out.append(f)
    return out


@dataclass(frozen=True)
class HelpProbe:
    """What ``<tool> --help`` printed: the flags it lists, or why none could be read."""

    argv: tuple[str, ...]
    flags: frozenset[str]
    error: str = ""


def read_help(help_argv: Sequence[str], timeout_s: float = 300.0) -> HelpProbe:
    """Run ``help_argv`` (which ends in ``--help``) and collect the flags its output lists.

    The exit status is not trusted (some tools exit non-zero after printing help); no flags in the output,
    a missing executable or no answer within ``timeout_s`` seconds is an ``error``."""
    cmd = tuple(help_argv)
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        return HelpProbe(cmd, frozenset(), f"{cmd[0]}: not found")
    except subprocess.TimeoutExpired:
        return HelpProbe(cmd, frozenset(), f"`{' '.join(cmd)}` did not answer within {timeout_s:.0f} s")
    except OSError as e:
        return HelpProbe(cmd, frozenset(), f"{cmd[0]}: {e}")
    flags = frozenset(FLAG_RE.findall((r.stdout or "") + "\n" + (r.stderr or "")))
    if not flags:
        tail = " | ".join(((r.stderr or r.stdout or "").strip().splitlines() or ["no output"])[-3:])
        return HelpProbe(cmd, flags, f"`{' '.join(cmd)}` exited {r.returncode} and listed no flags ({tail})")
    return HelpProbe(cmd, flags)


def unaccepted(argv: Sequence[str], probe: HelpProbe) -> list[str]:
    """The flags of ``argv`` that ``probe`` did not list (empty when the probe itself failed)."""
    if probe.error:
        return []
    return [f for f in emitted_flags(argv) if f not in probe.flags]


def refusal(tool: str, version: str, missing: Sequence[str], fix: str) -> str:
    """One message: which flags, which tool and version, the fix."""
    s = "s" if len(missing) > 1 else ""
    return (f"{tool} ({version}) does not accept the flag{s} {', '.join(missing)} that dsv3ctl would pass; {fix}")
