"""The measuring functions of ``dsv3ctl.adapters.trtllm`` with their real parsing running (the convert
tests patch them out): nvidia-smi output **recorded** from a real H200 (tests/fixtures/recorded/), and
**synthetic** outputs for the cases no machine here can produce (eight GPUs, an old driver, no
nvidia-smi); MemAvailable and free disk read live from this machine; and the GPU cast, which needs CUDA."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dsv3ctl.adapters import trtllm as T

RECORDED = Path(__file__).parent / "fixtures" / "recorded"
QUERY = ["--query-gpu=name,compute_cap", "--format=csv,noheader"]


def _fake_smi(tmp_path: Path, monkeypatch, stdout: str, rc: int = 0) -> None:
    """An ``nvidia-smi`` on PATH that prints ``stdout`` for exactly the query dsv3ctl documents (any other
    arguments: exit 2, as nvidia-smi does for an unknown field), so a changed query fails the test."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "out.txt").write_text(stdout)
    exe = bin_dir / "nvidia-smi"
    exe.write_text("#!/bin/sh\n"
                   f'[ "$*" = "{" ".join(QUERY)}" ] || {{ echo "bad query: $*" >&2; exit 2; }}\n'
                   f'cat "{bin_dir / "out.txt"}"\nexit {rc}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_gpu_caps_parses_recorded_h200_output(tmp_path, monkeypatch):
    """Recorded: one H200 prints ``NVIDIA H200, 9.0``."""
    _fake_smi(tmp_path, monkeypatch, (RECORDED / "nvidia-smi-h200-name-compute_cap.txt").read_text())
    assert T.gpu_caps() == [("NVIDIA H200", "9.0")]


def test_gpu_caps_eight_gpus_and_a_name_with_a_comma(tmp_path, monkeypatch):
    """Synthetic: the recorded line eight times (an 8-GPU node), and a name holding a comma (split at the
    last comma)."""
    line = (RECORDED / "nvidia-smi-h200-name-compute_cap.txt").read_text().strip()
    _fake_smi(tmp_path, monkeypatch, "\n".join([line] * 8) + "\nNVIDIA Odd, Name, 8.0\n")
    assert T.gpu_caps() == [("NVIDIA H200", "9.0")] * 8 + [("NVIDIA Odd, Name", "8.0")]


def test_gpu_caps_old_driver_or_no_nvidia_smi_is_none(tmp_path, monkeypatch):
    """Synthetic: a driver without the compute_cap field exits non-zero -> None; no nvidia-smi -> None."""
    _fake_smi(tmp_path, monkeypatch, 'Field "compute_cap" is not a valid field to query.\n', rc=2)
    assert T.gpu_caps() is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert T.gpu_caps() is None


def test_gpu_preflight_on_recorded_output_passes_and_on_ampere_refuses(tmp_path, monkeypatch):
    """The GPU check fed by the real parser: the recorded H200 passes; an A100 line (synthetic) is refused."""
    _fake_smi(tmp_path, monkeypatch, (RECORDED / "nvidia-smi-h200-name-compute_cap.txt").read_text())
    pf = T.Preflight("build-engine")
    T._check_gpu(pf, True, T.gpu_caps)
    assert not [f for f in pf.findings if f.check == "gpu"], pf.findings
    _fake_smi(tmp_path, monkeypatch, "NVIDIA A100-SXM4-80GB, 8.0\n")
    pf = T.Preflight("build-engine")
    T._check_gpu(pf, True, T.gpu_caps)
    assert any(f.check == "gpu" and "SM90" in f.message for f in pf.findings), pf.findings


def test_mem_available_and_free_disk_read_this_machine(tmp_path):
    """Live: MemAvailable of this machine's /proc/meminfo, between 0 and the physical memory; free disk of
    a path that does not exist yet is that of its nearest existing ancestor (statvfs, read independently)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < T.mem_available() <= total
    st = os.statvfs(tmp_path)
    free = T.free_disk(tmp_path / "not" / "yet")
    assert abs(free - st.f_bavail * st.f_frsize) < 256 * 1024**2  # other processes write meanwhile


@pytest.mark.gpu
def test_gpu_cast_equals_the_cpu_cast_bit_for_bit(tmp_path, run_cli):
    """The FP8 -> BF16 cast on CUDA gives the same bytes as the CPU path (which test_weights checks
    against an independent reference). Needs torch with a CUDA device: skipped otherwise."""
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed (pip install 'dsv3ctl[gpu]'), so the GPU cast cannot run here")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch: the GPU cast cannot run on this machine")
    from dsv3ctl.adapters.synth import write_synthetic

    src = tmp_path / "fp8"
    write_synthetic(src, shards=2, seed=5)
    for dev in ("cpu", "cuda"):
        r = run_cli("weights", "cast-bf16", src, tmp_path / dev, "--device", dev, "--workers", "1")
        assert r.code == 0, r.err
    for f in sorted((tmp_path / "cpu").glob("*.safetensors")):
        assert (tmp_path / "cuda" / f.name).read_bytes() == f.read_bytes(), f.name
