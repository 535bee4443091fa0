"""The in-container launcher: SSH set-up, preflight, waiting for workers, mpirun, the worker watchdog and
the per-rank exec. Pure argv/text builders live in :mod:`dsv3ctl.render.launch`.

Contract with the Helm chart (docs/launch.md): pods run ``dsv3ctl launch leader`` / ``dsv3ctl launch worker``,
the SSH key Secret is mounted at ``/etc/dsv3ctl/ssh`` and LeaderWorkerSet sets ``LWS_LEADER_ADDRESS``,
``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX``.

Facts used and their sources:
- sshd's StrictModes refuses keys/authorized_keys in group/world-writable files or directories; host keys must
  be 0600 (OpenSSH ``auth.c`` ``safe_path``, ``sshkey.c``); ``/run/sshd`` must exist (Debian privilege separation).
- TensorRT-LLM multi-node mpirun needs passwordless ssh on a non-22 port (TensorRT-LLM DeepSeek-V3 README,
  ``-mca plm_rsh_args "-p 2233"``); Dynamo and NIM use port 2222 and a leader wait bounded at 300 s
  (anchors study, section b). RDMA needs ``--ulimit memlock=-1`` (same README).
Errors (the exit-code policy in docs/architecture.md): :class:`SpecError` (exit 2) for bad inputs, world-size
mismatch and a failed preflight (the pod's environment is not ready for the spec; nothing started),
:class:`RuntimeFailure` (exit 1) for what fails while running (missing keys, workers that never appear).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsv3ctl.errors import RuntimeFailure, SpecError
from dsv3ctl.fsutil import atomic_write_text
from dsv3ctl.render import launch as R

if TYPE_CHECKING:
    from dsv3ctl.adapters.fabric import FabricOptions

CLIENT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa", "ssh-privatekey")
HOST_KEY_NAMES = ("ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key", "ssh_host_key")
PREFLIGHT_CHECKS = ("shm", "memlock", "infiniband", "gpus")
#: ``<runtime_dir>/session-lost``: written by the worker's watchdog when the leader's session is gone; the chart's
#: worker livenessProbe is ``test ! -e "$DSV3CTL_RUNTIME_DIR/session-lost"`` (a backstop should the exit not happen).
SESSION_LOST = "session-lost"
GIB = 1024**3


def log(role: str, msg: str) -> None:
    """Progress line on stderr: ``[dsv3ctl launch <role> HH:MM:SS] msg``."""
    sys.stderr.write(f"[dsv3ctl launch {role} {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------- preflight


@dataclass
class PreflightFacts:
    """What the preflight measures (kept separate so tests can check the rules without the machine)."""

    shm_bytes: int
    memlock_soft: int  # bytes; resource.RLIM_INFINITY when unlimited
    has_infiniband: bool
    visible_gpus: int
    cap_ipc_lock: bool = False  # CAP_IPC_LOCK in the effective set: the memlock limit does not apply


#: CAP_IPC_LOCK's bit (linux include/uapi/linux/capability.h: ``#define CAP_IPC_LOCK 14``)
CAP_IPC_LOCK = 14


def holds_cap_ipc_lock(status_path: str = "/proc/self/status") -> bool:
    """Whether this process holds CAP_IPC_LOCK: bit 14 of ``CapEff`` (hex) in ``/proc/self/status``.

    The kernel skips RLIMIT_MEMLOCK for such a process when RDMA pins memory: drivers/infiniband/core/umem.c
    ``__ib_umem_get``: ``if (new_pinned > lock_limit && !capable(CAP_IPC_LOCK))`` fails with -ENOMEM (read at
    NVIDIA/NV-Kernels 2c967d59cc91afc9997c67467763bd643853877a, same check as mainline). False when the file
    cannot be read (not Linux)."""
    try:
        with open(status_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def measure(shm_path: str = "/dev/shm", ib_path: str = "/dev/infiniband") -> PreflightFacts:
    """Measure /dev/shm size (statvfs), the memlock soft limit, /dev/infiniband and the visible GPUs
    (``nvidia-smi -L`` when present, else /dev/nvidiaN nodes; capped by CUDA_VISIBLE_DEVICES)."""
    try:
        st = os.statvfs(shm_path)
        shm = st.f_frsize * st.f_blocks
    except OSError:
        shm = 0
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return PreflightFacts(shm, soft, os.path.isdir(ib_path), count_gpus(), holds_cap_ipc_lock())


def count_gpus() -> int:
    n = 0
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
            n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            n = 0
    if n == 0:
        n = sum(1 for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit())
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        n = min(n, len([d for d in cvd.split(",") if d.strip()]))
    return n


RDMA_OFF = ("deploy.rdma.enabled: false in the spec (the chart sets launch.rdma from it), --no-rdma, or "
            "DSV3CTL_RDMA=0")


def preflight_errors(facts: PreflightFacts, *, shm_min_gib: float, rdma: bool, gpus_per_node: int,
                     skip: Iterable[str] = (), rdma_source: str = "") -> list[str]:
    """Every failed preflight rule as one message naming the limit, the measured value and the fix.
    ``rdma_source`` says what turned RDMA on (e.g. ``deploy.rdma.enabled: true``), for the messages."""
    why = f" ({rdma_source})" if rdma_source else ""
    skip = set(skip)
    errs = []
    if "shm" not in skip and facts.shm_bytes < shm_min_gib * GIB:
        errs.append(f"/dev/shm is {facts.shm_bytes / GIB:.2f} GiB, smaller than launch.shm_min_gib={shm_min_gib:g} "
                    "GiB (NCCL and the Python backend use shared memory); mount an emptyDir with medium: Memory "
                    f"and sizeLimit >= {shm_min_gib:g}Gi at /dev/shm (docker: --shm-size)")
    if "memlock" not in skip and rdma and facts.memlock_soft != resource.RLIM_INFINITY and not facts.cap_ipc_lock:
        errs.append(f"memlock limit is {facts.memlock_soft} bytes and the process lacks CAP_IPC_LOCK, but RDMA{why} "
                    "pins memory beyond it; Kubernetes: keep the IPC_LOCK capability the chart adds "
                    "(securityContext.capabilities.add, which the namespace's Pod Security level must allow) or "
                    "raise the container runtime's default memlock limit; docker: --ulimit memlock=-1 or "
                    f"--cap-add IPC_LOCK; or turn RDMA off: {RDMA_OFF}")
    if "infiniband" not in skip and rdma and not facts.has_infiniband:
        errs.append(f"/dev/infiniband is missing while RDMA is on{why}; request the RDMA device plugin's resource "
                    f"(deploy.rdma.resource, e.g. rdma/ib), or turn RDMA off: {RDMA_OFF}")
    if "gpus" not in skip and facts.visible_gpus < gpus_per_node:
        errs.append(f"{facts.visible_gpus} GPUs visible but parallelism.gpus_per_node={gpus_per_node}; request "
                    f"nvidia.com/gpu: {gpus_per_node} or lower gpus_per_node")
    return errs


def preflight(role: str, *, shm_min_gib: float, rdma: bool, gpus_per_node: int, skip: Iterable[str] = (),
              rdma_source: str = "") -> None:
    """Run every preflight check; SpecError (exit 2: the environment is not ready, nothing started) listing all
    failures."""
    skip = list(skip)
    bad = [s for s in skip if s not in PREFLIGHT_CHECKS]
    if bad:
        raise SpecError(f"--skip-preflight {bad[0]!r}: unknown check; use one of {', '.join(PREFLIGHT_CHECKS)}")
    facts = measure()
    errs = preflight_errors(facts, shm_min_gib=shm_min_gib, rdma=rdma, gpus_per_node=gpus_per_node, skip=skip,
                            rdma_source=rdma_source)
    if errs:
        raise SpecError("preflight failed:\n  " + "\n  ".join(errs))
    if rdma and "memlock" not in skip:
        limit = "unlimited" if facts.memlock_soft == resource.RLIM_INFINITY else f"{facts.memlock_soft} bytes"
        log(role, f"memlock limit {limit}" + (", CAP_IPC_LOCK held: RDMA's pinned memory is not limited by it"
                                             if facts.cap_ipc_lock else ""))
    log(role, "preflight ok" + (f" (skipped: {', '.join(skip)})" if skip else ""))


# ------------------------------------------------------------------------------------------------- ssh


@dataclass(frozen=True)
class SshFiles:
    dir: Path
    identity: Path
    host_key: Path
    authorized_keys: Path
    known_hosts: Path
    ssh_config: Path
    sshd_config: Path
    pid_file: Path


def _first(secret: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (secret / n).is_file():
            return secret / n
    return None


def _pubkey(private: Path) -> str:
    ssh_keygen = shutil.which("ssh-keygen")
    if not ssh_keygen:
        raise RuntimeFailure("ssh-keygen not found; the image must contain openssh-client")
    r = subprocess.run([ssh_keygen, "-y", "-f", str(private)], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.startswith(("ssh-", "ecdsa-")):
        raise RuntimeFailure(f"{private}: not an OpenSSH-readable private key: {r.stderr.strip()}")
    return r.stdout.strip()


def install_ssh(*, secret_dir: str, runtime_dir: str, hosts: Sequence[str], port: int, path_env: str) -> SshFiles:
    """Copy the Secret's keys into ``<runtime_dir>/ssh`` with the modes sshd demands (dir 0700, keys 0600)
    and write authorized_keys, a known_hosts trusting the group host key for exactly ``hosts`` on ``port``,
    the leader's ssh_config and the worker's sshd_config.

    The Secret holds a client key (one of ``id_ed25519``, ``id_ecdsa``, ``id_rsa``, ``ssh-privatekey``) and
    optionally a group host key (``ssh_host_ed25519_key`` ...); without one the client key is also the host key.
    Public keys are derived with ``ssh-keygen -y``. RuntimeFailure when no key is found.
    """
    secret = Path(secret_dir)
    client = _first(secret, CLIENT_KEY_NAMES)
    if client is None:
        raise RuntimeFailure(f"no SSH private key in {secret} (looked for {', '.join(CLIENT_KEY_NAMES)}); mount the "
                             "chart's SSH Secret there (launch.ssh_secret_dir / --ssh-secret-dir)")
    host = _first(secret, HOST_KEY_NAMES) or client
    d = Path(runtime_dir) / "ssh"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(runtime_dir, 0o700)
    os.chmod(d, 0o700)
    f = SshFiles(d, d / "id_key", d / "host_key", d / "authorized_keys", d / "known_hosts", d / "ssh_config",
                 d / "sshd_config", d / "sshd.pid")
    atomic_write_text(f.identity, client.read_text(), mode=0o600)
    atomic_write_text(f.host_key, host.read_text(), mode=0o600)
    client_pub, host_pub = _pubkey(f.identity), _pubkey(f.host_key)
    atomic_write_text(f.authorized_keys, client_pub + "\n", mode=0o600)
    atomic_write_text(f.known_hosts, R.known_hosts_text(hosts, port, host_pub), mode=0o600)
    atomic_write_text(f.ssh_config, R.ssh_config_text(hosts, port=port, identity=str(f.identity),
                                                      known_hosts=str(f.known_hosts)), mode=0o600)
    atomic_write_text(f.sshd_config, R.sshd_config_text(port=port, host_key=str(f.host_key),
                                                        authorized_keys=str(f.authorized_keys),
                                                        pid_file=str(f.pid_file), path_env=path_env), mode=0o600)
    return f


# ------------------------------------------------------------------------------------------ wait (leader)


def probe(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None when ``host`` resolves and an SSH server answers on ``port``; else why not (for the logs).
    Only reads the banner: no session is opened, so the worker's watchdog is not armed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"DNS: {e.strerror or e}"
    last = "no address"
    for family, stype, proto, _, addr in infos:
        try:
            with socket.socket(family, stype, proto) as s:
                s.settimeout(timeout)
                s.connect(addr)
                banner = s.recv(64)
            if banner.startswith(b"SSH-"):
                return None
            last = f"port {port}: not an SSH server ({banner[:20]!r})"
        except OSError as e:
            last = f"port {port}: {e.strerror or e}"
    return last


def wait_for_hosts(hosts: Sequence[str], port: int, timeout_s: float, *, role: str = "leader",
                   probe_fn: Callable[[str, int], str | None] = probe, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic, max_backoff_s: float = 15.0) -> None:
    """Wait until every host resolves and answers SSH on ``port``; retries back off 1, 2, 4 ... up to
    ``max_backoff_s`` seconds, and never past ``timeout_s``. Logs progress every round.
    RuntimeFailure (exit 1) naming each missing host and its last error when the bound is reached."""
    start = clock()
    pending: dict[str, str] = {h: "not probed" for h in hosts}
    delay = 1.0
    while True:
        for h in list(pending):
            why = probe_fn(h, port)
            if why is None:
                del pending[h]
                log(role, f"worker {h}:{port} is up ({clock() - start:.0f} s)")
            else:
                pending[h] = why
        if not pending:
            return
        elapsed = clock() - start
        if elapsed >= timeout_s:
            detail = "; ".join(f"{h} ({w})" for h, w in pending.items())
            raise RuntimeFailure(
                f"{len(pending)} of {len(hosts)} workers never came up within {timeout_s:g} s "
                f"(launch.worker_wait_timeout_s): {detail}",
                hint="check that the worker pods are Running and `dsv3ctl launch worker` started sshd on port "
                     f"{port}; LeaderWorkerSet will recreate the group",
            )
        log(role, f"waiting for {len(pending)}/{len(hosts)} workers: "
                  + ", ".join(f"{h} ({w})" for h, w in pending.items())
                  + f"; retry in {min(delay, timeout_s - elapsed):.0f} s ({elapsed:.0f}/{timeout_s:g} s)")
        sleep(max(0.0, min(delay, timeout_s - elapsed)))
        delay = min(delay * 2, max_backoff_s)


# ------------------------------------------------------------------------------------------ world size


def model_parallelism(cfg: R.RankConfig, engine_dir: str = "") -> tuple[int, int, str]:
    """(tp, pp, source) the ranks will load: the engine's config.json (engine mode; ``engine_dir`` or the
    ``gpt_model_path`` parameter of ``<repo>/tensorrt_llm/config.pbtxt``), the llmapi ``model.yaml``
    (llmapi + tritonserver), or the flags (trtllm-serve). RuntimeFailure when the file cannot be read."""
    import json

    repo = Path(cfg.model_repository)
    if cfg.mode == "engine":
        edir = Path(engine_dir) if engine_dir else _engine_dir_from_pbtxt(repo / "tensorrt_llm" / "config.pbtxt")
        path = edir / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RuntimeFailure(f"cannot read the engine config {path} to check the world size: {e}; "
                                 "pass --engine-dir or set launch.engine_dir") from None
        tp, pp = R.engine_parallelism(data)
        return tp, pp, f"the engine {path}"
    if cfg.frontend == "tritonserver":
        import yaml

        path = repo / "tensorrt_llm" / "1" / "model.yaml"
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RuntimeFailure(f"cannot read {path} to check the world size: {e}") from None
        tp, pp = R.llmapi_parallelism(data)
        return tp, pp, f"the llmapi model {path}"
    return cfg.tp, cfg.pp, "trtllm-serve --tp_size/--pp_size"


def _engine_dir_from_pbtxt(pbtxt: Path) -> Path:
    import re

    try:
        text = pbtxt.read_text()
    except OSError as e:
        raise RuntimeFailure(f"cannot read {pbtxt} to find the engine directory: {e}; pass --engine-dir") from None
    for key in ("gpt_model_path", "engine_dir"):
        m = re.search(r'key:\s*"' + key + r'"\s*value:\s*\{\s*string_value:\s*"([^"]+)"', text)
        if m and "${" not in m.group(1):
            return Path(m.group(1))
    raise RuntimeFailure(f"{pbtxt} has no gpt_model_path parameter; pass --engine-dir")


# ---------------------------------------------------------------------------------------------- leader


def run_leader(*, group: Sequence[str], slots: int, cfg: R.RankConfig, ssh_port: int, secret_dir: str,
               runtime_dir: str, wait_timeout_s: float, engine_dir: str = "", dsv3ctl: str | None = None,
               mpirun: str | None = None, env: Mapping[str, str] | None = None,
               fabric: FabricOptions | None = None, fabric_only: bool = False,
               rank_cmd: Sequence[str] | None = None, stdout: Any = None, timeout_s: float | None = None) -> int:
    """Leader: SSH set-up, world-size check, wait for workers, hostfile, the fabric check (``fabric``, see
    :mod:`dsv3ctl.adapters.fabric`: same mpirun, hostfile and environment as the server), mpirun. Returns mpirun's
    exit code.

    The world-size check runs before any waiting, so a mismatch is refused at once (SpecError, exit 2).
    ``fabric_only``: no model (no world-size check against it), the fabric check and exit 0 (ok or warn) or 1.
    ``rank_cmd`` replaces the server (``dsv3ctl launch rank``) as what every rank runs (``dsv3ctl smoke``);
    ``stdout`` receives mpirun's stdout; after ``timeout_s`` seconds mpirun is stopped (RuntimeFailure).
    """
    env = dict(os.environ if env is None else env)
    hosts = list(group)
    if fabric_only:
        if fabric is None:
            raise SpecError("--fabric-only with the fabric check off; use --fabric-check warn or enforce")
        world = len(hosts) * slots
        log("leader", f"fabric check only: group of {len(hosts)} hosts x {slots} slots = world size {world}")
    else:
        tp, pp, source = model_parallelism(cfg, engine_dir)
        world = R.check_world_size(hosts=len(hosts), slots=slots, tp=tp, pp=pp, source=source)
        log("leader", f"group of {len(hosts)} hosts x {slots} slots = world size {world} matches {source}")
    mpirun = mpirun or shutil.which("mpirun")
    if not mpirun:
        raise RuntimeFailure("mpirun not found on PATH; the image must contain OpenMPI (the NGC base provides it)")
    if rank_cmd is None:
        check_server_flags(cfg)
    mpirun = os.path.abspath(mpirun)
    files = install_ssh(secret_dir=secret_dir, runtime_dir=runtime_dir, hosts=hosts, port=ssh_port,
                        path_env=env.get("PATH", os.defpath))
    if len(hosts) > 1:
        wait_for_hosts(hosts[1:], ssh_port, wait_timeout_s)
    hostfile = Path(runtime_dir) / "hostfile"
    atomic_write_text(hostfile, R.hostfile_text(hosts, slots))
    exe = dsv3ctl or _self_path()

    def mpi_for(cmd: list[str]) -> list[str]:
        return R.mpirun_argv(mpirun=mpirun, hostfile=str(hostfile), world_size=world, ssh_config=str(files.ssh_config),
                             forward=R.forwarded_env(env), rank_cmd=cmd, as_root=os.geteuid() == 0)

    if fabric is not None:
        from dsv3ctl.adapters import fabric as FC

        FC.check(run=lambda: FC.run_mpi(mpirun_argv_for=mpi_for, master_addr=hosts[0], world=world, opts=fabric,
                                        env=env), world=world, opts=fabric, runtime_dir=runtime_dir,
                 log=lambda m: log("leader", m))
        if fabric_only:
            return 0
    argv = mpi_for(list(rank_cmd) if rank_cmd else [exe, "launch", "rank", *cfg.to_args()])
    log("leader", "exec: " + R.shell_join(argv))
    proc = subprocess.Popen(argv, env=env, stdout=stdout)

    def forward(sig: int, _frame: object) -> None:
        proc.send_signal(sig)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise RuntimeFailure(f"mpirun ({R.shell_join(list(rank_cmd or ['dsv3ctl', 'launch', 'rank']))[:120]}) did "
                             f"not finish within {timeout_s:.0f} s; stopped it") from None
    log("leader", f"mpirun exited with {rc}")
    return rc


def check_server_flags(cfg: R.RankConfig, timeout_s: float = 120.0) -> None:
    """Capability probe before any rank starts: the server's ``--help`` on this host (every pod runs the
    same image) must list every flag the ranks would get (rank 0 and a non-zero rank: they differ in
    engine mode). tritonserver is asked ``tritonserver --help``, trtllm-serve ``trtllm-serve serve --help``.
    SpecError (exit 2) naming the flags and the server; RuntimeFailure (exit 1) when it cannot be asked.
    Flags and their source: dsv3ctl/data/contracts/tritonserver.json and trtllm_serve.json."""
    from dsv3ctl.adapters.probe import emitted_flags, read_help, refusal

    world = max(cfg.tp * cfg.pp, 1)
    argvs = [R.rank_argv(cfg, r) for r in sorted({0, min(1, world - 1)})]
    if cfg.mode == "llmapi":
        argvs = [a[1:] for a in argvs]  # after trtllm-llmapi-launch
    exe = argvs[0][0]
    help_argv = [exe, "serve", "--help"] if cfg.mode == "llmapi" and cfg.frontend == "trtllm-serve" else [exe, "--help"]
    if not shutil.which(exe):
        raise RuntimeFailure(f"{exe} not found on PATH; run inside the dsv3ctl image")
    pr = read_help(help_argv, timeout_s)
    if pr.error:
        raise RuntimeFailure(f"cannot ask {exe} for its flags: {pr.error}")
    flags = [f for a in argvs for f in emitted_flags(a[1:])]
    miss = [f for f in dict.fromkeys(flags) if f not in pr.flags]
    if miss:
        raise SpecError(refusal(Path(exe).name, "the installed one", miss,
                                "use the image built for this serving.mode (`dsv3ctl image build`)"))
    log("leader", f"{Path(exe).name} accepts the {len(set(flags))} flags the ranks get")


def _self_path() -> str:
    arg0 = sys.argv[0]
    if os.path.basename(arg0) == "dsv3ctl" and os.path.isfile(arg0):
        return os.path.abspath(arg0)
    return shutil.which("dsv3ctl") or "dsv3ctl"


# ---------------------------------------------------------------------------------------------- worker


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) from /proc."""
    table = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        table[int(p.name)] = (ppid, comm)
    return table


