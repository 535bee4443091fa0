"""The group fabric check, pure part: read what NCCL chose from its ``NCCL_DEBUG=INFO`` lines, compute bus bandwidth
per message size, and judge the result (ok / warn / fail) with the likely cause and the spec key that fixes it.

Sources:
- NCCL's log line formats: ``dsv3ctl/data/contracts/nccl_info_lines.json`` (NVIDIA/nccl v2.28.9-1 @ dbc86fd0, each
  line's file and line number there; the same formats checked at v2.23.4-1 and v2.27.7-1). The parser reads its
  regexes from that file, never from literals here.
- Bus bandwidth for all-reduce (NVIDIA/nccl-tests @ a0b82b22 ``doc/PERFORMANCE.md`` lines 50-63 and
  ``src/all_reduce.cu`` ``AllReduceGetBw`` lines 59-65): ``algbw = bytes / 1e9 / seconds`` (GB/s) and
  ``busbw = algbw * 2 (n - 1) / n`` for ``n`` ranks. nccl-tests averages the per-rank time across ranks by default
  (``src/common.cu``: ``average = 1``, ``Allreduce(args, &deltaSec, average)``); :func:`measure_sizes` does the same.
- A channel over ``NET/<name>`` crosses nodes (``src/transport/net.cc``); ``P2P``, ``SHM`` and ``NVLS`` stay inside
  one node (``src/transport/p2p.cc``, ``shm.cc``, ``nvls.cc``).

Units: message sizes in bytes, times in seconds, bandwidths in GB/s (1e9 bytes/s, the unit of nccl-tests' algbw and
busbw columns); the spec threshold ``launch.fabric_min_busbw_gbps`` is in Gb/s (1e9 bits/s, the unit NICs are sold
in), so ``GB/s x 8 = Gb/s``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from dsv3ctl.core import contracts

#: Line rate assumed per RDMA resource unit when ``launch.fabric_min_busbw_gbps`` is 0 (derived): NDR InfiniBand,
#: 400 Gb/s per port (ConnectX-7), the HCA of the H100/H200 reference systems.
NIC_GBPS = 400.0
#: Fraction of the RDMA line rate the all-reduce bus bandwidth must reach at the largest size for the derived default.
MIN_FRACTION = 0.5
MODES = ("off", "warn", "enforce")


@dataclass(frozen=True)
class Channel:
    """One connection NCCL set up, as one rank logged it: ``src -> dst`` on ``channel`` over ``transport``
    (``NET/IB``, ``NET/Socket``, ``NET/<plugin>``, ``P2P``, ``SHM``, ``COLLNET/<name>``); ``net_dev`` indexes the
    rank's device list of that network (``device`` is its name when the ``NET/<name> : Using`` line was seen)."""

    reporter: int
    host: str
    channel: int
    src: int
    dst: int
    transport: str
    detail: str = ""
    net_dev: int | None = None
    device: str | None = None
    direction: str = ""

    @property
    def is_net(self) -> bool:
        return self.transport.startswith(("NET/", "COLLNET/"))


@dataclass
class Process:
    """What one process (``host:pid`` of the log prefix) logged: its rank, the networks it found and chose."""

    host: str
    pid: int
    rank: int | None = None
    nranks: int | None = None
    nnodes: int | None = None
    network: str | None = None  # "Using network <name>"
    ib_devices: list[str] = field(default_factory=list)  # "mlx5_0:1/IB" ...
    ib_none: bool = False
    socket_devices: list[str] = field(default_factory=list)  # "eth0" ...
    warnings: list[str] = field(default_factory=list)


@dataclass
class NcclLog:
    """Everything :func:`parse` found: NCCL version, processes, channels, lines it recognised."""

    version: str | None = None
    cuda: str | None = None
    processes: dict[tuple[str, int], Process] = field(default_factory=dict)
    channels: list[Channel] = field(default_factory=list)
    nvls: bool | None = None
    matched: int = 0

    def by_rank(self) -> dict[int, Process]:
        return {p.rank: p for p in self.processes.values() if p.rank is not None}

    def rank_hosts(self) -> dict[int, str]:
        return {r: p.host for r, p in self.by_rank().items()}

    def nnodes_max(self) -> int | None:
        """The largest ``nNodes`` any rank logged (``comm_info`` line), None when none did."""
        ns = [p.nnodes for p in self.processes.values() if p.nnodes]
        return max(ns) if ns else None

    def transports(self, rank: int | None = None) -> dict[int, set[str]]:
        """rank -> transports of the NET channels that rank logged (``{"NET/IB"}``, ``{"NET/Socket"}``...)."""
        out: dict[int, set[str]] = {}
        for c in self.channels:
            if c.is_net and (rank is None or c.reporter == rank):
                out.setdefault(c.reporter, set()).add(c.transport)
        return out


