"""The image: hadolint on docker/Dockerfile, the build command construction, and a clean-venv install of the
wheel the image installs (no Docker engine or NGC base here, so the build itself cannot run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HADOLINT = Path(sys.executable).with_name("hadolint")


def test_hadolint_passes_and_ignores_are_justified():
    r = subprocess.run([str(HADOLINT), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rule = line.split("=", 1)[1].split(",")[0]
            j = i - 1
            while j >= 0 and lines[j].startswith("# ") and not lines[j].startswith(f"# {rule}:"):
                j -= 1
            assert j >= 0 and lines[j].startswith(f"# {rule}:"), f"line {i + 1}: ignore {rule} is not justified"


def test_dockerfile_targets_and_args_match_the_renderer():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "AS llmapi\n" in text and "AS engine\n" in text and "AS test\n" in text
    assert "FROM ${TEST_BASE} AS test-base\n" in text and "ARG TEST_BASE=" in text
    from dsv3ctl.core.spec import load_spec
    from dsv3ctl.render.image import build_args

    for name, value in build_args(load_spec(None)).items():
        assert f"ARG {name}=" in text, name
        if name not in ("DSV3CTL_VERSION",):
            assert f"ARG {name}={value}\n" in text, f"Dockerfile default of {name} differs from the spec default"


def test_image_build_dry_run(run_cli, write_spec):
    r = run_cli("image", "build", "--dry-run", "--builder", "docker", "--target", "llmapi")
    assert r.code == 0
    cmd = r.out.strip().splitlines()
    assert len(cmd) == 1
    assert cmd[0].startswith("docker buildx build --target llmapi --file docker/Dockerfile --tag ghcr.io/dsv3ctl/dsv3ctl:")
    assert "--build-arg TRITON_TAG=25.10" in cmd[0] and cmd[0].endswith("--load .")
    spec = write_spec({"image": {"repository": "reg.example/dsv3", "tag": "t1", "triton_tag": "25.11"}})
    r = run_cli("image", "build", "--spec", spec, "--dry-run", "--builder", "podman", "--push", "--target", "engine")
    lines = r.out.strip().splitlines()
    assert lines[0].startswith("podman build --target engine") and "--build-arg TRITON_TAG=25.11" in lines[0]
    assert lines[1] == "podman push reg.example/dsv3:t1"
    r = run_cli("image", "build", "--dry-run", "--builder", "buildah", "--push")
    assert r.out.splitlines()[0].startswith("buildah build --target engine")  # default target = serving.mode
    r = run_cli("image", "build", "--dry-run", "--target", "nope")
    assert r.code == 2 and "--target" in r.err


def test_buildah_gets_the_docker_format_and_the_test_target_its_base(run_cli):
    """buildah ignores SHELL (bash -o pipefail) in its default OCI format: the rendered argv says
    --format docker. The test target takes TEST_BASE from --test-base, and only the test target does."""
    r = run_cli("image", "build", "--dry-run", "--builder", "buildah", "--target", "test", "--test-base",
                "oci-archive:/tmp/base.tar", "-o", "json")
    assert r.code == 0, r.err
    (cmd,) = json.loads(r.out)["commands"]
    assert cmd[:4] == ["buildah", "build", "--target", "test"]
    assert cmd[cmd.index("--format") + 1] == "docker" and cmd[-1] == "."
    assert cmd[cmd.index("--build-arg", cmd.index("--platform")):].count("TEST_BASE=oci-archive:/tmp/base.tar") == 1
    r = run_cli("image", "build", "--dry-run", "--builder", "docker", "--target", "llmapi", "--test-base", "x:1")
    assert r.code == 2 and "--test-base" in r.err and "--target test" in r.err
    r = run_cli("image", "build", "--dry-run", "--builder", "docker", "--target", "test")
    assert r.code == 0 and "TEST_BASE" not in r.out  # the Dockerfile's default base


def test_buildah_flags_the_renderer_uses_are_buildahs(tmp_path):
    """Every flag of the rendered buildah argv is one `buildah build --help` lists (skips without buildah)."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah not installed (make sys-deps installs it)")
    import re

    from dsv3ctl.core.spec import load_spec
    from dsv3ctl.render.image import build_commands

    help_text = subprocess.run(["buildah", "build", "--help"], capture_output=True, text=True, check=True).stdout
    listed = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", help_text, re.M))
    cmd = build_commands(load_spec(None), builder="buildah", target="test", test_base="oci-archive:/b.tar").commands[0]
    used = {a for a in cmd if a.startswith("--")}
    assert used and used <= listed, used - listed