def session_processes(root: int, table: Mapping[int, tuple[int, str]] | None = None) -> list[int]:
    """Descendants of sshd ``root`` that are not sshd itself: the commands a leader runs over SSH (orted)."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if not table[pid][1].startswith("sshd"):
            out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _fabric_session(pids: Iterable[int]) -> bool:
    """True when one of ``pids`` runs the fabric check's worker (``dsv3ctl.adapters.fabric_worker``): that session
    ends before the server's starts, so it must not arm the watchdog."""
    for pid in pids:
        try:
            if b"fabric_worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def mark_session_lost(runtime_dir: str | Path, reason: str) -> Path:
    """Write ``<runtime_dir>/session-lost`` atomically with one line: the UTC time and ``reason``."""
    p = Path(runtime_dir) / SESSION_LOST
    atomic_write_text(p, f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(reason.split())}\n")
    return p


def run_worker(*, group: Sequence[str], ssh_port: int, secret_dir: str, runtime_dir: str,
               poll_s: float = 1.0, grace_polls: int = 2, env: Mapping[str, str] | None = None) -> int:
    """Worker: run sshd in the foreground and watch it. Once a leader session has started (sshd logs an accepted
    key, or a non-sshd process runs under sshd), exit 1 as soon as no process runs under sshd any more for
    ``grace_polls`` polls (OpenMPI's orted and the ranks are gone), so LeaderWorkerSet recreates the group.
    The leader's readiness probe only reads the SSH banner, so it never arms the watchdog.
    Before that exit it writes ``<runtime_dir>/session-lost`` (:func:`mark_session_lost`; a stale one is removed
    at start), which fails the chart's worker livenessProbe should the process linger.
    Exits 1 too when sshd dies. SIGTERM stops sshd and exits 0."""
    env = dict(os.environ if env is None else env)
    (Path(runtime_dir) / SESSION_LOST).unlink(missing_ok=True)
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if not sshd:
        raise RuntimeFailure("sshd not found; the image must contain openssh-server")
    files = install_ssh(secret_dir=secret_dir, runtime_dir=runtime_dir, hosts=group, port=ssh_port,
                        path_env=env.get("PATH", os.defpath))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # Debian sshd's privilege-separation directory
    check = subprocess.run([sshd, "-t", "-f", str(files.sshd_config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeFailure(f"sshd rejected {files.sshd_config}: {check.stderr.strip()}")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(files.sshd_config)], stderr=subprocess.PIPE,
                            text=True, errors="replace")
    log("worker", f"sshd (pid {proc.pid}) listening on port {ssh_port}; waiting for the leader's session")
    authenticated = threading.Event()

    def relay() -> None:  # sshd's log to our stderr; an accepted key marks the start of the leader's session
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write("sshd: " + line)
            sys.stderr.flush()
            if "Accepted publickey" in line:
                authenticated.set()

    threading.Thread(target=relay, daemon=True).start()
    stopping = {"flag": False}

    def stop(_sig: int, _frame: object) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    armed, missing, fabric_seen = False, 0, False
    try:
        while True:
            if stopping["flag"]:
                log("worker", "terminated; stopping sshd")
                return 0
            if proc.poll() is not None:
                log("worker", f"sshd exited with {proc.returncode}")
                return 1
            live = session_processes(proc.pid)
            if live and _fabric_session(live):
                fabric_seen = True
            elif not live and fabric_seen:  # the leader's fabric check ended; the server's session comes next
                fabric_seen, armed, missing = False, False, 0
                authenticated.clear()
                log("worker", "fabric check session ended; waiting for the server's session")
            if (live or authenticated.is_set()) and not armed and not fabric_seen:
                armed = True
                log("worker", "leader session started; watchdog armed")
            if armed:
                missing = 0 if live else missing + 1
                if missing >= grace_polls:
                    lost = mark_session_lost(runtime_dir, f"leader session is gone: no process under sshd "
                                                          f"(pid {proc.pid}) for {grace_polls} polls")
                    log("worker", f"leader session is gone (wrote {lost}); exiting so LeaderWorkerSet recreates "
                                  "the group")
                    return 1
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


# ------------------------------------------------------------------------------------------------ rank


def exec_rank(cfg: R.RankConfig, rank: int | None, env: Mapping[str, str] | None = None,
              dry_run: bool = False) -> list[str]:
    """Replace this process with the server of this MPI rank (``os.execvp``); with ``dry_run`` return the argv.
    SpecError when the rank is outside tp x pp; RuntimeFailure when the server executable is missing."""
    env = os.environ if env is None else env
    r, source = R.rank_and_source(env, rank)
    R.check_rank(r, cfg, source)
    argv = R.rank_argv(cfg, r)
    if dry_run:
        return argv
    if not shutil.which(argv[0]):
        raise RuntimeFailure(f"rank {r}: {argv[0]} not found on PATH; run inside the dsv3ctl image")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)
    return argv  # not reached
