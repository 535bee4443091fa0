"""The fabric check's parser and verdicts on recorded NCCL INFO outputs.

Fixtures (tests/fixtures/nccl/): ``synthetic-*.log`` are SYNTHETIC, written by ``generate.py`` from the format
strings in dsv3ctl/data/contracts/nccl_info_lines.json; ``h200-*.log`` are real captures (their first line gives the
command and the NCCL version).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dsv3ctl.adapters import fabric as FC
from dsv3ctl.core import contracts
from dsv3ctl.core import fabric as F

FIX = Path(__file__).parent / "fixtures" / "nccl"
GIB = 2**30


def _log(name: str) -> F.NcclLog:
    return F.parse((FIX / name).read_text())


def _sizes(busbw_gbs_at_1gib: float, n: int = 4) -> list[F.SizeResult]:
    alg = busbw_gbs_at_1gib * n / (2 * (n - 1))
    t = GIB / 1e9 / alg
    return F.measure_sizes({r: [(2**20, t / 100), (GIB, t)] for r in range(n)}, n)


def _judge(log: F.NcclLog, **kw):  # type: ignore[no-untyped-def]
    base = dict(mode="enforce", world=4, rdma=True, rdma_resource="rdma/ib", rdma_count=2, ib_hca="")
    base.update(kw)
    return F.judge(log, kw.pop("sizes", []), **{k: v for k, v in base.items() if k != "sizes"})


def test_contract_regexes_compile_and_cite_the_source():
    c = contracts.load("nccl_info_lines")
    assert c.source["repo"] == "NVIDIA/nccl" and re.fullmatch(r"[0-9a-f]{40}", c.source["commit"])
    for name, it in c.items.items():
        assert it.line and it.file and it.file.startswith("src/"), name
        re.compile(it.extra["regex"])


def test_every_format_string_is_matched_by_its_regex():
    """A line printed from each format (arguments filled in) is read back by the item's regex."""
    samples = {
        "version": "NCCL version 2.28.9+cuda13.0",
        "using_network": "Using network IB",
        "comm_info": "comm 0x1 rank 3 nRanks 16 nNodes 2 localRanks 8 localRank 3 MNNVL 0",
        "init_complete": "ncclCommInitRankConfig comm 0x17403bb0 rank 0 nranks 1 cudaDev 0 nvmlDev 0 busId 60 "
                         "commId 0xb8cf8a418ffa3388 - Init COMPLETE",
        "ib_devices": "NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_3:1/RoCE [RO]; OOB eth0:10.0.0.1<0>",
        "ib_none": "NET/IB : No device found.",
        "socket_devices": "NET/Socket : Using [0]eth0:192.0.2.2<0>",
        "net_send": "Channel 02/0 : 7[7] -> 8[0] [send] via NET/IB/3/GDRDMA",
        "net_send_proxy": "Channel 02/0 : 7[7] -> 8[0] [send] via NET/IB/3(1)/GDRDMA",
        "net_receive": "Channel 02/1 : 7[7] -> 8[0] [receive] via NET/Socket/0",
        "p2p_direct": "Channel 00/0 : 0[0] -> 1[1] via P2P/direct pointer/read",
        "p2p_cumem": "Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read",
        "p2p_ipc": "Channel 00/0 : 0[0] -> 1[1] via P2P/IPC",
        "p2p_indirect": "Channel 00/0 : 0[0] -> 1[1] via P2P/indirect/2[2]",
        "shm": "Channel 00 : 0[0] -> 1[1] via SHM/direct/direct",
        "collnet": "CollNet 00/0 : 3 [send] via COLLNET/SHARP/0/GDRDMA",
        "nvls_support": "NVLS multicast support is not available on dev 0 (NVLS_NCHANNELS 0)",
        "prefix_info": "vm:455:455 [0] NCCL INFO NCCL version 2.28.9+cuda13.0",
        "prefix_warn": "vm:455:460 [0] transport/net_ib.cc:595 NCCL WARN NET/IB : ibv_reg_mr failed",
    }
    c = contracts.load("nccl_info_lines")
    assert set(samples) == set(c.items)
    for name, line in samples.items():
        assert re.match(c.items[name].extra["regex"], line), (name, line)


