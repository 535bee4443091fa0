"""``dsv3ctl launch prepare``: fill the shared volume before the serving pods start (the chart's prepare Job).

It orchestrates the existing commands, each run as its own ``dsv3ctl`` subprocess (same interpreter,
``-o json``) so that every step behaves exactly as when run by hand, and so that ``--dry-run`` prints
commands that can be copied:

1. ``weights download --out <hf>``: skipped when ``<hf>`` already verifies (``weights verify``, offline);
2. ``weights cast-bf16 <hf> <model_dir>`` when ``model.precision`` is bf16 (then ``<hf>`` is
   ``<model_dir>-fp8``, so ``launch.model_dir`` is always the checkpoint that is served or converted);
   skipped when ``<model_dir>`` verifies as BF16;
3. engine mode: ``convert <model_dir> <launch.trtllm_checkpoint_dir>`` and ``build-engine <ckpt> <engine_dir>``
   (``launch.engine_dir``, default ``/models/engines``); both are fingerprinted and report ``skipped``
   themselves when up to date;
4. ``repo build --out <launch.model_repository>`` (engine mode with ``--engine-mount <engine_dir>``: the pods
   mount the same volume at the same path; llmapi with ``--model-path <model_dir>``); unchanged = skipped;
   ``--force`` only when the existing repository is dsv3ctl's (its manifest is there), so an upgrade replaces it.
   Not run for ``frontend: trtllm-serve`` (it serves ``launch.model_dir`` directly).

Each step logs its start, its end (done/skipped) and its duration. A failing step raises RuntimeFailure
(exit 1; SpecError, exit 2, when the step itself exited 2) naming the step and its last output lines.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv3ctl.core.spec import Spec
from dsv3ctl.errors import Dsv3Error, RuntimeFailure, SpecError

#: Where the pods find the engines when launch.engine_dir is empty (= render.model_repo.DEFAULT_ENGINE_MOUNT).
DEFAULT_ENGINE_DIR = "/models/engines"
DEFAULT_CONVERT_SCRIPT = "/opt/tensorrt_llm/examples/deepseek_v3/convert_checkpoint.py"
TAIL_LINES = 20

Log = Callable[[str], None]


@dataclass
class Step:
    """One step: its name, the ``dsv3ctl`` arguments, the paths it reads/writes, and an optional check that
    returns a reason when the step is already complete (checked before running)."""

    name: str
    args: list[str]
    paths: dict[str, str]
    done_reason: Callable[[], str | None] | None = None
    skipped_key: Callable[[dict[str, Any]], bool] = field(default=lambda _d: False)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "dsv3ctl", *self.args]

    def command(self) -> str:
        return shlex.join(["dsv3ctl", *self.args])


def _verifies(path: Path, precision: str | None = None) -> str | None:
    """A reason string when ``path`` verifies (and has ``precision``), else None. When the checkpoint records
    checksums (``.dsv3ctl/checksums.json``, written by ``weights download`` / ``cast-bf16``) every listed file must
    match them too (files unchanged since they last verified are not hashed again), so a corrupt shard makes
    the step run again instead of being converted."""
    from dsv3ctl.core.checkpoint import load_checksums, verify_checkpoint

    if not path.is_dir():
        return None
    try:
        recorded = load_checksums(path) is not None
        rep = verify_checkpoint(path, checksums=recorded)
    except Dsv3Error:
        return None
    if not rep.ok or (precision and rep.precision != precision):
        return None
    sums = f", sha256 of {rep.checksums_checked} files" if recorded else ", no recorded checksums"
    return f"{path} verifies ({rep.precision}, {rep.found_tensors} tensors in {rep.shards} shards{sums})"


def plan_steps(spec: Spec, spec_path: Path | None, *, python: str = "python3",
               convert_script: str = DEFAULT_CONVERT_SCRIPT, trtllm_build: str = "trtllm-build",
               token_file: Path | None = None) -> list[Step]:
    """The steps for ``spec`` in order (nothing is run or checked here)."""
    lc = spec.launch
    mode, bf16 = spec.serving.mode, spec.model.precision == "bf16"
    model_dir = Path(lc.model_dir)
    hf_dir = Path(f"{lc.model_dir.rstrip('/')}-fp8") if bf16 else model_dir
    engine_dir = lc.engine_dir or DEFAULT_ENGINE_DIR
    sp = ["-f", str(spec_path)] if spec_path else []
    # A repository that dsv3ctl wrote (its manifest is there) is replaced when the spec changed (an upgrade);
    # anything else at launch.model_repository is left to `repo build` to refuse.
    from dsv3ctl.adapters.model_repo import MANIFEST

    force = ["--force"] if (Path(lc.model_repository) / MANIFEST).is_file() else []
    js = ["-o", "json"]
    steps: list[Step] = []

    dl_args = ["weights", "download", "--out", str(hf_dir), *sp, *js]
    if token_file:
        dl_args[3:3] = ["--token-file", str(token_file)]

    def dl_done() -> str | None:
        if bf16 and (r := _verifies(model_dir, "bf16")):
            return f"the BF16 checkpoint {r}; nothing to download"
        return _verifies(hf_dir)

    steps.append(Step("download", dl_args, {"out": str(hf_dir)}, dl_done))
    if bf16:
        steps.append(Step("cast-bf16", ["weights", "cast-bf16", str(hf_dir), str(model_dir), *js],
                          {"in": str(hf_dir), "out": str(model_dir)}, lambda: _verifies(model_dir, "bf16")))
    if mode == "engine":
        ckpt = lc.trtllm_checkpoint_dir
        steps.append(Step("convert", ["convert", str(model_dir), ckpt, *sp, "--python", python, "--convert-script",
                                      convert_script, *js], {"in": str(model_dir), "out": ckpt},
                          skipped_key=lambda d: bool(d.get("skipped"))))
        steps.append(Step("build-engine", ["build-engine", ckpt, engine_dir, *sp, "--python", python,
                                           "--trtllm-build", trtllm_build, *js], {"in": ckpt, "out": engine_dir},
                          skipped_key=lambda d: bool(d.get("skipped"))))
        steps.append(Step("repo-build", ["repo", "build", "--out", lc.model_repository, *sp, "--mode", "engine",
                                         "--engine-dir", engine_dir, "--tokenizer-dir", str(model_dir),
                                         "--engine-mount", engine_dir, *force, *js],
                          {"in": engine_dir, "tokenizer": str(model_dir), "out": lc.model_repository},
                          skipped_key=lambda d: d.get("changed") is False))
    elif spec.serving.frontend == "tritonserver":
        steps.append(Step("repo-build", ["repo", "build", "--out", lc.model_repository, *sp, "--mode", "llmapi",
                                         "--model-path", str(model_dir), *force, *js],
                          {"model": str(model_dir), "out": lc.model_repository},
                          skipped_key=lambda d: d.get("changed") is False))
    return steps


def _run(step: Step) -> dict[str, Any]:
    """Run the step's subprocess: stderr relayed live (and its tail kept), stdout parsed as the JSON result."""
    tail: list[str] = []
    try:
        proc = subprocess.Popen(step.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace")
    except OSError as err:
        raise RuntimeFailure(f"prepare step {step.name!r}: cannot run {step.command()}: {err}") from None

    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            sys.stderr.write(f"  {step.name}| {line}\n")
            sys.stderr.flush()
            tail.append(line)
            del tail[:-TAIL_LINES]

    th = threading.Thread(target=relay, daemon=True)
    th.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    rc = proc.wait()
    th.join()
    if rc != 0:
        last = [x for x in tail if x.strip()][-3:]
        try:  # with -o json the step's own error is a JSON document on stdout: {error, hint, exit_code}
            doc = json.loads(out) if out.strip() else None
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("error"):
            last.append(f"error: {doc['error']}" + (f" (fix: {doc['hint']})" if doc.get("hint") else ""))
        from dsv3ctl.adapters.sysmem import killed_message

        killed = killed_message(rc, f"prepare step {step.name!r}", None, f"`{step.command()} --workers N` (fewer)")
        msg = (f"prepare step {step.name!r} failed (exit {rc}): {step.command()}"
               + (f"\n  {killed}" if killed else "")
               + (":\n  " + "\n  ".join(last) if last else ""))
        hint = "fix the cause and rerun `dsv3ctl launch prepare` (finished steps are skipped); or run the step by hand"
        raise (SpecError if rc == 2 else RuntimeFailure)(msg, hint)
    try:
        data = json.loads(out) if out.strip() else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def run_steps(steps: list[Step], log: Log, dry_run: bool = False) -> list[dict[str, Any]]:
    """Run (or with ``dry_run`` only describe) ``steps`` in order. Returns one record per step:
    ``{step, command, paths, status (done|skipped|planned), reason, seconds}``."""
    records = []
    n = len(steps)
    for i, st in enumerate(steps, 1):
        rec: dict[str, Any] = {"step": st.name, "command": st.command(), "paths": st.paths}
        head = f"[{i}/{n}] {st.name}"
        if dry_run:
            reason = st.done_reason() if st.done_reason else None
            rec.update(status="planned", reason=reason)
            records.append(rec)
            continue
        log(f"{head}: start: {st.command()}")
        t0 = time.monotonic()
        reason = st.done_reason() if st.done_reason else None
        if reason is None:
            data = _run(st)
            if st.skipped_key(data):
                reason = "up to date"
        secs = time.monotonic() - t0
        rec.update(status="skipped" if reason else "done", reason=reason, seconds=round(secs, 3))
        log(f"{head}: {'skipped (' + reason + ')' if reason else 'done'} in {secs:.1f}s")
        records.append(rec)
    return records
