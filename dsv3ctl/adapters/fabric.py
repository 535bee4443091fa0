"""The fabric check, running part: start one short all-reduce benchmark over every rank (the worker
:mod:`dsv3ctl.adapters.fabric_worker`) with the same mpirun bootstrap and environment the server ranks get, or as a
local world of N processes; collect each rank's result line and NCCL's INFO lines from the output; judge them with
:func:`dsv3ctl.core.fabric.judge`; write ``<runtime_dir>/fabric-check.json`` (and the raw output next to it as
``fabric-check.log``) and log one line per message size.

The JSON document (``RESULT_FILE``)::

    {"status": "ok|warn|fail|off", "mode": ..., "backend": "nccl|gloo", "world": N, "nodes": K,
     "sizes": [{"bytes", "time_s", "max_time_s", "algbw_gbs", "busbw_gbs"}, ...],
     "min_busbw_gbps": float, "min_busbw_source": str, "problems": [{"code", "message", "fix"}], "notes": [...],
     "nccl": {"nccl_version", "ranks": {...}}, "finished_at": "<UTC ISO time>", "elapsed_s": float}
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv3ctl.core import fabric as F
from dsv3ctl.errors import RuntimeFailure
from dsv3ctl.fsutil import atomic_write_text

RESULT_FILE = "fabric-check.json"
LOG_FILE = "fabric-check.log"
MARKER = "DSV3CTL-FABRIC-RESULT "


@dataclass
class FabricOptions:
    """What the check needs from the spec: mode (off|warn|enforce, already resolved from ``auto``), the
    threshold (Gb/s, 0 = none) and its source text, RDMA facts for the messages, the backend and limits."""

    mode: str
    nodes: int
    rdma: bool
    rdma_resource: str = "rdma/ib"
    rdma_count: int = 1
    ib_hca: str = ""
    min_busbw_gbps: float = 0.0
    min_source: str = ""
    backend: str = "auto"
    sizes: Sequence[int] = ()
    iters: int = 5
    port: int = 29511
    timeout_s: float = 300.0
    python: str = field(default_factory=lambda: default_python())

    def worker_argv(self, master_addr: str, backend: str) -> list[str]:
        sizes = ["--sizes", ",".join(map(str, self.sizes))] if self.sizes else []  # else the worker's per backend
        return [self.python, worker_path(), "--master-addr", master_addr, "--master-port", str(self.port),
                "--backend", backend, *sizes, "--iters", str(self.iters), "--timeout-s", f"{self.timeout_s:g}"]


def worker_path() -> str:
    """The worker script's file (stdlib + torch only, so any interpreter with torch runs it as a plain file)."""
    from dsv3ctl.adapters import fabric_worker

    return str(Path(fabric_worker.__file__).resolve())


def default_python() -> str:
    """The interpreter that runs the worker: ``DSV3CTL_FABRIC_PYTHON``, else ``python3`` on PATH (in the image that is
    the system Python that holds the image's torch; dsv3ctl's own venv has no torch), else this interpreter."""
    return os.environ.get("DSV3CTL_FABRIC_PYTHON") or shutil.which("python3") or sys.executable


def options_from_spec(spec: Any, *, mode: str | None = None, rdma: bool | None = None,
                      backend: str = "auto") -> FabricOptions:
    """FabricOptions from a :class:`~dsv3ctl.core.spec.Spec`: ``launch.fabric_check`` (auto = enforce for more than one
    node, off for one), ``launch.fabric_min_busbw_gbps`` (0 = derived, :func:`dsv3ctl.core.fabric.default_min_busbw_gbps`),
    ``deploy.rdma``/``deploy.nccl.ib_hca`` for the messages. ``mode``/``rdma`` override."""
    lc, d, nodes = spec.launch, spec.deploy, spec.parallelism.nodes
    m = mode or lc.fabric_check
    if m == "auto":
        m = "enforce" if nodes > 1 else "off"
    rdma_on = d.rdma.enabled if rdma is None else rdma
    thr, src = F.default_min_busbw_gbps(nodes=nodes, rdma=rdma_on, rdma_count=d.rdma.count,
                                        explicit=lc.fabric_min_busbw_gbps)
    return FabricOptions(mode=m, nodes=nodes, rdma=rdma_on, rdma_resource=d.rdma.resource, rdma_count=d.rdma.count,
                         ib_hca=d.nccl.ib_hca, min_busbw_gbps=thr, min_source=src, backend=backend,
                         timeout_s=float(lc.fabric_timeout_s))