def test_real_h200_capture_version_and_network():
    log = _log("h200-1gpu-nccl-2.28.9-subsys-all.log")
    assert (log.version, log.cuda) == ("2.28.9", "13.0")
    p = log.by_rank()[0]
    assert (p.host, p.nranks, p.nnodes, p.network, p.ib_none, p.socket_devices) == ("vm", 1, 1, "Socket", True,
                                                                                     ["eth0"])
    assert log.channels == []  # one rank: nothing to connect
    v = F.judge(log, [], mode="enforce", world=1, rdma=False)
    assert v.status == "ok" and not v.problems


def test_ib_fixture_is_ok_and_names_devices():
    log = _log("synthetic-ib.log")
    assert log.version == "2.27.7" and sorted(log.by_rank()) == [0, 1, 2, 3]
    net = [c for c in log.channels if c.is_net]
    assert {c.transport for c in net} == {"NET/IB"} and {c.device for c in net} == {"mlx5_0", "mlx5_1"}
    assert {(c.src, c.dst) for c in net} == {(1, 2), (3, 0)}
    assert {c.transport for c in log.channels if not c.is_net} == {"P2P"}
    v = _judge(log, sizes=_sizes(60.0))
    assert v.status == "ok", v.summary()
    s = F.summarize(log)
    assert s["ranks"]["1"]["inter_node"] == ["NET/IB"] and s["ranks"]["1"]["net_devices"] == ["mlx5_0", "mlx5_1"]


def test_sockets_fixture_fails_with_device_plugin_cause():
    v = _judge(_log("synthetic-sockets.log"))
    assert v.status == "fail"
    (p,) = v.problems
    assert p.code == "socket" and p.fix == "deploy.rdma.resource"
    assert "rank(s) 0-3" in p.message and "NET/Socket" in p.message and "No device found" in p.message
    assert "rdma/ib x 2" in p.message


def test_sockets_fixture_warns_in_warn_mode_and_passes_without_rdma():
    log = _log("synthetic-sockets.log")
    assert _judge(log, mode="warn").status == "warn"
    assert _judge(log, rdma=False).status == "ok"
    assert _judge(log, mode="off").status == "off"


def test_mixed_fixture_fails_on_sockets_and_disagreement():
    v = _judge(_log("synthetic-mixed.log"))
    codes = {p.code: p for p in v.problems}
    assert v.status == "fail" and set(codes) == {"socket", "disagree"}
    assert "rank(s) 2,3" in codes["socket"].message
    d = codes["disagree"]
    assert "NET/IB: rank(s) 0,1 (dsv3-0)" in d.message and "NET/Socket: rank(s) 2,3 (dsv3-0-1)" in d.message
    assert d.fix == "deploy.node_selector"


def test_roce_sockets_names_hca_and_gid_index():
    (p,) = _judge(_log("synthetic-roce-sockets.log"), ib_hca="mlx5_0,mlx5_1").problems
    assert p.fix == "deploy.nccl.ib_hca"
    assert "mlx5_0:1/RoCE" in p.message and "NCCL_IB_GID_INDEX" in p.message and "NCCL_IB_HCA" in p.message


def test_memlock_warning_names_ipc_lock():
    (p,) = _judge(_log("synthetic-memlock.log")).problems
    assert "memlock" in p.message and "IPC_LOCK" in p.message and p.fix == "deploy.rdma.enabled"


def test_busbw_below_threshold_fails_with_the_key():
    thr, src = F.default_min_busbw_gbps(nodes=2, rdma=True, rdma_count=2)
    assert thr == 0.5 * 2 * 400 and "deploy.rdma.count=2" in src
    ok = _judge(_log("synthetic-ib.log"), sizes=_sizes(thr / 8 + 1), min_busbw_gbps=thr, min_source=src)
    assert ok.status == "ok", ok.summary()
    v = _judge(_log("synthetic-ib.log"), sizes=_sizes(12.5), min_busbw_gbps=thr, min_source=src)
    (p,) = v.problems
    assert p.code == "busbw" and p.fix == "launch.fabric_min_busbw_gbps" and "1 GiB" in p.message
    assert "12.50 GB/s = 100.0 Gb/s, below 400 Gb/s" in p.message