@cache
def _formats() -> dict[str, tuple[re.Pattern[str], re.Pattern[str] | None]]:
    c = contracts.load("nccl_info_lines")
    out = {}
    for name, it in c.items.items():
        entry = it.extra.get("entry_regex")
        out[name] = (re.compile(it.extra["regex"]), re.compile(entry) if entry else None)
    return out


def source() -> str:
    """``NVIDIA/nccl@<commit>`` the formats were read at (for messages and the result file)."""
    c = contracts.load("nccl_info_lines")
    return f"{c.source['repo']} {c.source['ref']} @ {c.source['commit'][:12]}"


_CHANNEL_KINDS = ("net_send", "net_send_proxy", "net_receive", "p2p_direct", "p2p_cumem", "p2p_ipc", "p2p_indirect",
                  "shm", "collnet")


def parse(text: str | Iterable[str]) -> NcclLog:
    """Parse NCCL INFO/WARN lines (any mix of ranks and hosts, other lines ignored) into an :class:`NcclLog`."""
    f = _formats()
    log = NcclLog()
    lines = text.splitlines() if isinstance(text, str) else text
    pinfo, pwarn = f["prefix_info"][0], f["prefix_warn"][0]
    for raw in lines:
        line = raw.rstrip("\r\n")
        m = pinfo.match(line)
        warn = None
        if not m:
            warn = pwarn.match(line)
            if not warn:
                continue
            m = warn
        key = (m["host"], int(m["pid"]))
        proc = log.processes.setdefault(key, Process(host=m["host"], pid=int(m["pid"])))
        msg = m["msg"].strip()
        if warn:
            proc.warnings.append(msg)
            log.matched += 1
            continue
        if _interpret(log, proc, msg, f):
            log.matched += 1
    return log


def _interpret(log: NcclLog, proc: Process, msg: str,
               f: Mapping[str, tuple[re.Pattern[str], re.Pattern[str] | None]]) -> bool:
    if (m := f["version"][0].match(msg)):
        log.version, log.cuda = m["version"] + m["suffix"], m["cuda"]
        return True
    if (m := f["using_network"][0].match(msg)):
        proc.network = m["net"]
        return True
    for k in ("comm_info", "init_complete"):
        if (m := f[k][0].match(msg)) and proc.rank is None:
            proc.rank, proc.nranks = int(m["rank"]), int(m["nranks"])
        if m and k == "comm_info":
            proc.nnodes = int(m["nnodes"])
        if m:
            return True
    if f["ib_none"][0].match(msg):
        proc.ib_none = True
        return True
    rx, entry = f["ib_devices"]
    if (m := rx.match(msg)):
        assert entry is not None
        proc.ib_devices = [f"{e['name']}:{e['port']}/{e['link']}" for e in entry.finditer(m["devs"])]
        return True
    rx, entry = f["socket_devices"]
    if (m := rx.match(msg)):
        assert entry is not None
        proc.socket_devices = [e["name"] for e in entry.finditer(m["devs"])]
        return True
    if (m := f["nvls_support"][0].match(msg)):
        log.nvls = (log.nvls or False) or not m["not"]
        return True
    for k in _CHANNEL_KINDS:
        if (m := f[k][0].match(msg)):
            log.channels.append(_channel(k, m, proc))
            return True
    return False


def _channel(kind: str, m: re.Match[str], proc: Process) -> Channel:
    g = m.groupdict()
    src, dst = int(g["src"]), int(g["src"] if kind == "collnet" else g["dst"])
    direction = g.get("dir") or "send"
    reporter = dst if direction == "receive" and kind != "collnet" else src
    if proc.rank is None:
        proc.rank = reporter
    if kind.startswith("net") or kind == "collnet":
        net = g["net"]
        transport = ("COLLNET/" if kind == "collnet" else "NET/") + net
        dev = int(g["net_dev"])
        names = proc.ib_devices if net == "IB" else proc.socket_devices if net == "Socket" else []
        name = names[dev] if dev < len(names) else None
        return Channel(reporter, proc.host, int(g["channel"]), src, dst, transport, g.get("flags") or "", dev,
                       name.split(":")[0] if name else None, direction)
    transport = "SHM" if kind == "shm" else "P2P"
    return Channel(reporter, proc.host, int(g["channel"]), src, dst, transport, g.get("detail") or "", None, None,
                   direction)


# ------------------------------------------------------------------------------------------------ bandwidth