def results_from_output(text: str) -> dict[int, dict[str, Any]]:
    """rank -> the worker's result record, from ``DSV3CTL-FABRIC-RESULT <json>`` lines anywhere in ``text``."""
    out: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        i = line.find(MARKER)
        if i < 0:
            continue
        try:
            rec = json.loads(line[i + len(MARKER):])
        except ValueError:
            continue
        out[int(rec["rank"])] = rec
    return out


def evaluate(text: str, *, world: int, opts: FabricOptions, rc: int = 0) -> dict[str, Any]:
    """The result document for the combined output ``text`` of every rank (see the module docstring)."""
    recs = results_from_output(text)
    parsed = F.parse(text)
    backends = {r.get("backend") for r in recs.values()} - {None}
    backend = backends.pop() if len(backends) == 1 else ("mixed" if backends else opts.backend)
    notes = []
    if not recs and parsed.matched:  # NCCL lines of another program: the transport rules only
        backend = "nccl"
        notes.append("no benchmark result lines: transport checked, bandwidth not measured")
    failed = {r: rec["error"] for r, rec in recs.items() if rec.get("error")}
    if recs or not parsed.matched:
        for r in range(world):
            if r not in recs:
                failed[r] = f"no result line (the rank did not finish; launcher exit code {rc})"
    times = {r: [(int(s), float(t)) for s, t in rec.get("sizes", [])] for r, rec in recs.items() if not rec.get("error")}
    sizes = F.measure_sizes(times, world) if times and not failed else []
    log = parsed if backend == "nccl" else None
    nodes = (log.nnodes_max() if log else None) or len({r.get("host") for r in recs.values()}) or opts.nodes
    thr, src = opts.min_busbw_gbps, opts.min_source
    if src.startswith("derived"):  # derived from the spec's node count: use the nodes this run really had
        thr, src = F.default_min_busbw_gbps(nodes=nodes, rdma=opts.rdma, rdma_count=opts.rdma_count)
    v = F.judge(log, sizes, mode=opts.mode, world=world, rdma=opts.rdma, min_busbw_gbps=thr, min_source=src,
                rdma_resource=opts.rdma_resource, rdma_count=opts.rdma_count, ib_hca=opts.ib_hca,
                backend=backend if backend in ("nccl", "gloo") else "nccl",
                failed_ranks=failed)
    v.notes += notes
    doc = {**F.verdict_dict(v), "backend": backend, "world": world, "nodes": nodes,
           "sizes": [s.__dict__ for s in sizes], "min_busbw_gbps": thr, "min_busbw_source": src,
           "nccl": F.summarize(log),
           "torch": sorted({str(r.get("torch")) for r in recs.values()}),
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if doc["nccl"]:
        doc["nccl"]["ranks"] = dict(list(doc["nccl"]["ranks"].items())[:64])  # keep the file small
    return doc


def describe(doc: Mapping[str, Any]) -> list[str]:
    """Log lines: one per message size (bytes, time, algbw, busbw) and the verdict with each problem."""
    lines = [f"fabric check ({doc['backend']}, world {doc['world']}, {doc['nodes']} node(s)):"]
    for s in doc["sizes"]:
        lines.append(f"  {F._size(s['bytes']):>8}  {s['time_s'] * 1e6:10.1f} us  algbw {s['algbw_gbs']:8.2f} GB/s  "
                     f"busbw {s['busbw_gbs']:8.2f} GB/s")
    n = doc.get("nccl") or {}
    if n:
        tr = sorted({t for r in n.get("ranks", {}).values() for t in r.get("inter_node", [])})
        lines.append(f"  NCCL {n.get('nccl_version')}: inter-node {', '.join(tr) or 'none'}")
    thr = doc.get("min_busbw_gbps") or 0
    lines.append(f"  verdict: {doc['status']}" + (f" (threshold {thr:g} Gb/s: {doc['min_busbw_source']})" if thr else ""))
    for p in doc["problems"]:
        lines.append(f"  {p['code']}: {p['message']} [fix: {p['fix']}]")
    for note in doc.get("notes", []):
        lines.append(f"  note: {note}")
    return lines


STATUS_MARKER = "fabric-result "


def status_line(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The small summary the leader logs on one line (``fabric-result {...}``) for ``dsv3ctl status``: status,
    backend, world, nodes, busbw (GB/s) at the largest size, inter-node transports, problem codes, time."""
    last = max(doc.get("sizes") or [{}], key=lambda s: s.get("bytes", 0))
    ranks = (doc.get("nccl") or {}).get("ranks", {})
    return {"status": doc["status"], "backend": doc.get("backend"), "world": doc.get("world"),
            "nodes": doc.get("nodes"), "bytes": last.get("bytes"),
            "busbw_gbs": round(last["busbw_gbs"], 2) if "busbw_gbs" in last else None,
            "inter_node": sorted({t for r in ranks.values() for t in r.get("inter_node", [])}),
            "problems": [p["code"] for p in doc.get("problems", [])], "at": doc.get("finished_at")}


def status_from_log(text: str) -> dict[str, Any] | None:
    """The last ``fabric-result {...}`` summary in a leader's log, None when there is none."""
    found = None
    for line in text.splitlines():
        i = line.find(STATUS_MARKER + "{")
        if i >= 0:
            try:
                found = json.loads(line[i + len(STATUS_MARKER):])
            except ValueError:
                continue
    return found


def record(doc: dict[str, Any], text: str, runtime_dir: str | Path) -> Path:
    """Write ``fabric-check.json`` and ``fabric-check.log`` into ``runtime_dir`` (temp file + rename)."""
    d = Path(runtime_dir)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / LOG_FILE, text)
    p = d / RESULT_FILE
    atomic_write_text(p, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return p


def _run(argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> tuple[int, str]:
    try:
        r = subprocess.run(list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace", timeout=timeout_s)
        return r.returncode, r.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n[dsv3ctl] the fabric check did not finish within {timeout_s:g} s\n"
    except OSError as e:
        return 127, f"[dsv3ctl] cannot start {argv[0]}: {e}\n"


def run_mpi(*, mpirun_argv_for: Callable[[list[str]], list[str]], master_addr: str, world: int, opts: FabricOptions,
            env: Mapping[str, str]) -> tuple[int, str]:
    """Run the worker on every rank through ``mpirun_argv_for(rank_cmd)`` (the leader's own mpirun argv builder, so
    the hostfile, ssh config and forwarded environment are the server's). Bounded by ``opts.timeout_s`` + 60 s."""
    argv = mpirun_argv_for(opts.worker_argv(master_addr, opts.backend))
    return _run(argv, env, opts.timeout_s + 60)


def run_local(*, world: int, opts: FabricOptions, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """A local world: ``world`` worker processes on this host (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), one per GPU
    when NCCL is used. Returns (worst exit code, every rank's output concatenated)."""
    base = dict(os.environ if env is None else env)
    procs = []
    argv = opts.worker_argv("127.0.0.1", opts.backend)
    for r in range(world):
        e = {**base, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r)}
        for k in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_RANK",
                  "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
            e.pop(k, None)
        procs.append(subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      errors="replace"))
    deadline = time.monotonic() + opts.timeout_s + 60
    outs, rc = [], 0
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            out += f"\n[dsv3ctl] rank did not finish within {opts.timeout_s + 60:g} s\n"
            p.returncode = 124
        outs.append(out)
        rc = rc or p.returncode
    return rc, "".join(outs)


def check(*, run: Callable[[], tuple[int, str]], world: int, opts: FabricOptions, runtime_dir: str | Path,
          log: Callable[[str], None]) -> dict[str, Any]:
    """Run, judge, record and log one fabric check. RuntimeFailure (exit 1) when the verdict is ``fail`` (enforce),
    naming every problem and its fix; a ``warn`` verdict is logged only. Mode off: nothing runs."""
    if opts.mode == "off":
        log("fabric check: off (launch.fabric_check)")
        return {"status": "off", "mode": "off"}
    log(f"fabric check ({opts.mode}): all-reduce over {world} ranks (NCCL_DEBUG=INFO captured when NCCL runs)")
    t0 = time.monotonic()
    rc, text = run()
    doc = evaluate(text, world=world, opts=opts, rc=rc)
    doc["elapsed_s"] = round(time.monotonic() - t0, 2)
    path = record(doc, text, runtime_dir)
    for line in describe(doc):
        log(line)
    log(f"fabric check result written to {path}")
    log(STATUS_MARKER + json.dumps(status_line(doc), separators=(",", ":")))
    if doc["status"] == "fail":
        raise RuntimeFailure("fabric check failed:\n  " + "\n  ".join(f"{p['message']} (fix: {p['fix']})"
                                                                        for p in doc["problems"]),
                             hint=f"details in {path} and {Path(runtime_dir) / LOG_FILE}; launch.fabric_check: warn "
                                  "starts the server anyway")
    return doc
