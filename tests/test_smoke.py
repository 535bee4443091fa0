"""``dsv3ctl smoke``: the rendered run.py command over the world (dry run, sbatch, JSON), and a real run
through the launcher in network namespaces (real sshd, real OpenMPI mpirun) with a TEST DOUBLE run.py
whose argparse is built from dsv3ctl/data/contracts/run_py.json (examples/run.py @ the pin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dsv3ctl.core import contracts
from dsv3ctl.render import smoke as S


def test_dry_run_renders_run_py_over_the_world(run_cli, write_spec):
    spec = write_spec({"parallelism": {"nodes": 2, "gpus_per_node": 8, "tp": 16}, "launch": {"engine_dir": "/e"}})
    r = run_cli("smoke", "-f", spec, "--dry-run", "--hosts", "n0,n1", "-o", "json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["world_size"] == 16 and d["hosts"] == ["n0", "n1"]
    cmd = d["rank_cmd"]
    assert cmd[:2] == ["python3", S.RUN_PY]
    assert cmd[2:] == ["--input_text", "Today is a nice day.", "--max_output_len", "30", "--tokenizer_dir",
                       "/models/hf", "--engine_dir", "/e", "--top_p", "0.95", "--temperature", "0.3"]
    mp = d["mpirun"]
    assert mp[0] == "mpirun" and mp[mp.index("-np") + 1] == "16" and mp[-len(cmd):] == cmd
    # every flag is in the run.py contract, and the values parse with run.py's argparse
    a = contracts.argparser("run_py").parse_args(cmd[2:])
    assert a.opt_input_text == ["Today is a nice day."] and a.opt_max_output_len == 30 and a.opt_top_p == 0.95
    r = run_cli("smoke", "-f", spec, "--dry-run", "--hosts", "n0,n1")
    assert r.code == 0 and r.out.startswith("mpirun ") and "run.py --input_text" in r.out


def test_dry_run_refuses_a_world_the_hosts_cannot_hold(run_cli, write_spec):
    spec = write_spec({"parallelism": {"nodes": 2, "gpus_per_node": 8, "tp": 16}})
    r = run_cli("smoke", "-f", spec, "--dry-run", "--hosts", "n0")
    assert r.code == 2


def test_sbatch_step_and_llmapi_generate_call(run_cli, write_spec):
    spec = write_spec({"parallelism": {"nodes": 2, "gpus_per_node": 8, "tp": 16}, "launch": {"engine_dir": "/e"}})
    r = run_cli("smoke", "-f", spec, "--sbatch")
    assert r.code == 0 and "srun --mpi=pmix" in r.out and "--ntasks=16" in r.out and "run.py --input_text" in r.out
    ll = write_spec({"parallelism": {"nodes": 2, "gpus_per_node": 8, "tp": 16}, "serving": {"mode": "llmapi"}}, "l.yaml")
    d = json.loads(run_cli("smoke", "-f", ll, "--dry-run", "--hosts", "n0,n1", "-o", "json").out)
    cmd = d["rank_cmd"]
    assert cmd[0] == "trtllm-llmapi-launch" and cmd[2] == "-c" and "SamplingParams(max_tokens=" in cmd[3]
    assert json.loads(cmd[4])["tp"] == 16


@pytest.mark.parametrize("bad", [["--prompt", " "], ["--max-output-len", "0"], ["--top-p", "1.5"]])
def test_bad_values_exit_2(run_cli, bad):
    assert run_cli("smoke", "--dry-run", "--hosts", "n0,n1", *bad).code == 2


def test_parse_outputs():
    text = 'noise\nInput [Text 0]: "Today"\nOutput [Text 0 Beam 0]: " is sunny."\n'
    assert S.parse_outputs(text, "engine") == [" is sunny."]
    assert S.parse_outputs("Output [Text 0 Beam 0]: \"\"\n", "engine") == [""]
    assert S.parse_outputs(S.LLMAPI_MARK + json.dumps({"text": "hi"}) + "\n", "llmapi") == ["hi"]
    assert S.parse_outputs("nothing", "engine") == []


# ------------------------------------------------------------------------------ through the launcher
RUN_PY_DOUBLE = textwrap.dedent('''\
    #!{python}
    """TEST DOUBLE of TensorRT-LLM's examples/run.py: argparse from dsv3ctl/data/contracts/run_py.json (so it
    rejects a flag or value the real one rejects); records its rank and namespace; rank 0 prints the
    Input/Output lines in run.py's format (print_output, run.py:237/247) unless told to print nothing."""
    import json, os, sys
    from dsv3ctl.core.contracts import argparser
    a = argparser("run_py", prog="run.py").parse_args()
    rank = os.environ.get("OMPI_COMM_WORLD_RANK", "?")
    with open(os.path.join(os.environ["DSV3CTL_TEST_RECORDS"], f"rank{{rank}}.json"), "w") as f:
        json.dump({{"rank": rank, "argv": sys.argv, "netns": os.stat("/proc/self/ns/net").st_ino}}, f)
    if rank == "0":
        print(f'Input [Text 0]: "{{a.opt_input_text[0]}}"')
        text = "" if os.environ.get("DSV3CTL_TEST_EMPTY") else " I am going to the park."
        print(f'Output [Text 0 Beam 0]: "{{text}}"', flush=True)