def busbw(algbw: float, nranks: int) -> float:
    """All-reduce bus bandwidth from algorithm bandwidth: ``algbw * 2 (n - 1) / n`` (nccl-tests ``AllReduceGetBw``).
    0 for one rank (nothing crosses a link)."""
    if nranks < 1:
        raise ValueError(f"nranks={nranks}: must be >= 1")
    return algbw * 2 * (nranks - 1) / nranks


@dataclass(frozen=True)
class SizeResult:
    """One message size: bytes, mean time per all-reduce across ranks (s), slowest rank's time (s), GB/s."""

    bytes: int
    time_s: float
    max_time_s: float
    algbw_gbs: float
    busbw_gbs: float


def measure_sizes(times: Mapping[int, Sequence[tuple[int, float]]], nranks: int) -> list[SizeResult]:
    """Per-size results from each rank's ``[(bytes, seconds per all-reduce), ...]``: the time is the mean over ranks
    (nccl-tests' default ``-a 1``), ``algbw = bytes / 1e9 / time`` and :func:`busbw`. Sorted by size."""
    per: dict[int, list[float]] = {}
    for _rank, rows in times.items():
        for size, sec in rows:
            per.setdefault(int(size), []).append(float(sec))
    out = []
    for size in sorted(per):
        ts = per[size]
        mean = sum(ts) / len(ts)
        alg = size / 1e9 / mean if mean > 0 else 0.0
        out.append(SizeResult(size, mean, max(ts), alg, busbw(alg, nranks)))
    return out


def default_min_busbw_gbps(*, nodes: int, rdma: bool, rdma_count: int, explicit: float = 0.0) -> tuple[float, str]:
    """(threshold in Gb/s, how it was derived). ``explicit`` > 0 (``launch.fabric_min_busbw_gbps``) wins; else, for
    a multi-node group with RDMA on, ``MIN_FRACTION x rdma_count x NIC_GBPS``; else 0 (no threshold: inside one node
    or over TCP there is no line rate to hold the bus bandwidth to)."""
    if explicit > 0:
        return explicit, f"launch.fabric_min_busbw_gbps={explicit:g}"
    if nodes > 1 and rdma:
        v = MIN_FRACTION * rdma_count * NIC_GBPS
        return v, (f"derived: {MIN_FRACTION:g} x deploy.rdma.count={rdma_count} x {NIC_GBPS:g} Gb/s (NDR per RDMA "
                   "resource); set launch.fabric_min_busbw_gbps to override")
    return 0.0, "none (one node or RDMA off); set launch.fabric_min_busbw_gbps to require one"


def plan_statement(spec: Any) -> str:
    """One line for ``dsv3ctl plan``: the fabric check's mode (``launch.fabric_check``, auto resolved) and its bus
    bandwidth threshold with how it was derived (:func:`default_min_busbw_gbps`)."""
    lc, nodes, rdma = spec.launch, spec.parallelism.nodes, spec.deploy.rdma
    mode = lc.fabric_check if lc.fabric_check != "auto" else ("enforce" if nodes > 1 else "off")
    if mode == "off":
        return (f"fabric check off (launch.fabric_check={lc.fabric_check}, {nodes} node(s)); warn or enforce runs an "
                "all-reduce over the world before the server starts")
    thr, src = default_min_busbw_gbps(nodes=nodes, rdma=rdma.enabled, rdma_count=rdma.count,
                                      explicit=lc.fabric_min_busbw_gbps)
    need = f"all-reduce busbw at 1 GiB >= {thr:g} Gb/s ({thr / 8:g} GB/s; {src})" if thr else f"no busbw threshold ({src})"
    sock = "; NET/Socket between nodes fails it (deploy.rdma.enabled)" if rdma.enabled else ""
    return f"fabric check {mode} (launch.fabric_check={lc.fabric_check}): {need}{sock}"


# -------------------------------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Problem:
    """One failed rule: ``code`` (socket | busbw | disagree | no_lines | rank_failed), the message with the likely
    cause, and the spec key that fixes it."""

    code: str
    message: str
    fix: str


@dataclass
class Verdict:
    """``status``: ok | warn | fail | off. ``problems`` empty when ok."""

    status: str
    mode: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def summary(self) -> str:
        if not self.problems:
            return f"{self.status}" + (f" ({'; '.join(self.notes)})" if self.notes else "")
        return f"{self.status}: " + " | ".join(p.message for p in self.problems)


RDMA_KEYS = ("deploy.rdma.enabled", "deploy.rdma.resource", "deploy.rdma.count", "deploy.nccl.ib_hca",
             "deploy.nccl.extra_env")


