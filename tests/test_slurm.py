"""``dsv3ctl slurm render``: the sbatch script is valid bash, shellcheck-clean and says what docs/launch.md says."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def test_slurm_render_engine(run_cli, tmp_path):
    out = tmp_path / "dsv3.sbatch"
    r = run_cli("slurm", "render", "--out", out)
    assert r.code == 0, r.err
    text = out.read_text()
    assert out.stat().st_mode & 0o111
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gres=gpu:8", "srun --mpi=pmix",
                 '--container-image="${IMAGE}"', "IMAGE='ghcr.io#dsv3ctl/dsv3ctl:", "MOUNTS=/models:/models",
                 "dsv3ctl launch rank --mode engine"):
        assert line in text
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0


def test_slurm_render_llmapi_stdout(run_cli, write_spec):
    spec = write_spec({"serving": {"mode": "llmapi"}, "parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8},
                       "slurm": {"partition": "gpu", "container_mounts": ["/data:/models:ro"]}})
    r = run_cli("slurm", "render", "--spec", spec)
    assert r.code == 0
    assert "#SBATCH --partition=gpu" in r.out and "--mode llmapi" in r.out and "MOUNTS=/data:/models:ro" in r.out


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck missing: run `make sys-deps`")
def test_slurm_shellcheck(run_cli, tmp_path):
    out = tmp_path / "s.sbatch"
    assert run_cli("slurm", "render", "--out", out).code == 0
    r = subprocess.run(["shellcheck", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_slurm_render_refuses_an_invalid_layout(run_cli, write_spec, tmp_path):
    spec = write_spec({"parallelism": {"nodes": 3, "gpus_per_node": 4, "tp": 12}})
    out = tmp_path / "bad.sbatch"
    r = run_cli("slurm", "render", "--spec", spec, "--out", out)
    assert r.code == 2 and "tp=12" in r.err and f"dsv3ctl plan --spec {spec}" in r.err
    assert not out.exists() and "Traceback" not in r.err


def test_slurm_render_out_directory_is_a_clean_error(run_cli, tmp_path):
    r = run_cli("slurm", "render", "--out", tmp_path)
    assert r.code == 2 and "--out" in r.err and "is a directory" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize(("ref", "uri"), [
    ("ghcr.io/dsv3ctl/dsv3ctl:0.1.0-engine", "ghcr.io#dsv3ctl/dsv3ctl:0.1.0-engine"),
    ("localhost:5000/dsv3:1", "localhost:5000#dsv3:1"),
    ("nvcr.io/nvidia/tritonserver:25.10-py3", "nvcr.io#nvidia/tritonserver:25.10-py3"),
    ("team/dsv3:1", "team/dsv3:1"),  # Docker Hub: no registry part
    ("ghcr.io#already/enroot:1", "ghcr.io#already/enroot:1"),
    ("/shared/images/dsv3.sqsh", "/shared/images/dsv3.sqsh"),  # pyxis takes a squashfs path as is
])
def test_container_image_uses_enroots_registry_separator(ref, uri):
    from dsv3ctl.render.slurm import enroot_uri

    assert enroot_uri(ref) == uri


def test_slurm_render_writes_the_enroot_form_and_has_json(run_cli, write_spec, tmp_path):
    import json

    r = run_cli("slurm", "render")
    assert "IMAGE='ghcr.io#dsv3ctl/dsv3ctl:" in r.out, r.out
    spec = write_spec({"image": {"repository": "registry.example.com/team/dsv3", "tag": "v1"}})
    out = tmp_path / "job.sbatch"
    r = run_cli("slurm", "render", "--spec", spec, "--out", out, "-o", "json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["image"] == "registry.example.com#team/dsv3:v1" and data["file"] == str(out)
    assert data["nodes"] == 2 and data["ntasks"] == 16 and data["script"] == out.read_text()
    r = run_cli("slurm", "render", "--image", "x.io/a@sha256:" + "0" * 64)
    assert r.code == 2 and "digest" in r.err