def test_default_threshold_rules():
    assert F.default_min_busbw_gbps(nodes=1, rdma=True, rdma_count=8)[0] == 0
    assert F.default_min_busbw_gbps(nodes=2, rdma=False, rdma_count=8)[0] == 0
    assert F.default_min_busbw_gbps(nodes=2, rdma=True, rdma_count=8)[0] == 1600
    assert F.default_min_busbw_gbps(nodes=2, rdma=True, rdma_count=8, explicit=900)[0] == 900


def test_missing_rank_lines_and_failed_rank():
    text = (FIX / "synthetic-ib.log").read_text().splitlines()
    only01 = [line for line in text if not line.startswith("dsv3-0-1:")]
    v = _judge(F.parse(only01), failed_ranks={3: "RuntimeError: NCCL timeout"})
    codes = [p.code for p in v.problems]
    assert codes[0] == "rank_failed" and "no_lines" in codes
    assert "rank(s) 2,3 of 4" in next(p.message for p in v.problems if p.code == "no_lines")


def test_busbw_definition():
    assert F.busbw(100.0, 2) == 100.0
    assert F.busbw(100.0, 16) == pytest.approx(187.5)
    assert F.busbw(100.0, 1) == 0.0
    (s,) = F.measure_sizes({0: [(GIB, 0.02)], 1: [(GIB, 0.04)]}, 2)
    assert s.time_s == pytest.approx(0.03) and s.max_time_s == 0.04
    assert s.algbw_gbs == pytest.approx(GIB / 1e9 / 0.03) and s.busbw_gbs == pytest.approx(s.algbw_gbs)


def test_gloo_backend_notes_no_transport():
    v = F.judge(None, _sizes(1.0, 2), mode="enforce", world=2, rdma=False, backend="gloo")
    assert v.status == "ok" and "gloo backend" in v.notes[0]


# ------------------------------------------------------------------------- the running part (adapters/fabric)

DSV3CTL = str(Path(sys.executable).with_name("dsv3ctl"))
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _result_line(rank: int, world: int, backend: str, t_1gib: float, error: str | None = None) -> str:
    rec = {"rank": rank, "world": world, "host": f"h{rank // 2}", "backend": backend, "torch": "2.11.0",
           "nccl": None, "sizes": [[2**20, t_1gib / 100], [GIB, t_1gib]], "error": error}
    return FC.MARKER + json.dumps(rec)


def _opts(**kw) -> FC.FabricOptions:  # type: ignore[no-untyped-def]
    base = dict(mode="enforce", nodes=2, rdma=True, rdma_count=2,
                min_source="derived: ...", min_busbw_gbps=400.0)
    base.update(kw)
    return FC.FabricOptions(**base)  # type: ignore[arg-type]


def test_evaluate_ib_log_with_result_lines_ok_then_slow():
    ib = (FIX / "synthetic-ib.log").read_text()
    fast = ib + "\n".join(_result_line(r, 4, "nccl", GIB / 1e9 / 40) for r in range(4)) + "\n"
    doc = FC.evaluate(fast, world=4, opts=_opts())
    assert doc["status"] == "ok", doc["problems"]
    assert doc["sizes"][-1]["busbw_gbs"] == pytest.approx(60.0) and doc["min_busbw_gbps"] == 400.0
    assert doc["nccl"]["nccl_version"] == "2.27.7" and doc["nodes"] == 2
    slow = ib + "\n".join(_result_line(r, 4, "nccl", GIB / 1e9 / 4) for r in range(4)) + "\n"
    doc = FC.evaluate(slow, world=4, opts=_opts())
    assert doc["status"] == "fail" and [p["code"] for p in doc["problems"]] == ["busbw"]
    assert FC.describe(doc)[-1].endswith("[fix: launch.fabric_min_busbw_gbps]")