def test_dockerignore_keeps_context_small():
    text = (ROOT / ".dockerignore").read_text()
    assert text.splitlines()[2] == "**" or "**\n" in text
    for keep in ("!pyproject.toml", "!setup.py", "!MANIFEST.in", "!constraints.txt", "!dsv3ctl/", "!helm/dsv3/",
                 "!model_repo/"):
        assert keep in text


def test_image_build_outside_the_checkout_uses_the_checkout(run_cli, tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    r = run_cli("image", "build", "--dry-run", "--builder", "docker", "-o", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    (cmd,) = doc["commands"]
    assert doc["context"] == str(root) and cmd[-1] == str(root)
    assert cmd[cmd.index("--file") + 1] == str(root / "docker" / "Dockerfile")
    if (root / ".git").exists():
        assert any(a.startswith("VCS_REF=") for a in cmd)
    r = run_cli("image", "build", "--dry-run", "--builder", "docker", "--context", tmp_path)
    assert r.code == 2 and "--context" in r.err and "docker/Dockerfile" in r.err


def test_image_build_without_a_dockerfile_exits_2(run_cli, tmp_path, monkeypatch):
    import dsv3ctl

    fake = tmp_path / "site" / "dsv3ctl"
    fake.mkdir(parents=True)
    monkeypatch.setattr(dsv3ctl, "__file__", str(fake / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    r = run_cli("image", "build", "--dry-run", "--builder", "docker")
    assert r.code == 2 and "docker/Dockerfile" in r.err and "--context" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("group,subs", [("weights", ("download", "verify", "cast-bf16", "synth")),
                                        ("repo", ("build", "check", "engine-skeleton")),
                                        ("launch", ("leader", "worker", "rank", "prepare")),
                                        ("image", ("build",)), ("slurm", ("render",))])
def test_group_summaries_name_every_subcommand_and_help_has_no_rst(run_cli, monkeypatch, group, subs):
    monkeypatch.setenv("COLUMNS", "300")
    r = run_cli("--help")
    line = next(x for x in r.out.splitlines() if x.strip("│ ").startswith(group + " "))
    assert all(s in line for s in subs), line
    for s in subs:
        h = run_cli(group, s, "--help")
        assert h.code == 0 and "``" not in h.out


def test_install_script_passes_shellcheck():
    """docker/install-dsv3ctl.sh runs in both targets; hadolint cannot see inside it, shellcheck does."""
    sc = shutil.which("shellcheck")
    if sc is None:
        pytest.skip("shellcheck not installed (make sys-deps installs it)")
    r = subprocess.run([sc, str(ROOT / "docker" / "install-dsv3ctl.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_branch_pin_is_resolved_with_git_and_passed_as_the_commit(run_cli, write_spec, tmp_path, monkeypatch):
    """A branch image.trtllm_commit (the default `deepseek`) is resolved with the real git ls-remote (here
    against a local repository) and the SHA becomes TRTLLM_COMMIT (the ai.dsv3ctl.trtllm-commit label);
    the Dockerfile writes the checked-out SHA to the file dsv3ctl reads."""
    from dsv3ctl.cli.image import resolve_branch
    from dsv3ctl.core.trtllm_pin import STAMP_PATH
    from dsv3ctl.errors import RuntimeFailure

    repo = tmp_path / "trtllm"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", "-b", "deepseek", str(repo)], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env=env)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert resolve_branch(str(repo), "deepseek") == sha
    with pytest.raises(RuntimeFailure, match="no branch nope"):
        resolve_branch(str(repo), "nope")
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "rev-parse HEAD > /build/TRTLLM_COMMIT" in text and f"/build/TRTLLM_COMMIT {STAMP_PATH}" in text
    from dsv3ctl.core.spec import load_spec
    from dsv3ctl.render.image import build_commands

    spec = write_spec({"image": {"trtllm_repo": str(repo)}})
    cmd = build_commands(load_spec(spec), builder="docker", target="engine", trtllm_commit=sha).commands[0]
    assert f"TRTLLM_COMMIT={sha}" in cmd
    r = run_cli("image", "build", "--spec", spec, "--dry-run", "--builder", "docker", "--target", "engine")
    assert r.code == 0 and "TRTLLM_COMMIT=deepseek" in r.out and "git ls-remote" in r.err
@pytest.mark.parametrize(("value", "repo", "tag"), [
    ("0.1.0-engine", None, "0.1.0-engine"),
    ("registry.example.com/dsv3ctl:0.1.0-engine", "registry.example.com/dsv3ctl", "0.1.0-engine"),
    ("localhost:5000/team/dsv3ctl:v1", "localhost:5000/team/dsv3ctl", "v1"),
    ("localhost:5000/dsv3ctl", "localhost:5000/dsv3ctl", None),
    ("dsv3ctl:v2", "dsv3ctl", "v2"),
])
def test_tag_is_a_tag_or_a_full_reference(value, repo, tag):
    from dsv3ctl.render.image import split_ref

    assert split_ref(value) == (repo, tag)


def test_image_build_tag_with_a_registry_is_not_glued_onto_the_spec_repository(run_cli, write_spec):
    r = run_cli("image", "build", "--dry-run", "--builder", "docker", "--tag", "registry.example.com/dsv3ctl:0.1.0-engine")
    assert r.code == 0, r.err
    assert "--tag registry.example.com/dsv3ctl:0.1.0-engine " in r.out and "ghcr.io" not in r.out
    # what the chart pulls is the spec's image.repository:image.tag; the build says how to point it there
    assert "deploy and slurm render use ghcr.io/dsv3ctl/dsv3ctl:" in r.err
    assert "image.repository: registry.example.com/dsv3ctl and image.tag: 0.1.0-engine" in r.err
    spec = write_spec({"image": {"repository": "registry.example.com/dsv3ctl", "tag": "0.1.0-engine"}})
    r = run_cli("image", "build", "--spec", spec, "--dry-run", "--builder", "docker")
    assert "--tag registry.example.com/dsv3ctl:0.1.0-engine " in r.out and "note: deploy and slurm render" not in r.err
    for bad in ("bad tag", "Registry.example.com/X:1", "reg.example/x:" + "t" * 200):
        r = run_cli("image", "build", "--dry-run", "--builder", "docker", "--tag", bad)
        assert r.code == 2 and "--tag" in r.err, (bad, r.err)


def test_test_image_cache_key_covers_the_image_inputs_only():
    """tools/test-image.sh keys its cache on what goes into the image: an edit of README.md or docs/ must not
    rebuild it, an edit of the Dockerfile, the install script, dsv3ctl/ or the doubles must."""
    r = subprocess.run([str(ROOT / "tools" / "test-image.sh"), "--inputs"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    files = set(r.stdout.split())
    for f in ("docker/Dockerfile", "docker/install-dsv3ctl.sh", ".dockerignore", "constraints.txt", "pyproject.toml",
              "dsv3ctl/cli/image.py", "dsv3ctl/data/contracts/tritonserver.json", "tests/doubles/triton_server.py",
              "tests/doubles/tritonserver_standin.py", "helm/dsv3/Chart.yaml"):
        assert f in files, f
    assert not any(f.startswith(("docs/", "README", "tests/test_")) for f in files), sorted(files)


def test_tritonserver_standin_takes_exactly_the_contract_flags():
    """The test image's tritonserver double parses with the contract of the real server: the leader-mode argv
    of every rank passes, an unknown flag or a bad value is refused with exit 2, as getopt_long/ParseOption do."""
    from dsv3ctl.core.contracts import argparser
    from dsv3ctl.render.launch import RankConfig, engine_rank_argv

    standin = ROOT / "tests" / "doubles" / "tritonserver_standin.py"
    p = argparser("tritonserver", prog="tritonserver")
    for rank in (0, 1):
        p.parse_args(engine_rank_argv(RankConfig(mode="engine", tp=2), rank)[1:])
    for bad in (["--bogus"], ["--allow-http=maybe"], ["--http-port=x"]):
        r = subprocess.run([sys.executable, str(standin), *bad], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "tritonserver: error" in r.stderr, (bad, r.stderr)
    assert "TEST DOUBLE" in standin.read_text().split('"""')[1]
