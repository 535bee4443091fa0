"""Launcher pieces that run here without namespaces: group names, per-rank argv, preflight rules, the bounded
wait (against real sockets on 127.0.0.1) and the CLI. The cross-pod behaviour is in test_launch_netns.py."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time

import pytest

from dsv3ctl.adapters import launcher as L
from dsv3ctl.errors import RuntimeFailure, SpecError
from dsv3ctl.render import launch as R


def test_group_from_lws_leader_address():
    g = R.group_from_leader_address("dsv3-1.dsv3.prod", 3)
    assert g.hosts == ("dsv3-1.dsv3.prod", "dsv3-1-1.dsv3.prod", "dsv3-1-2.dsv3.prod")
    assert g.lws == "dsv3" and g.group == "1"
    assert R.group_from_leader_address("my-lws-0.my-lws.ns.svc.cluster.local", 2).workers == (
        "my-lws-0-1.my-lws.ns.svc.cluster.local",)
    for bad in ("dsv3.dsv3.ns", "other-0.dsv3.ns", "dsv3-0"):
        with pytest.raises(SpecError, match="<lws>-<group>"):
            R.group_from_leader_address(bad, 2)
    with pytest.raises(SpecError, match="twice"):
        R.group_from_hosts(["a", "a"])


def test_engine_rank_argv_leader_mode():
    cfg = R.RankConfig(mode="engine", model_repository="/repo")
    assert R.rank_argv(cfg, 0) == ["tritonserver", "--model-repository=/repo", "--disable-auto-complete-config",
                                   "--backend-config=python,shm-region-prefix-name=prefix0_", "--id=rank0",
                                   "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
    r5 = R.rank_argv(cfg, 5)
    assert "--backend-config=python,shm-region-prefix-name=prefix5_" in r5
    assert r5[-5:] == ["--model-control-mode=explicit", "--load-model=tensorrt_llm", "--allow-http=false",
                       "--allow-grpc=false", "--allow-metrics=false"]


def test_llmapi_rank_argv():
    t = R.rank_argv(R.RankConfig(mode="llmapi", model_repository="/r"), 3)
    assert t[:2] == ["trtllm-llmapi-launch", "tritonserver"] and "--disable-auto-complete-config" not in t
    s = R.rank_argv(R.RankConfig(mode="llmapi", frontend="trtllm-serve", model_dir="/m", tp=16, moe_ep=8), 0)
    assert s[:3] == ["trtllm-llmapi-launch", "trtllm-serve", "/m"]
    assert s[s.index("--tp_size") + 1] == "16" and s[s.index("--ep_size") + 1] == "8"
    assert s[s.index("--backend") + 1] == "pytorch"


def test_mpirun_argv_and_env_forwarding():
    fwd = R.forwarded_env({"NCCL_IB_HCA": "mlx5", "UCX_TLS": "rc", "SECRET_TOKEN": "x", "PATH": "/bin"})
    assert fwd == ["NCCL_IB_HCA", "PATH", "UCX_TLS"]
    argv = R.mpirun_argv(mpirun="/usr/bin/mpirun", hostfile="/h", world_size=16, ssh_config="/c", forward=fwd,
                         rank_cmd=["dsv3ctl", "launch", "rank"], as_root=True)
    assert argv[:2] == ["/usr/bin/mpirun", "--allow-run-as-root"]
    assert argv[argv.index("-np") + 1] == "16" and "-F /c" in argv
    assert argv[-3:] == ["dsv3ctl", "launch", "rank"]
    assert R.hostfile_text(["a", "b"], 8) == "a slots=8\nb slots=8\n"


def test_world_size_check_names_fields_and_fix():
    assert R.check_world_size(hosts=2, slots=8, tp=16, pp=1, source="e") == 16
    with pytest.raises(SpecError, match=r"2 hosts x 8 GPUs .* = 16 ranks.*tp x pp = 8 x 1 = 8.*nodes=1"):
        R.check_world_size(hosts=2, slots=8, tp=8, pp=1, source="the engine")
    assert R.engine_parallelism({"pretrained_config": {"mapping": {"tp_size": 16, "pp_size": 1}}}) == (16, 1)


def test_preflight_rules():
    ok = L.PreflightFacts(shm_bytes=64 * L.GIB, memlock_soft=resource.RLIM_INFINITY, has_infiniband=True,
                          visible_gpus=8)
    assert L.preflight_errors(ok, shm_min_gib=8, rdma=True, gpus_per_node=8) == []
    bad = L.PreflightFacts(shm_bytes=L.GIB // 16, memlock_soft=65536, has_infiniband=False, visible_gpus=4)
    errs = L.preflight_errors(bad, shm_min_gib=8, rdma=True, gpus_per_node=8)
    assert len(errs) == 4
    assert "/dev/shm is 0.06 GiB" in errs[0] and "memlock limit is 65536" in errs[1]
    assert "/dev/infiniband is missing" in errs[2] and "4 GPUs visible" in errs[3]
    assert len(L.preflight_errors(bad, shm_min_gib=8, rdma=False, gpus_per_node=8, skip=["gpus"])) == 1


def test_memlock_passes_with_cap_ipc_lock(tmp_path):
    """The kernel does not apply RLIMIT_MEMLOCK to RDMA pinning by a process holding CAP_IPC_LOCK."""
    capped = L.PreflightFacts(shm_bytes=64 * L.GIB, memlock_soft=65536, has_infiniband=True, visible_gpus=8,
                              cap_ipc_lock=True)
    assert L.preflight_errors(capped, shm_min_gib=8, rdma=True, gpus_per_node=8) == []
    (msg,) = L.preflight_errors(L.PreflightFacts(64 * L.GIB, 65536, True, 8), shm_min_gib=8, rdma=True,
                                gpus_per_node=8)
    assert "lacks CAP_IPC_LOCK" in msg and "IPC_LOCK capability" in msg and "memlock" in msg
    status = tmp_path / "status"
    for capeff, held in (("00000000a80425fb", False), ("00000000a80445fb", True), ("000001ffffffffff", True)):
        status.write_text(f"Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n")
        assert L.holds_cap_ipc_lock(str(status)) is held, capeff
    assert L.holds_cap_ipc_lock(str(tmp_path / "missing")) is False
    assert isinstance(L.holds_cap_ipc_lock(), bool)  # this machine's /proc/self/status parses


def test_rdma_preflight_names_the_switches_that_turn_it_off(run_cli, write_spec, tmp_path, monkeypatch):
    bad = L.PreflightFacts(shm_bytes=64 * L.GIB, memlock_soft=resource.RLIM_INFINITY, has_infiniband=False,
                           visible_gpus=8)
    (msg,) = L.preflight_errors(bad, shm_min_gib=8, rdma=True, gpus_per_node=8,
                                rdma_source="deploy.rdma.enabled: true in the spec")
    assert "deploy.rdma.enabled: true in the spec" in msg
    assert "deploy.rdma.enabled: false" in msg and "--no-rdma" in msg and "DSV3CTL_RDMA" in msg
    assert "launch.rdma=false" not in msg
    # the CLI says which setting turned RDMA on (the embedded default: deploy.rdma.enabled=auto on 2 nodes)
    monkeypatch.setattr(L, "measure", lambda: bad)
    monkeypatch.delenv("DSV3CTL_RDMA", raising=False)
    r = run_cli("launch", "leader", "--hosts", "a,b", "--runtime-dir", tmp_path / "rt")
    # a failed preflight is "environment not ready": exit 2 (docs/architecture.md, exit codes)
    assert r.code == 2 and "deploy.rdma.enabled=auto and parallelism.nodes=2" in r.err and "--no-rdma" in r.err


def _ssh_like_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_wait_for_hosts_real_sockets(capsys):
    srv, port = _ssh_like_server()
    try:
        L.wait_for_hosts(["127.0.0.1"], port, 5)
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        dead = free.getsockname()[1]
        free.close()
        t0 = time.monotonic()
        with pytest.raises(RuntimeFailure, match=r"1 of 1 workers never came up within 3 s.*127\.0\.0\.1"):
            L.wait_for_hosts(["127.0.0.1"], dead, 3)
        assert time.monotonic() - t0 < 6
        assert "retry in" in capsys.readouterr().err
    finally:
        srv.close()


def test_launch_rank_cli(run_cli, write_spec):
    r = run_cli("launch", "rank", "--rank", "1", "--dry-run", "--model-repo", "/r")
    assert r.code == 0 and "prefix1_" in r.out and "--load-model=tensorrt_llm" in r.out
    spec = write_spec({"serving": {"mode": "llmapi", "frontend": "trtllm-serve"}})
    r = run_cli("launch", "rank", "--spec", spec, "--rank", "0", "--dry-run")
    assert r.code == 0 and r.out.startswith("trtllm-llmapi-launch trtllm-serve")
    r = run_cli("launch", "rank", "--dry-run")
    assert r.code == 2 and "no MPI rank" in r.err
    r = run_cli("launch", "leader", "--hosts", "a,b", "--mode", "bogus")
    assert r.code == 2 and "--mode" in r.err
    r = run_cli("launch", "leader", "--leader-address", "nope", "--group-size", "2")
    assert r.code == 2 and "LWS_LEADER_ADDRESS" in r.err


SSHD_DOUBLE = """#!/bin/sh
# TEST DOUBLE of sshd: `-t` accepts any config; `-D` logs an accepted key (the leader's session) and stays up,
# unless DSV3CTL_TEST_SSHD_EXIT is set (sshd dies at once).
case "$1" in -t) exit 0 ;; esac
if [ -n "$DSV3CTL_TEST_SSHD_EXIT" ]; then exit 3; fi
echo "Accepted publickey for root from 10.0.0.1 port 40000 ssh2: ED25519 SHA256:test-double" >&2
exec sleep 60
"""


def test_watchdog_writes_session_lost_when_the_leader_session_is_gone(tmp_path, monkeypatch):
    """The chart's worker livenessProbe is `test ! -e "$DSV3CTL_RUNTIME_DIR/session-lost"`: the watchdog writes
    that file (one line, with the reason) before exiting 1; a stale one from an earlier run is removed at start."""
    import types

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sshd").write_text(SSHD_DOUBLE)
    (bin_dir / "sshd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(L, "install_ssh", lambda **kw: types.SimpleNamespace(sshd_config=tmp_path / "sshd_config"))
    monkeypatch.setattr(L.signal, "signal", lambda *a: None)  # keep pytest's own SIGTERM/SIGINT handlers
    mkdir = L.Path.mkdir  # /run/sshd (privilege separation) is not needed by the double, nor writable without root
    monkeypatch.setattr(L.Path, "mkdir", lambda self, *a, **kw: None if str(self) == "/run/sshd" else mkdir(self, *a, **kw))
    runtime = tmp_path / "run"
    runtime.mkdir()
    lost = runtime / L.SESSION_LOST

    lost.write_text("stale from an earlier container\n")
    monkeypatch.setenv("DSV3CTL_TEST_SSHD_EXIT", "1")
    assert L.run_worker(group=["a", "b"], ssh_port=2222, secret_dir="/x", runtime_dir=str(runtime), poll_s=0.05) == 1
    assert not lost.exists()  # sshd died, no session was lost: and the stale marker is gone

    monkeypatch.delenv("DSV3CTL_TEST_SSHD_EXIT")
    polls = iter([[4242], [4242]])  # orted under sshd for two polls, then nothing
    monkeypatch.setattr(L, "session_processes", lambda root: next(polls, []))
    rc = L.run_worker(group=["a", "b"], ssh_port=2222, secret_dir="/x", runtime_dir=str(runtime), poll_s=0.05,
                      grace_polls=2)
    assert rc == 1
    text = lost.read_text()
    assert text.count("\n") == 1 and "leader session is gone" in text and "2 polls" in text
    assert not list(runtime.glob(".*.tmp"))  # written atomically


@pytest.mark.parametrize("rank", ["16", "99", "-1"])
def test_launch_rank_outside_the_world_exits_2(run_cli, rank):
    r = run_cli("launch", "rank", "--dry-run", "--rank", rank)
    assert r.code == 2 and f"--rank={rank}" in r.err and "16 ranks" in r.err and "Traceback" not in r.err


def test_launch_rank_from_env_outside_the_world_names_the_variable(run_cli, monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "20")
    r = run_cli("launch", "rank", "--dry-run", "--tp", "8")
    assert r.code == 2 and "SLURM_PROCID=20" in r.err and "8 ranks" in r.err


def test_launch_rank_dry_run_json(run_cli, monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("HF_TOKEN", "secret-value")
    r = run_cli("launch", "rank", "--dry-run", "-o", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["rank"] == 3 and doc["rank_source"] == "OMPI_COMM_WORLD_RANK"
    assert doc["argv"][0] == "tritonserver" and "--id=rank3" in doc["argv"]
    assert doc["env"]["OMPI_COMM_WORLD_RANK"] == "3" and "HF_TOKEN" in doc["inherited_env"]
    assert "secret-value" not in r.out
    assert run_cli("launch", "rank", "--rank", "0", "-o", "json").code == 2  # json needs --dry-run


def test_spec_skip_preflight_choices_are_the_launchers_checks():
    import typing

    from dsv3ctl.adapters.launcher import PREFLIGHT_CHECKS
    from dsv3ctl.core.spec import LaunchSpec

    ann = LaunchSpec.model_fields["skip_preflight"].annotation
    assert set(typing.get_args(typing.get_args(ann)[0])) == set(PREFLIGHT_CHECKS)