''')


@pytest.fixture
def netns_cluster(tmp_path):
    import test_launch_netns as N

    if N._why:
        pytest.skip(N._why)
    made: list = []

    def make(nodes: int):
        c = N.Cluster(tmp_path, nodes)
        made.append(c)
        return c

    yield make
    for c in made:
        c.down()


def _smoke(c, *args: str, **extra: str) -> subprocess.Popen:
    pod = c.names[0].split(".")[0]
    rp = c.tmp / "run.py"
    rp.write_text(RUN_PY_DOUBLE.format(python=sys.executable))
    rp.chmod(0o755)
    cmd = ["ip", "netns", "exec", c.netns[0], "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', pod,
           str(Path(sys.executable).with_name("dsv3ctl")), "smoke", "--spec", str(c.spec), "--runtime-dir",
           str(c.run_root / pod), "--ssh-secret-dir", str(c.secret), "--python", sys.executable, "--run-py", str(rp),
           "--engine-dir", str(c.engine), "--tokenizer-dir", str(c.tmp), "--wait-timeout", "60", "-o", "json", *args]
    log = open(c.tmp / f"{pod}.log", "wb")
    out = open(c.tmp / "smoke.json", "wb")
    p = subprocess.Popen(cmd, env=c.env(0, **extra), stdout=out, stderr=log, start_new_session=True)
    c.procs.append(p)
    return p


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("empty", [False, True])
def test_smoke_runs_run_py_on_every_rank_through_the_launcher(netns_cluster, empty):
    c = netns_cluster(2)
    c.up()
    for i in (1,):
        c.start(i, "worker")
    p = _smoke(c, **({"DSV3CTL_TEST_EMPTY": "1"} if empty else {}))
    rc = p.wait(180)
    log = c.log(0)
    recs = {int(x.stem[4:]): json.loads(x.read_text()) for x in c.records.glob("rank*.json")}
    assert sorted(recs) == list(range(c.nodes * c.slots)), log
    for r, rec in recs.items():
        assert rec["netns"] == c.netns_inode(r // c.slots)  # each rank ran in its node's namespace
        assert rec["argv"][1:3] == ["--input_text", "Today is a nice day."]
    if empty:
        assert rc == 1 and "no generated text" in (c.tmp / "smoke.json").read_text()
        return
    assert rc == 0, log
    d = json.loads((c.tmp / "smoke.json").read_text())
    assert d["output"] == " I am going to the park." and d["prompt"] == "Today is a nice day." and d["seconds"] > 0
    assert os.path.basename(d["rank_cmd"][1]) == "run.py"
