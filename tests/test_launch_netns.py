"""The launcher across network namespaces, for real: each test builds its own namespaces joined by a bridge,
per-namespace /etc/hosts and resolv.conf (``ip netns exec`` bind-mounts /etc/netns/NAME/*), and its own UTS
namespace per "pod" (hostname = pod name). Workers run ``dsv3ctl launch worker`` (the real sshd on port 2222),
the leader runs ``dsv3ctl launch leader`` (real SSH set-up, wait, Debian's OpenMPI mpirun). Only the server is
replaced: a test double ``tritonserver`` records its rank, argv and environment.

Needs root, ip, sshd, ssh-keygen and mpirun (``make sys-deps``); skips with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DSV3CTL = str(Path(sys.executable).with_name("dsv3ctl"))
NEEDED = ("ip", "sshd", "ssh-keygen", "ssh", "mpirun", "unshare")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    miss = [t for t in NEEDED if not shutil.which(t, path=path)]
    if miss:
        return f"missing {', '.join(miss)}: run `make sys-deps` (apt: openmpi-bin openssh-server iproute2)"
    if subprocess.run(["ip", "netns", "add", "d6probe"], capture_output=True).returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", "d6probe"], capture_output=True)
    return None


_why = _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))

STANDIN = textwrap.dedent('''\
    #!{python}
    """Test double for tritonserver (the real one needs GPUs): its option parser is built from
    dsv3ctl/data/contracts/tritonserver.json (server v2.52.0 command_line_parser.cc), so --help lists the
    real flags and an unknown flag or value fails; then it records rank, argv, env and network namespace."""
    import json, os, sys, time
    from dsv3ctl.core.contracts import argparser
    argparser("tritonserver").parse_args()
    rank = os.environ.get("OMPI_COMM_WORLD_RANK", "?")
    rec = {{"rank": rank, "argv": sys.argv, "netns": os.stat("/proc/self/ns/net").st_ino,
           "hostname": os.uname().nodename,
           "env": {{k: v for k, v in os.environ.items() if k.startswith(("OMPI_COMM_WORLD", "NCCL_", "DSV3CTL_"))}}}}
    out = os.environ["DSV3CTL_TEST_RECORDS"]
    tmp = os.path.join(out, f".rank{{rank}}.tmp")
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, os.path.join(out, f"rank{{rank}}.json"))
    time.sleep(float(os.environ.get("DSV3CTL_TEST_STANDIN_SLEEP", "0")))
''')


class Cluster:
    """Namespaces ``<p>-n0`` (leader) .. ``<p>-n{k}`` on a bridge in ``<p>-br``; LWS-style pod names."""

    def __init__(self, tmp: Path, nodes: int, slots: int = 2, tp: int | None = None, fabric: str = "off"):
        self.p = "d6" + secrets.token_hex(2)
        self.lws, self.ns = "dsv3", "t" + self.p
        self.names = [f"{self.lws}-0.{self.lws}.{self.ns}"] + [f"{self.lws}-0-{i}.{self.lws}.{self.ns}"
                                                               for i in range(1, nodes)]
        self.netns = [f"{self.p}-n{i}" for i in range(nodes)]
        self.br = f"{self.p}-br"
        self.subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
        self.tmp, self.slots, self.nodes = tmp, slots, nodes
        self.procs: list[subprocess.Popen] = []
        self.run_root = Path("/run") / f"dsv3ctl-test-{self.p}"  # sshd StrictModes: not under world-writable /tmp
        self.records = tmp / "records"
        self.records.mkdir()
        self.secret = tmp / "secret"
        self.secret.mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "group", "-f",
                        str(self.secret / "id_ed25519")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "host", "-f",
                        str(self.secret / "ssh_host_ed25519_key")], check=True)
        for f in self.secret.iterdir():
            f.chmod(0o644)  # what a Secret volume gives by default; the launcher must fix it
        self.standin = tmp / "tritonserver"
        self.standin.write_text(STANDIN.format(python=sys.executable))
        self.standin.chmod(0o755)
        self.repo = tmp / "model_repo"
        self.engine = tmp / "engine"
        self.set_engine_tp(tp if tp is not None else nodes * slots)
        self.spec = tmp / "dsv3.yaml"
        # deploy.rdma.enabled defaults to true (it turns on the RDMA preflight): these namespaces have no RDMA.
        # The fabric check (default enforce for several nodes) has its own test in test_fabric_netns.py.
        self.spec.write_text(f"parallelism: {{nodes: {nodes}, gpus_per_node: {slots}, tp: {nodes * slots}}}\n"
                             f"deploy: {{rdma: {{enabled: false}}}}\nlaunch: {{fabric_check: {fabric}}}\n")

    def set_engine_tp(self, tp: int) -> None:
        (self.repo / "tensorrt_llm").mkdir(parents=True, exist_ok=True)
        self.engine.mkdir(exist_ok=True)
        (self.repo / "tensorrt_llm" / "config.pbtxt").write_text(
            'name: "tensorrt_llm"\nbackend: "tensorrtllm"\nparameters: {\n  key: "gpt_model_path"\n'
            f'  value: {{\n    string_value: "{self.engine}"\n  }}\n}}\n')
        (self.engine / "config.json").write_text(json.dumps(
            {"version": "0.17.0", "pretrained_config": {"mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1}},
             "build_config": {}}))

    def sh(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    def up(self, hidden: tuple[int, ...] = ()) -> None:
        self.sh("ip", "netns", "add", self.br)
        self.sh("ip", "-n", self.br, "link", "add", "br0", "type", "bridge")
        self.sh("ip", "-n", self.br, "link", "set", "br0", "up")
        for i, ns in enumerate(self.netns):
            self.sh("ip", "netns", "add", ns)
            a, b = f"{self.p}b{i}", f"{self.p}e{i}"
            self.sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            self.sh("ip", "link", "set", a, "netns", self.br)
            self.sh("ip", "link", "set", b, "netns", ns)
            self.sh("ip", "-n", self.br, "link", "set", a, "master", "br0", "up")
            self.sh("ip", "-n", ns, "addr", "add", f"{self.subnet}.{i + 1}/24", "dev", b)
            self.sh("ip", "-n", ns, "link", "set", b, "up")
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
            d = Path("/etc/netns") / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.write_hosts(hidden)

    def write_hosts(self, hidden: tuple[int, ...] = ()) -> None:
        """Per-namespace /etc/hosts; ``hidden`` nodes have no DNS entry yet (written in place: the bind
        mount of a running ``ip netns exec`` sees the new content)."""
        lines = "127.0.0.1 localhost\n" + "".join(
            f"{self.subnet}.{i + 1} {n} {n.split('.')[0]}\n" for i, n in enumerate(self.names) if i not in hidden)
        for ns in self.netns:
            with open(Path("/etc/netns") / ns / "hosts", "w") as f:
                f.write(lines)

    def env(self, index: int, **extra: str) -> dict[str, str]:
        e = dict(os.environ)
        e.update(LWS_LEADER_ADDRESS=self.names[0], LWS_GROUP_SIZE=str(self.nodes), LWS_WORKER_INDEX=str(index),
                 DSV3CTL_TEST_RECORDS=str(self.records), NCCL_DEBUG="INFO", PYTHONUNBUFFERED="1", **extra)
        e["PATH"] = f"{Path(sys.executable).parent}:{e.get('PATH', '')}:/usr/sbin:/sbin"
        return e

    def start(self, index: int, role: str, *args: str, **extra: str) -> subprocess.Popen:
        pod = self.names[index].split(".")[0]
        cmd = ["ip", "netns", "exec", self.netns[index], "unshare", "--uts", "--", "sh", "-c",
               'hostname "$0" && exec "$@"', pod, DSV3CTL, "launch", role, "--spec", str(self.spec),
               "--runtime-dir", str(self.run_root / pod), "--ssh-secret-dir", str(self.secret),
               "--skip-preflight", "gpus", "--shm-min-gib", "0", *args]
        log = open(self.tmp / f"{pod}.log", "wb")
        p = subprocess.Popen(cmd, env=self.env(index, **extra), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def leader(self, *args: str, **extra: str) -> subprocess.Popen:
        return self.start(0, "leader", "--tritonserver", str(self.standin), "--model-repo", str(self.repo), *args,
                          **extra)

    def log(self, index: int) -> str:
        return (self.tmp / f"{self.names[index].split('.')[0]}.log").read_text(errors="replace")

    def rank_records(self) -> dict[int, dict]:
        return {int(p.stem[4:]): json.loads(p.read_text()) for p in self.records.glob("rank*.json")}

    def netns_inode(self, index: int) -> int:
        return os.stat(f"/run/netns/{self.netns[index]}").st_ino

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        for ns in [*self.netns, self.br]:
            # processes still inside (orphaned sshd sessions) would keep the namespace's devices alive
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        shutil.rmtree(self.run_root, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path):
    made: list[Cluster] = []

    def make(nodes: int, **kw) -> Cluster:
        c = Cluster(tmp_path, nodes, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.down()


def _wait(p: subprocess.Popen, timeout: float) -> int:
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process {p.args[-1]} still running after {timeout} s")


def _assert_engine_ranks(c: Cluster, world: int) -> None:
    recs = c.rank_records()
    assert sorted(recs) == list(range(world))
    for r, rec in recs.items():
        node = r // c.slots
        assert rec["netns"] == c.netns_inode(node), f"rank {r} ran outside node {node}'s namespace"
        assert rec["hostname"] == c.names[node].split(".")[0]
        argv = rec["argv"][1:]
        assert argv[:4] == [f"--model-repository={c.repo}", "--disable-auto-complete-config",
                            f"--backend-config=python,shm-region-prefix-name=prefix{r}_", f"--id=rank{r}"]
        if r == 0:
            assert argv[4:] == ["--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
        else:
            assert argv[4:] == ["--model-control-mode=explicit", "--load-model=tensorrt_llm", "--allow-http=false",
                                "--allow-grpc=false", "--allow-metrics=false"]
        assert rec["env"]["OMPI_COMM_WORLD_SIZE"] == str(world)
        assert rec["env"]["NCCL_DEBUG"] == "INFO"  # NCCL_* forwarded by mpirun -x


def test_all_workers_present(cluster):
    c = cluster(3)
    c.up()
    w = [c.start(i, "worker") for i in (1, 2)]
    leader = c.leader("--wait-timeout", "60")
    rc = _wait(leader, 120)
    assert rc == 0, c.log(0) + c.log(1)
    _assert_engine_ranks(c, 6)
    log = c.log(0)
    assert "world size 6" in log and "--allow-run-as-root" in log and "-F " in log
    # the ranks have exited, so each worker's watchdog ends the worker with 1 (LWS then recreates the group)
    for p in w:
        assert _wait(p, 30) == 1
    assert "leader session is gone" in c.log(1)
    # keys were installed with the modes sshd demands; known_hosts is scoped to the group's hosts
    kh = (c.run_root / "dsv3-0" / "ssh" / "known_hosts").read_text()
    assert kh.split()[0] == ",".join(f"[{n}]:2222" for n in c.names)
    assert oct((c.run_root / "dsv3-0-1" / "ssh" / "host_key").stat().st_mode & 0o777) == "0o600"
    assert "StrictHostKeyChecking yes" in (c.run_root / "dsv3-0" / "ssh" / "ssh_config").read_text()


def test_worker_appears_20s_late(cluster):
    c = cluster(2)
    c.up(hidden=(1,))  # no DNS entry and no sshd for worker 1 yet
    leader = c.leader("--wait-timeout", "90")
    time.sleep(20)
    assert leader.poll() is None, c.log(0)
    assert not c.rank_records()
    c.write_hosts()
    c.start(1, "worker")
    rc = _wait(leader, 120)
    assert rc == 0, c.log(0) + c.log(1)
    _assert_engine_ranks(c, 4)
    log = c.log(0)
    assert "waiting for 1/1 workers: dsv3-0-1" in log and "DNS" in log and "is up" in log


def test_worker_never_appears(cluster):
    c = cluster(3)
    c.up(hidden=(2,))
    c.start(1, "worker")
    t0 = time.monotonic()
    leader = c.leader("--wait-timeout", "8")
    rc = _wait(leader, 60)
    elapsed = time.monotonic() - t0
    log = c.log(0)
    assert rc == 1, log
    assert elapsed < 8 + 15, f"leader took {elapsed:.0f} s for an 8 s bound"
    assert "never came up within 8 s" in log and c.names[2] in log
    assert c.names[1] not in log.split("never came up")[1]  # only the missing host is named
    assert not c.rank_records()


def test_world_size_mismatch_refused_before_launch(cluster):
    c = cluster(2, tp=8)  # engine built for tp 8, group is 2 x 2 = 4
    c.up()
    w = c.start(1, "worker")
    leader = c.leader("--wait-timeout", "60")
    rc = _wait(leader, 30)
    log = c.log(0)
    assert rc == 2, log
    assert "world size mismatch" in log and "tp x pp = 8 x 1 = 8" in log and "nodes=4" in log
    assert "exec:" not in log and not c.rank_records()
    assert w.poll() is None  # no session was opened, so the worker keeps waiting


def test_leader_killed_worker_exits(cluster):
    c = cluster(2)
    c.up()
    w = c.start(1, "worker")
    leader = c.leader("--wait-timeout", "60", DSV3CTL_TEST_STANDIN_SLEEP="600")
    deadline = time.monotonic() + 90
    while len(c.rank_records()) < 4:
        assert leader.poll() is None, c.log(0)
        assert time.monotonic() < deadline, c.log(0)
        time.sleep(0.5)
    assert c.rank_records()[3]["env"]["DSV3CTL_TEST_STANDIN_SLEEP"] == "600"
    time.sleep(2)
    assert w.poll() is None
    os.killpg(leader.pid, signal.SIGKILL)  # the leader pod dies: mpirun and its ssh sessions with it
    rc = _wait(w, 45)
    assert rc == 1, c.log(1)
    assert "leader session is gone" in c.log(1)
    lost = c.run_root / c.names[1].split(".")[0] / "session-lost"  # what the chart's worker livenessProbe tests
    assert "leader session is gone" in lost.read_text(), c.log(1)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch is not installed (the fabric check's gloo backend needs it; the ~500 MiB wheel is "
                           "not a test dependency)")
def test_fabric_check_gloo_then_server(cluster):
    """The fabric check's gloo path through the real launcher: the leader runs the all-reduce benchmark
    (dsv3ctl.adapters.fabric_worker under its own mpirun, over each pod's sshd) before the server, writes
    ``<runtime_dir>/fabric-check.json`` and logs per-size bandwidth; the workers' watchdogs are not armed by that
    session; then the server ranks start."""
    c = cluster(2, fabric="enforce")
    c.up()
    w = c.start(1, "worker")
    leader = c.leader("--wait-timeout", "60")
    rc = _wait(leader, 240)
    log = c.log(0)
    assert rc == 0, log + c.log(1)
    doc = json.loads((c.run_root / "dsv3-0" / "fabric-check.json").read_text())
    assert doc["status"] == "ok" and doc["backend"] == "gloo" and doc["world"] == 4, doc
    assert [s["bytes"] for s in doc["sizes"]] == [2**16, 2**20, 2**22]
    assert all(s["busbw_gbs"] > 0 for s in doc["sizes"])
    assert "fabric check (gloo, world 4, 2 node(s)):" in log and "busbw" in log and "verdict: ok" in log
    assert "fabric check session ended" in c.log(1)
    _assert_engine_ranks(c, 4)
    assert _wait(w, 30) == 1
    from dsv3ctl.adapters.fabric import status_from_log

    assert status_from_log(log)["status"] == "ok"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch is not installed (the fabric check's gloo backend needs it)")
def test_fabric_only_group_without_a_model(cluster):
    """``launch leader --fabric-only``: a group with no model (no engine, no repository) runs only the check."""
    c = cluster(2, fabric="off")  # --fabric-only turns it on (enforce)
    c.up()
    c.start(1, "worker")
    leader = c.start(0, "leader", "--wait-timeout", "60", "--fabric-only", "--model-repo", "/nonexistent")
    rc = _wait(leader, 240)
    log = c.log(0)
    assert rc == 0, log + c.log(1)
    assert "fabric check only: group of 2 hosts x 2 slots = world size 4" in log and "verdict: ok" in log
    assert "exec:" not in log and not c.rank_records()


def test_fabric_check_enforce_stops_the_launch_without_torch(cluster):
    """Enforce: a rank that cannot run the benchmark (here: no torch, or a broken rendezvous) stops the launch with
    exit 1 and the reason, before any server rank starts."""
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed: the benchmark would pass")
    c = cluster(2, fabric="enforce")
    c.up()
    c.start(1, "worker")
    leader = c.leader("--wait-timeout", "60")
    rc = _wait(leader, 180)
    log = c.log(0)
    assert rc == 1, log
    assert "fabric check failed" in log and "No module named 'torch'" in log and not c.rank_records()
    assert json.loads((c.run_root / "dsv3-0" / "fabric-check.json").read_text())["status"] == "fail"
    from dsv3ctl.adapters.fabric import status_from_log

    summary = status_from_log(log)  # what `dsv3ctl status` reads from the leader pod's log
    assert summary is not None and summary["status"] == "fail" and summary["problems"] == ["rank_failed"] * 4
