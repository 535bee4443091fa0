"""The CLI shell: exit codes, JSON shapes, clean errors, and the import-cost rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

HEAVY = ("kubernetes", "tritonclient", "numpy", "huggingface_hub", "torch", "safetensors", "grpc")


def test_version(run_cli):
    r = run_cli("--version")
    assert r.code == 0 and r.out.startswith("dsv3ctl ")


def test_plan_json_default(run_cli):
    r = run_cli("plan", "--output", "json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    for key in ("world_size", "params", "tensors", "memory", "kv_cache", "checks"):
        assert key in data
    assert data["world_size"] == 16
    assert data["params"]["main"] > 0 and data["params"]["mtp"] > 0 and data["params"]["activated"] > 0
    assert data["tensors"]["checkpoint_total"] == 91_991
    assert set(data["memory"]["per_gpu_gib"]) >= {"weights", "kv_cache", "free"}
    assert data["kv_cache"]["bytes_per_token"] == 70_272


def test_plan_tp12_exits_2_with_rule(run_cli, write_spec):
    p = write_spec({"parallelism": {"nodes": 3, "gpus_per_node": 4, "tp": 12}})
    r = run_cli("plan", "--spec", p)
    assert r.code == 2
    assert "parallelism.tp=12 does not divide the 128 attention heads (tp is one of 1, 2, 4, 8, 16, 32, 64, 128); use" in r.out
    assert "1 nodes" not in r.out
    assert "Traceback" not in r.out + r.err


def test_bad_spec_exits_2_without_traceback(run_cli, write_spec):
    p = write_spec({"serving": {"max_batch": 3}})
    r = run_cli("plan", "--spec", p)
    assert r.code == 2
    assert "serving.max_batch: unknown key" in r.err and "did you mean" in r.err
    assert "Traceback" not in r.err


def test_init_writes_and_refuses_overwrite(run_cli, tmp_path):
    target = tmp_path / "dsv3.yaml"
    assert run_cli("init", target).code == 0
    assert yaml.safe_load(target.read_text())["serving"]["mode"] == "engine"
    r = run_cli("init", target)
    assert r.code == 2 and "--force" in r.err


def test_spec_show_json_fills_defaults(run_cli, write_spec):
    p = write_spec({"hardware": {"gpu": "H200"}})
    r = run_cli("spec", "show", "--spec", p, "-o", "json")
    data = json.loads(r.out)
    assert data["hardware"]["gpu"] == "H200" and data["serving"]["kv_cache_free_gpu_mem_fraction"] == 0.9


def test_spec_schema_is_json_schema(run_cli):
    data = json.loads(run_cli("spec", "schema").out)
    assert data["additionalProperties"] is False
    assert {"model", "serving", "parallelism", "hardware"} <= set(data["properties"])


def test_unknown_command_is_usage_error(run_cli):
    assert run_cli("frobnicate").code == 2


def test_cli_import_is_light():
    """``import dsv3ctl.cli`` must not import heavy libraries (dsv3ctl --help stays fast)."""
    code = "import sys, dsv3ctl.cli; print(','.join(sorted(m for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.strip().split(","))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"import dsv3ctl.cli pulled in {heavy}"


def test_help_lists_registered_commands():
    out = subprocess.run([sys.executable, "-m", "dsv3ctl", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("plan", "init", "spec"):
        assert cmd in out


def test_errors_are_json_in_json_mode(run_cli, write_spec):
    p = write_spec({"serving": {"max_batch": 3}})
    r = run_cli("plan", "--spec", p, "--output", "json")
    assert r.code == 2
    doc = json.loads(r.out)
    assert doc["exit_code"] == 2 and "serving.max_batch: unknown key" in doc["error"]


def test_init_refuses_a_directory(run_cli, tmp_path):
    r = run_cli("init", tmp_path, "--force")
    assert r.code == 2 and "is a directory" in r.err and "Traceback" not in r.err


def test_partial_spec_renders_plain_mode_in_plan(run_cli, write_spec):
    r = run_cli("plan", "--spec", write_spec({"deploy": {"replicas": 1}}), "-o", "json")
    data = json.loads(r.out)
    assert data["mode"] == "engine" and data["precision"] == "fp8"


@pytest.mark.parametrize("args", [["plan"], ["plan", "-o", "json"], ["spec", "schema"]])
def test_a_closed_pipe_is_success(args):
    """`dsv3ctl plan | head -1`: the reader is gone before dsv3ctl writes (our end closed at once)."""
    p = subprocess.Popen([sys.executable, "-m", "dsv3ctl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    p.stdout.close()
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"Exception ignored" not in err and b"error" not in err, err.decode()


def test_help_shows_no_type_after_flags(run_cli, monkeypatch):
    import typer.main

    from dsv3ctl.cli import app

    monkeypatch.setenv("COLUMNS", "120")
    root = typer.main.get_command(app)
    names = []
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        names += [[name, s] for s in subs] if subs else [[name]]
    assert len(names) > 10
    for n in names:
        r = run_cli(*n, "--help")
        assert r.code == 0 and "<bool>" not in r.out, (n, r.out)


@pytest.mark.parametrize("cmd, sentence", [
    (["plan"], "each failure names the field, the rule and a valid alternative"),
    (["prepare"], "The artifacts go to {mount_path}/{artifacts_dir}/{fingerprint}/"),
    (["infer"], "HTTP uses /v2/models/{m}/generate_stream"),
])
def test_help_reflows_sentences_and_keeps_placeholders(cmd, sentence):
    """A docstring's paragraph is reflowed to the terminal width (no break where the source line ended) and
    placeholders survive the markdown rendering."""
    import os

    r = subprocess.run([sys.executable, "-m", "dsv3ctl", *cmd, "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "400", "TERM": "dumb"}, timeout=60)
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stdout.split())
    assert sentence in flat, r.stdout
    assert any(sentence in line for line in r.stdout.splitlines()), r.stdout  # one line at 400 columns