def test_evaluate_failed_and_missing_ranks_and_warn_mode():
    text = _result_line(0, 2, "gloo", 0.5) + "\n" + _result_line(1, 2, "gloo", 0.5, error="RuntimeError: boom")
    doc = FC.evaluate(text, world=3, opts=_opts(mode="warn", rdma=False, min_busbw_gbps=0, min_source=""))
    assert doc["status"] == "warn" and doc["backend"] == "gloo"
    msgs = [p["message"] for p in doc["problems"]]
    assert "rank 1: the all-reduce benchmark failed: RuntimeError: boom" in msgs[0] and "rank 2" in msgs[1]


def test_cli_from_log_json_and_exit_codes(tmp_path):
    r = subprocess.run([DSV3CTL, "fabric-check", "--from-log", str(FIX / "synthetic-sockets.log"), "--world", "4",
                        "--runtime-dir", str(tmp_path), "-o", "json"], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "fail" and doc["problems"][0]["fix"] == "deploy.rdma.resource"
    assert json.loads((tmp_path / "fabric-check.json").read_text())["status"] == "fail"
    r = subprocess.run([DSV3CTL, "fabric-check", "--from-log", str(FIX / "synthetic-ib.log"), "--world", "4",
                        "--runtime-dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0 and "inter-node NET/IB" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([DSV3CTL, "fabric-check", "--mode", "off"], capture_output=True, text=True)
    assert r.returncode == 2 and "--mode='off'" in r.stderr


@pytest.mark.skipif(HAS_TORCH, reason="checks the report when torch is missing")
def test_cli_local_world_without_torch_fails_with_the_reason(tmp_path):
    r = subprocess.run([DSV3CTL, "fabric-check", "--local", "2", "--backend", "gloo", "--runtime-dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rank 0: the all-reduce benchmark failed: ModuleNotFoundError: No module named 'torch'" in r.stdout


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (the gloo backend needs it; ~500 MiB wheel, not "
                                          "a test dependency)")
def test_cli_local_gloo_world(tmp_path):
    r = subprocess.run([DSV3CTL, "fabric-check", "--local", "2", "--backend", "gloo", "--runtime-dir",
                        str(tmp_path), "-o", "json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["backend"] == "gloo" and len(doc["sizes"]) == 3 and all(s["busbw_gbs"] > 0 for s in doc["sizes"])


def test_plan_states_mode_and_threshold():
    from dsv3ctl.core.planner import make_plan
    from dsv3ctl.core.spec import Spec

    plan = make_plan(Spec.model_validate({"deploy": {"rdma": {"count": 8}}}))
    (c,) = [c for c in plan.checks if c.name == "fabric_check"]
    assert c.ok and c.severity == "info"
    assert "fabric check enforce" in c.message and ">= 1600 Gb/s" in c.message and "deploy.rdma.count=8" in c.message
    one = make_plan(Spec.model_validate({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}}))
    assert "fabric check off" in next(c.message for c in one.checks if c.name == "fabric_check")


def test_sbatch_fabric_step_before_the_server():
    from dsv3ctl.core.spec import Spec
    from dsv3ctl.render.slurm import render_sbatch

    text = render_sbatch(Spec())
    i, j = text.index("fabric-check --worker-path"), text.index("  dsv3ctl launch rank --mode")
    assert i < j
    assert ("dsv3ctl fabric-check --from-log - --world 16 --mode enforce --rdma --min-busbw-gbps 200 "
            '--runtime-dir /tmp < "${FABRIC_LOG}"\n') in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    warn = render_sbatch(Spec.model_validate({"launch": {"fabric_check": "warn"}}))
    assert '< "${FABRIC_LOG}" || true' in warn
    off = render_sbatch(Spec.model_validate({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}}))
    assert "fabric-check" not in off


def test_spec_takes_yaml_off():
    import yaml

    from dsv3ctl.core.spec import Spec

    assert Spec.model_validate(yaml.safe_load("launch: {fabric_check: off}")).launch.fabric_check == "off"
