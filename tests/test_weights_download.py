"""`dsv3ctl weights download` against a local TEST DOUBLE of the Hugging Face Hub (tests/doubles/hub.py, 127.0.0.1
only): sha256 of every LFS file against the hub's, a bad shard deleted and fetched again, resume with range requests
after kill -9, stray partial files cleaned, and the checkpoint refused downstream while a recorded checksum fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsv3ctl.adapters.synth import write_synthetic
from dsv3ctl.core.checkpoint import STATE_DIR, verify_checksums
from tests.doubles.hub import HubDouble  # noqa: E402

REPO = "dsv3ctl-test/synthetic-v3"
BIG = "tokenizer.model"  # an LFS file big enough for two 10 MiB chunks of huggingface_hub's http_get
MIB = 1 << 20


@pytest.fixture
def hub(tmp_path):
    src = tmp_path / "hub-repo"
    write_synthetic(src, shards=4, seed=5)
    rng = np.random.default_rng(1)
    (src / BIG).write_bytes(rng.integers(0, 256, 25 * MIB, dtype=np.uint8).tobytes())
    h = HubDouble(src, REPO).start()
    yield h
    h.stop()


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "dsv3.yaml"
    p.write_text(yaml.safe_dump({"model": {"repo": REPO, "revision": "main"}}))
    return p


def _env(hub: HubDouble, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DOWNLOAD_TIMEOUT="120", NO_COLOR="1")
    return env


def _argv(out: Path, spec: Path) -> list[str]:
    return [sys.executable, "-m", "dsv3ctl", "weights", "download", "--out", str(out), "-f", str(spec), "-o", "json"]


def _download(hub, tmp_path, out, spec) -> tuple[int, dict, str]:
    cp = subprocess.run(_argv(out, spec), env=_env(hub, tmp_path), capture_output=True, text=True, timeout=300)
    try:
        doc = json.loads(cp.stdout)
    except ValueError:
        doc = {}
    return cp.returncode, doc, cp.stderr


def _shards(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("*.safetensors"))


def test_bad_shard_is_deleted_refetched_and_refused_downstream(hub, spec, tmp_path, run_cli):
    out = tmp_path / "dl"
    shards = sorted(f for f in hub.files if f.endswith(".safetensors"))
    served_bad, rotten = shards[1], shards[2]
    hub.corrupt_next = {served_bad}
    rc, doc, err = _download(hub, tmp_path, out, spec)
    assert rc == 1, (doc, err)
    assert doc["fetch"]["rejected"] == [served_bad] and not (out / served_bad).exists()
    assert f"{served_bad}: the transferred bytes do not match the hub's sha256" in err and "next run fetches it again" in err

    rc, doc, err = _download(hub, tmp_path, out, spec)
    assert rc == 0, err
    assert doc["ok"] and doc["fetch"]["fetched"] == [served_bad] and not doc["fetch"]["rejected"]
    assert len(hub.ranges(served_bad)) == 2 and all(len(hub.ranges(s)) == 1 for s in shards if s != served_bad)
    assert doc["checksums_cached"] == doc["checksums_checked"] == 5  # hashed once, when fetched

    # the same size, other bytes (bit rot, a bad copy): refused by verify, convert, cast-bf16 and launch prepare
    data = bytearray((out / rotten).read_bytes())
    data[-3] ^= 0x01
    (out / rotten).write_bytes(bytes(data))
    assert verify_checksums(out).bad == [rotten]
    r = run_cli("weights", "verify", out, "--checksums", "-o", "json")
    assert r.code == 1 and rotten in json.loads(r.out)["checksum_problems"][0]
    r = run_cli("weights", "cast-bf16", out, tmp_path / "bf16", "--device", "cpu")
    assert r.code == 1 and rotten in r.err and "sha256" in r.err and not (tmp_path / "bf16").exists()

    from dsv3ctl.adapters import prepare, trtllm
    from dsv3ctl.core.spec import Spec

    assert prepare._verifies(out) is None  # the download step is not "done": it runs and fetches the shard again
    pf = trtllm.preflight_convert(Spec(), out, tmp_path / "ckpt", 0, "python3", __file__,
                                  probe=lambda _p: {"installed": True, "version": "x", "model_map": True},
                                  caps=lambda: [], memory=lambda: 1 << 40, free=lambda _p: 1 << 50)
    assert any(f.check == "checksums" and rotten in f.message for f in pf.errors)

    rc, doc, err = _download(hub, tmp_path, out, spec)
    assert rc == 0, err
    assert doc["fetch"]["refetched"] == [rotten] and len(hub.ranges(rotten)) == 2
    assert f"{rotten}: sha256 does not match the hub's; deleted, fetching it again" in err
    assert prepare._verifies(out) is not None

    # unchanged files are not hashed again
    rc, doc, _ = _download(hub, tmp_path, out, spec)
    assert rc == 0 and doc["checksums_cached"] == 5 and doc["fetch"]["fetched"] == []


def _wait_partial(out: Path, at_least: int, proc: subprocess.Popen, timeout: float = 60) -> Path:
    dl = out / ".cache" / "huggingface" / "download"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for p in dl.glob("*.incomplete") if dl.is_dir() else []:
            if p.stat().st_size >= at_least:
                return p
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"no partial file of {at_least} bytes after {timeout}s")


def test_transfer_killed_twice_resumes_with_range_requests(hub, spec, tmp_path):
    out = tmp_path / "dl"
    stray = out / ".cache" / "huggingface" / "download" / "x1.deadbeef.0badf00d.incomplete"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"\0" * 1000)  # an earlier run's partial file that no file of this revision can use
    hub.stall_after = 12 * MIB  # every response stops after 12 MiB and hangs: a slow transfer
    sizes, logs = [], []
    for k in (1, 2):
        proc = subprocess.Popen(_argv(out, spec), env=_env(hub, tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        part = _wait_partial(out, k * 10 * MIB, proc)  # http_get writes 10 MiB chunks
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -9
        sizes.append(part.stat().st_size)
        logs.append(proc.stderr.read())  # type: ignore[union-attr]
    hub.release()
    rc, doc, err = _download(hub, tmp_path, out, spec)
    assert rc == 0, err
    assert hub.ranges(BIG) == [None, f"bytes={sizes[0]}-", f"bytes={sizes[1]}-"]
    sent = sum(n for p, _r, n in hub.gets if p == BIG)
    assert sizes[0] >= 10 * MIB and sent <= hub.files[BIG]["size"] + 2 * 2 * MIB  # < 1 chunk lost per kill
    assert doc["fetch"]["resumed"] == {BIG: sizes[1]} and doc["ok"]
    assert f"removed stray partial file {stray.relative_to(out)} (1,000 bytes)" in logs[0] and not stray.exists()
    assert f"{BIG}: resumed at byte {sizes[1]:,} of {hub.files[BIG]['size']:,}" in err
    assert not list(out.rglob("*.incomplete")) and not list(out.rglob("*.partial"))
    assert (out / BIG).read_bytes() == (hub.root / BIG).read_bytes()
    assert _shards(out) == _shards(hub.root)
    assert (out / STATE_DIR / "verified.json").is_file()
