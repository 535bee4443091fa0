"""The test image (docker/Dockerfile target ``test``, built by tools/test-image.sh with buildah) run with runc,
no Kubernetes: its rootfs comes from the docker-archive tar the script prints; inside it the real
``dsv3ctl launch leader`` (one host, two slots: mpirun -np 2) starts the tritonserver TEST DOUBLE once per rank,
rank 0 reports ready only when both ranks checked in, answers a generate request with labelled canned text,
and the world ends when a rank is lost.

Needs root, buildah, mmdebstrap and runc (``make sys-deps``); skips with the reason otherwise. The first run
builds the image (minutes, cached under ~/.cache/dsv3ctl/test-image); later runs reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (buildah --isolation chroot, runc)"
    miss = [t for t in ("buildah", "mmdebstrap", "runc", "ssh-keygen") if not shutil.which(t)]
    if miss:
        return f"missing {', '.join(miss)}: run `make sys-deps` (apt: buildah mmdebstrap runc openssh-client)"
    return None


_why = _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


def extract_docker_archive(tar: Path, dest: Path) -> dict:
    """Unpack a ``docker-archive`` (``docker save`` layout: manifest.json, config, layer tars) into ``dest``,
    applying whiteouts (``.wh.<name>`` deletes, ``.wh..wh..opq`` empties the directory); returns the config."""
    with tarfile.open(tar) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = json.load(outer.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer)) as lt:
                members = []
                for m in lt.getmembers():
                    head, _, name = m.name.rpartition("/")
                    if name == ".wh..wh..opq":
                        d = dest / head
                        for c in d.iterdir() if d.is_dir() else ():
                            shutil.rmtree(c) if c.is_dir() and not c.is_symlink() else c.unlink()
                    elif name.startswith(".wh."):
                        p = dest / head / name[4:]
                        if p.is_dir() and not p.is_symlink():
                            shutil.rmtree(p)
                        elif p.exists() or p.is_symlink():
                            p.unlink()
                    else:
                        p = dest / m.name
                        if (p.is_symlink() or p.is_file()) and not m.isdir():
                            p.unlink()
                        members.append(m)
                lt.extractall(dest, members=members, numeric_owner=True, filter="fully_trusted")
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def image_tar() -> Path:
    r = subprocess.run([str(ROOT / "tools" / "test-image.sh")], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    tar = Path(r.stdout.strip().splitlines()[-1])
    assert tar.is_file() and tar.name.endswith(".docker.tar")
    return tar


def test_leader_under_mpirun_in_the_image_serves_when_every_rank_checked_in(image_tar, tmp_path):
    rootfs = tmp_path / "bundle" / "rootfs"
    rootfs.mkdir(parents=True)
    config = extract_docker_archive(image_tar, rootfs)["config"]
    assert config["Entrypoint"] == ["/usr/local/bin/dsv3ctl"]
    assert config["Labels"]["ai.dsv3ctl.mode"] == "test"
    work = rootfs / "work"
    (work / "secret").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "secret" / "id_ed25519")],
                   check=True)
    engine = "/work/engine"
    (work / "engine").mkdir()
    (work / "engine" / "config.json").write_text(json.dumps(
        {"version": "0.17.0", "pretrained_config": {"mapping": {"world_size": 2, "tp_size": 2, "pp_size": 1}},
         "build_config": {}}))
    (work / "repo" / "tensorrt_llm").mkdir(parents=True)
    (work / "repo" / "tensorrt_llm" / "config.pbtxt").write_text(
        f'name: "tensorrt_llm"\nparameters: {{\n  key: "gpt_model_path"\n  value: {{\n    string_value: "{engine}"\n  }}\n}}\n')
    (work / "dsv3.yaml").write_text("serving: {mode: engine}\nparallelism: {nodes: 1, gpus_per_node: 2, tp: 2}\n"
                                    "deploy: {rdma: {enabled: false}}\nlaunch: {fabric_check: 'off'}\n")
    http, grpc, checkin = _free_port(), _free_port(), _free_port()
    args = ["/usr/local/bin/dsv3ctl", "launch", "leader", "--spec", "/work/dsv3.yaml", "--hosts", "localhost",
            "--ssh-secret-dir", "/work/secret", "--runtime-dir", "/work/run", "--model-repo", "/work/repo",
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(_free_port()),
            "--skip-preflight", "shm", "--skip-preflight", "gpus"]
    spec = json.loads(subprocess.run(["runc", "spec", "--bundle", str(rootfs.parent)], capture_output=True,
                                     text=True, check=True).stdout or (rootfs.parent / "config.json").read_text())
    env = [e for e in config.get("Env", []) if e.startswith("PATH=")]
    spec["process"].update(args=args, terminal=False, cwd="/",
                           env=env + ["HOME=/root", f"DSV3CTL_STANDIN_PORT={checkin}", "DSV3CTL_STANDIN_WAIT_S=60"])
    spec["root"] = {"path": "rootfs", "readonly": False}
    spec["hostname"] = "dsv3-test"
    # the host's network namespace: the test reaches rank 0 on 127.0.0.1 (as a pod's hostNetwork would)
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    (rootfs.parent / "config.json").write_text(json.dumps(spec))
    (rootfs / "etc" / "hosts").write_text("127.0.0.1 localhost dsv3-test\n")
    name = f"dsv3ctl-test-{os.getpid()}"
    log = (tmp_path / "container.log").open("w+")
    proc = subprocess.Popen(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle", str(rootfs.parent), name],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def output() -> str:
        log.flush()
        return (tmp_path / "container.log").read_text()[-4000:]

    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = _get(f"http://127.0.0.1:{http}/v2/health/ready")[0]
            except OSError:
                ready = None
            if ready == 200:
                break
            time.sleep(0.3)
        assert ready == 200, f"rank 0 never ready within 60 s (last status {ready}):\n{output()}"
        text = output()
        assert "all 2 ranks checked in: ready" in text and "rank 1: checked in with rank 0" in text, text
        status, headers, body = _get(f"http://127.0.0.1:{http}/v2/models/ensemble/generate",
                                     json.dumps({"text_input": "hi", "max_tokens": 14}).encode())
        assert status == 200, body
        assert "test double, not a real model" in json.loads(body)["text_output"]
        assert headers["Server"].startswith("triton-test-double")
        assert json.loads(_get(f"http://127.0.0.1:{http}/v2")[2])["name"] == "triton-test-double"
        # a lost rank ends the world, as in a real leader-mode world: kill rank 1, the leader exits non-zero
        ps = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "ps", name, "-o", "pid,args"],
                            capture_output=True, text=True, check=True).stdout
        rank_pids = [int(line.split()[0]) for line in ps.splitlines()[1:] if "/usr/local/bin/tritonserver " in line]
        assert len(rank_pids) == 2, ps
        for pid in rank_pids:
            env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
            if b"OMPI_COMM_WORLD_RANK=1" in env:
                os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=60)
        assert rc != 0, output()
        assert "rank 1 is lost" in output()
    finally:
        if proc.poll() is None:
            subprocess.run(["runc", "--root", str(tmp_path / "runc"), "kill", name, "KILL"], capture_output=True)
            proc.wait(timeout=30)
        subprocess.run(["runc", "--root", str(tmp_path / "runc"), "delete", "--force", name], capture_output=True)
        shutil.rmtree(rootfs.parent, ignore_errors=True)  # ~0.9 GB
