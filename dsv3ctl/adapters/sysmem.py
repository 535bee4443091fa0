"""Host memory a long step may use, and what to say when the kernel killed one.

The budget is the smaller of ``MemAvailable`` (``/proc/meminfo``) and what the process's memory cgroup still
allows, because inside a container (a Kubernetes pod with ``resources.limits.memory``) the cgroup limit is hit
long before the host's memory runs out, and then the OOM killer sends SIGKILL. Sources (torvalds/linux):

- cgroup v2, Documentation/admin-guide/cgroup-v2.rst @ c0002d11: ``memory.max`` (the hard limit, "max" when
  unlimited; over it the OOM killer is invoked), ``memory.current`` (usage including page cache) and
  ``memory.stat`` ``inactive_file`` (reclaimable page cache); the process's cgroup is the ``0::<path>`` line of
  ``/proc/self/cgroup``, and every ancestor's limit applies too.
- cgroup v1, Documentation/admin-guide/cgroup-v1/memory.rst @ 6df4ad70: ``memory.limit_in_bytes``,
  ``memory.usage_in_bytes``, ``memory.stat`` ``total_inactive_file``.

What a cgroup still allows = limit - (usage - inactive page cache): the page cache is reclaimed before the OOM
killer runs.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages)


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes: ``available`` = min(``meminfo_available``, ``cgroup_available``), each 0 when unreadable / None
    when there is no cgroup limit; ``cgroup_limit`` the tightest limit found; ``source`` names the binding one."""

    available: int
    meminfo_available: int
    cgroup_limit: int | None
    cgroup_available: int | None
    source: str


def _read_int(p: Path) -> int | None:
    try:
        text = p.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(p: Path, key: str) -> int:
    try:
        for line in p.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def meminfo_available(proc: Path = Path("/proc")) -> int:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (0 when unreadable)."""
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_dirs(proc: Path, root: Path) -> list[tuple[Path, str]]:
    """(directory, version) of the process's memory cgroup and its ancestors, innermost first."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    out: list[tuple[Path, str]] = []
    for line in lines:
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if hid == "0" and ctrls == "":  # v2 unified hierarchy
            base, ver = root, "v2"
        elif "memory" in ctrls.split(","):
            base, ver = root / "memory", "v1"
        else:
            continue
        rel = Path(path.lstrip("/"))
        chain = [rel, *rel.parents] if str(rel) not in ("", ".") else [Path(".")]
        for r in chain:
            d = base / r
            if d.is_dir():
                out.append((d, ver))
    return out


def budget(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> MemoryBudget:
    """The host memory a step may use now (see the module docstring)."""
    mem = meminfo_available(proc)
    best: tuple[int, int, str] | None = None  # (available, limit, where)
    for d, ver in _cgroup_dirs(proc, cgroup_root):
        if ver == "v2":
            limit, usage, cache = _read_int(d / "memory.max"), _read_int(d / "memory.current"), \
                _stat_value(d / "memory.stat", "inactive_file")
        else:
            limit, usage, cache = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes"), \
                _stat_value(d / "memory.stat", "total_inactive_file")
        if limit is None or limit >= UNLIMITED:
            continue
        avail = max(0, limit - max(0, (usage or 0) - cache))
        if best is None or avail < best[0]:
            best = (avail, limit, f"cgroup {ver} {d}")
    if best is None:
        return MemoryBudget(mem, mem, None, None, "MemAvailable")
    if mem and mem <= best[0]:
        return MemoryBudget(mem, mem, best[1], best[0], "MemAvailable")
    return MemoryBudget(best[0], mem, best[1], best[0], best[2])


def available_bytes() -> int:
    """:attr:`MemoryBudget.available` of :func:`budget` (0 when nothing is readable)."""
    return budget().available


def killed_message(rc: int, what: str, need_bytes: int | None, flag: str) -> str | None:
    """For an exit status that means SIGKILL (``-9`` from subprocess, ``137`` from a shell), the sentence that
    names the likely cause (the kernel's OOM killer), dsv3ctl's estimate of the memory the step needed, the
    budget now, and ``flag``, which lowers it. None for any other status."""
    if rc not in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return None
    b = budget()
    est = f"dsv3ctl estimated it needs about {need_bytes / GIB:.1f} GiB" if need_bytes else "no estimate"
    cg = f", cgroup limit {b.cgroup_limit / GIB:.1f} GiB" if b.cgroup_limit else ""
    return (f"{what} was killed by SIGKILL: the kernel's OOM killer is the likely cause ({est}; "
            f"{b.available / GIB:.1f} GiB available now by {b.source}{cg}); lower it with {flag}, or give the "
            "step more memory")