def _socket_cause(procs: Sequence[Process], rdma_resource: str, rdma_count: int, ib_hca: str) -> tuple[str, str]:
    """(likely cause, spec key) of a NET/Socket channel while RDMA is on, from what those processes logged."""
    warns = " ".join(w for p in procs for w in p.warnings).lower()
    if any(s in warns for s in ("ibv_reg_mr", "cannot allocate memory", "memlock", "rlimit")):
        return ("registering RDMA memory failed (NCCL WARN about ibv_reg_mr/memlock): the memlock limit is not "
                "unlimited or the container lacks IPC_LOCK; the chart adds IPC_LOCK with deploy.rdma.enabled, the "
                "node's container runtime must allow memlock=-1", "deploy.rdma.enabled")
    if any(p.ib_none for p in procs) and not any(p.ib_devices for p in procs):
        hca = f" or NCCL_IB_HCA={ib_hca!r} (deploy.nccl.ib_hca) matches no HCA" if ib_hca else ""
        plugin = (f"the RDMA device plugin resource {rdma_resource} x {rdma_count} was not granted or exposes no HCA"
                  if rdma_resource else "no RDMA resource is requested (deploy.rdma.resource='') and the pod's "
                                        "network attachments brought no HCA")
        return (f"NCCL found no InfiniBand/RoCE device in the pod ('NET/IB : No device found.'): {plugin}{hca}",
                "deploy.rdma.resource")
    if any(p.ib_devices for p in procs):
        devs = sorted({d for p in procs for d in p.ib_devices})
        roce = any(d.endswith("/RoCE") for d in devs)
        gid = ("; on RoCE a wrong GID index (NCCL_IB_GID_INDEX, set through deploy.nccl.extra_env) makes the IB "
               "plugin fail to connect") if roce else ""
        return (f"NCCL saw HCAs {', '.join(devs)} but chose sockets: NCCL_IB_HCA (deploy.nccl.ib_hca={ib_hca!r}) may "
                f"name ports that are down, or NCCL_IB_DISABLE is set{gid}", "deploy.nccl.ib_hca")
    return (f"no NET/IB line at all: the IB plugin did not load or the RDMA resource {rdma_resource or '(none)'} is missing "
            "(is NCCL_IB_DISABLE=1 set? is /dev/infiniband in the pod?)", "deploy.rdma.resource")


def judge(log: NcclLog | None, sizes: Sequence[SizeResult], *, mode: str, world: int, rdma: bool,
          min_busbw_gbps: float = 0.0, min_source: str = "", rdma_resource: str = "rdma/ib", rdma_count: int = 1,
          ib_hca: str = "", backend: str = "nccl", failed_ranks: Mapping[int, str] | None = None) -> Verdict:
    """The verdict of one fabric check.

    Rules (each a :class:`Problem` naming the likely cause and the spec key that fixes it):
    - ``socket``: RDMA is on and a rank's inter-node channel goes over ``NET/Socket``;
    - ``disagree``: ranks use different inter-node transports (some IB, some sockets), or chose different networks;
    - ``busbw``: the bus bandwidth at the largest size is below ``min_busbw_gbps`` (Gb/s; 0 = no threshold);
    - ``no_lines``: NCCL backend but no INFO lines from some ranks (NCCL_DEBUG not INFO), so nothing can be checked;
    - ``rank_failed``: a rank's benchmark failed (its error is quoted).
    ``mode`` enforce -> status fail on any problem, warn -> warn; off -> status off, no rules.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {', '.join(MODES)}")
    v = Verdict(status="off" if mode == "off" else "ok", mode=mode)
    if mode == "off":
        return v
    probs: list[Problem] = []
    for r, err in sorted((failed_ranks or {}).items()):
        probs.append(Problem("rank_failed", f"rank {r}: the all-reduce benchmark failed: {err}", "launch.fabric_check"))
    if backend == "nccl" and log is not None:
        by_rank = log.by_rank()
        missing = [r for r in range(world) if r not in by_rank]
        if missing and world > 0:
            probs.append(Problem("no_lines", f"no NCCL INFO lines from rank(s) {_ranges(missing)} of {world}: "
                                             "NCCL_DEBUG must be INFO for the check (deploy.nccl.debug or an "
                                             "NCCL_DEBUG in deploy.nccl.extra_env overrides it)", "deploy.nccl.debug"))
        hosts = log.rank_hosts()
        net = [c for c in log.channels if c.is_net and (hosts.get(c.src) != hosts.get(c.dst)
                                                         or c.src not in hosts or c.dst not in hosts)]
        per_rank: dict[int, set[str]] = {}
        for c in net:
            per_rank.setdefault(c.reporter, set()).add(c.transport)
        sock = sorted(r for r, ts in per_rank.items() if "NET/Socket" in ts)
        if rdma and sock:
            procs = [by_rank[r] for r in sock if r in by_rank]
            cause, key = _socket_cause(procs, rdma_resource, rdma_count, ib_hca)
            ex = next(c for c in net if c.reporter == sock[0] and c.transport == "NET/Socket")
            where = f"{ex.host}" + (f", device {ex.device}" if ex.device else "")
            probs.append(Problem("socket", f"rank(s) {_ranges(sock)} connect to other nodes over NET/Socket (TCP) "
                                           f"although RDMA is on (e.g. channel {ex.channel:02d} {ex.src} -> {ex.dst} "
                                           f"on {where}); likely cause: {cause}", key))
        kinds: dict[str, list[int]] = {}
        for r, ts in per_rank.items():
            kinds.setdefault("+".join(sorted(ts)), []).append(r)
        networks: dict[str, list[int]] = {}
        for r, p in by_rank.items():
            if p.network:
                networks.setdefault(p.network, []).append(r)
        if len(kinds) > 1 or len(networks) > 1:
            groups = kinds if len(kinds) > 1 else {f"network {k}": rs for k, rs in networks.items()}
            desc = "; ".join(f"{k}: rank(s) {_ranges(sorted(rs))} ({_hosts(sorted(rs), hosts)})"
                             for k, rs in sorted(groups.items()))
            probs.append(Problem("disagree", f"ranks disagree on the inter-node transport: {desc}; likely cause: "
                                             "the nodes differ (RDMA device plugin or HCAs on some nodes only, a node "
                                             "without the resource, or per-node NCCL_IB_HCA); pin the group to "
                                             "uniform nodes", "deploy.node_selector"))
        if not net and world > 1 and by_rank and (log.nnodes_max() or 1) > 1:
            v.notes.append("no inter-node NET channel lines were logged")
    if sizes and min_busbw_gbps > 0:
        last = max(sizes, key=lambda s: s.bytes)
        got = last.busbw_gbs * 8
        src = min_source or "the threshold"
        if got < min_busbw_gbps:
            probs.append(Problem("busbw", f"all-reduce bus bandwidth at {_size(last.bytes)} is {last.busbw_gbs:.2f} "
                                          f"GB/s = {got:.1f} Gb/s, below {min_busbw_gbps:g} Gb/s ({src}); likely "
                                          "cause: a degraded or down link, fewer HCAs in use "
                                          "than requested (NCCL_IB_HCA, deploy.nccl.ib_hca), GPUDirect RDMA off, or "
                                          "sockets", "launch.fabric_min_busbw_gbps"))
    if backend != "nccl":
        v.notes.append(f"{backend} backend: transport not checked (no NCCL lines)")
    v.problems = probs
    if probs:
        v.status = "fail" if mode == "enforce" else "warn"
    return v


def _ranges(rs: Sequence[int]) -> str:
    rs = sorted(set(rs))
    out, i = [], 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        out += [f"{rs[i]}-{rs[j]}"] if j - i >= 2 else [str(r) for r in rs[i:j + 1]]
        i = j + 1
    return ",".join(out)


def _hosts(rs: Sequence[int], hosts: Mapping[int, str]) -> str:
    hs = sorted({hosts.get(r, "?") for r in rs})
    return ", ".join(hs[:4]) + (f" +{len(hs) - 4}" if len(hs) > 4 else "")


def _size(n: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def summarize(log: NcclLog | None) -> dict[str, Any]:
    """A small JSON-able view of the log: version, per-rank host/network/transports/devices."""
    if log is None:
        return {}
    tr = log.transports()
    ranks = {}
    for r, p in sorted(log.by_rank().items()):
        devs = sorted({c.device for c in log.channels if c.reporter == r and c.device})
        intra = sorted({c.transport for c in log.channels if c.reporter == r and not c.is_net})
        ranks[str(r)] = {"host": p.host, "network": p.network, "inter_node": sorted(tr.get(r, set())),
                         "intra_node": intra, "net_devices": devs, "ib_devices": p.ib_devices,
                         "warnings": p.warnings[:5]}
    return {"nccl_version": log.version, "cuda": log.cuda, "formats": source(), "ranks": ranks,
            "channels": len(log.channels)}


def verdict_dict(v: Verdict) -> dict[str, Any]:
    return {"status": v.status, "mode": v.mode, "problems": [asdict(p) for p in v.problems], "notes": v.notes}
