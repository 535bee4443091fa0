"""``dsv3ctl smoke``: TensorRT-LLM's DeepSeek-V3 README smoke test over the whole world.

Engine mode: ``examples/run.py`` (flags from ``dsv3ctl/data/contracts/run_py.json``) on every rank, started
by the leader with the same SSH + OpenMPI bootstrap as ``dsv3ctl launch leader`` (workers run ``dsv3ctl
launch worker`` as in the pods); llmapi mode: one LLM API generate call under ``trtllm-llmapi-launch``.
Prints the prompt, the output and the timing; exit 1 on a failed run or an empty output.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from dsv3ctl.cli._common import DryRunOpt, OutputFormat, OutputOpt, Sink, SpecOpt, load
from dsv3ctl.cli.launch import (
    GpnOpt,
    GroupSizeOpt,
    HostsOpt,
    LeaderAddrOpt,
    ModeOpt,
    RuntimeOpt,
    SecretOpt,
    SshPortOpt,
    _group,
)


def _engine_dir(s: Any, engine_dir: str | None) -> str:
    from dsv3ctl.adapters import launcher as L

    if engine_dir:
        return engine_dir
    if s.launch.engine_dir:
        return str(s.launch.engine_dir)
    return str(L._engine_dir_from_pbtxt(Path(s.launch.model_repository) / "tensorrt_llm" / "config.pbtxt"))


def smoke(
    spec: SpecOpt = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Input text (the README's).")] = "Today is a nice day.",
    max_output_len: Annotated[int, typer.Option("--max-output-len", help="Tokens to generate.")] = 30,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.3,
    engine_dir: Annotated[str | None, typer.Option("--engine-dir", help="Engines (default launch.engine_dir, else "
                                                                        "gpt_model_path of the model repository).")] = None,
    tokenizer_dir: Annotated[str | None, typer.Option("--tokenizer-dir", help="Hugging Face checkpoint dir with the "
                                                                              "tokenizer (default launch.model_dir).")] = None,
    run_py: Annotated[str, typer.Option("--run-py", help="TensorRT-LLM's examples/run.py.")] =
        "/opt/tensorrt_llm/examples/run.py",
    python: Annotated[str, typer.Option("--python", help="Interpreter with tensorrt_llm.")] = "python3",
    mode: ModeOpt = None,
    hosts: HostsOpt = None, leader_address: LeaderAddrOpt = None, group_size: GroupSizeOpt = None,
    ssh_port: SshPortOpt = None, ssh_secret_dir: SecretOpt = None, runtime_dir: RuntimeOpt = None,
    gpus_per_node: GpnOpt = None,
    wait_timeout: Annotated[int | None, typer.Option("--wait-timeout", help="Seconds to wait for workers.")] = None,
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds the whole run may take (engine load included).")] =
        3600,
    sbatch: Annotated[bool, typer.Option("--sbatch", help="Print the sbatch script that runs it as one srun step.")] =
        False,
    dry_run: DryRunOpt = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Run the README's engine check across the world (or print it: --dry-run renders the mpirun command
    over the hosts, -o json as {mode, world_size, hosts, rank_cmd, mpirun}; --sbatch prints the Slurm script).

    Exit 0 with a non-empty output; 1 when a rank fails, the output is empty or the run passes --timeout;
    2 for bad input (a flag run.py does not accept, an empty prompt, a layout the planner rejects).
    """
    import os
    import sys
    import time

    from dsv3ctl.errors import RuntimeFailure, SpecError
    from dsv3ctl.render import launch as R
    from dsv3ctl.render import smoke as S

    s = load(spec)
    lc = s.launch
    md = mode or s.serving.mode
    p = s.parallelism
    edir = ""
    if md == "engine":
        try:
            edir = _engine_dir(s, engine_dir)
        except RuntimeFailure:
            if not dry_run:
                raise SpecError("no engine directory: pass --engine-dir, set launch.engine_dir, or build the model "
                                f"repository at {lc.model_repository} first (its gpt_model_path)") from None
            edir = "<gpt_model_path of the model repository>"
    cfg = S.SmokeConfig(mode=md, engine_dir=edir, tokenizer_dir=tokenizer_dir or lc.model_dir, prompt=prompt,
                        max_output_len=max_output_len, top_p=top_p, temperature=temperature, python=python,
                        run_py=run_py, tp=p.tp, pp=p.pp, moe_ep=p.moe_ep)
    cmd = S.rank_cmd(cfg)
    sink = Sink(output)
    if sbatch:
        text = S.sbatch_script(s, cfg)
        sink.emit({"sbatch": text}, lambda con: typer.echo(text, nl=False))
        return
    group = _group(s, hosts, leader_address, group_size)
    gpn = gpus_per_node or p.gpus_per_node
    rdir = str(runtime_dir or lc.runtime_dir)
    if dry_run:
        from dsv3ctl.core.planner import require_layout

        require_layout(s, "dsv3ctl smoke cannot run")
        world = R.check_world_size(hosts=len(group), slots=gpn, tp=p.tp, pp=p.pp, source="the spec's parallelism")
        argv = R.mpirun_argv(mpirun="mpirun", hostfile=f"{rdir}/hostfile", world_size=world,
                             ssh_config=f"{rdir}/ssh/ssh_config", forward=[], rank_cmd=cmd, as_root=os.geteuid() == 0)
        doc = {"mode": md, "world_size": world, "hosts": group, "rank_cmd": cmd, "mpirun": argv,
               "smoke": cfg.to_json()}
        sink.emit(doc, lambda con: typer.echo(R.shell_join(argv)))
        return

    from dsv3ctl.adapters import launcher as L
    from dsv3ctl.adapters.probe import read_help, refusal, unaccepted

    if md == "engine":  # capability probe: run.py's own --help must list every flag we pass
        pr = read_help([python, run_py, "--help"])
        if pr.error:
            raise RuntimeFailure(f"cannot ask {run_py} for its flags: {pr.error}", "run inside the engine image")
        miss = unaccepted(cmd[2:], pr)
        if miss:
            raise SpecError(refusal(run_py, "installed", miss, "use the engine image built from image.trtllm_commit"))
    rank_cfg = R.rank_config_from_spec(s, mode=md, frontend="trtllm-serve" if md == "llmapi" else None)
    log_path = Path(rdir) / "smoke.out"
    Path(rdir).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w") as out:
        rc = L.run_leader(group=group, slots=gpn, cfg=rank_cfg, ssh_port=ssh_port or lc.ssh_port,
                          secret_dir=str(ssh_secret_dir or lc.ssh_secret_dir), runtime_dir=rdir,
                          wait_timeout_s=wait_timeout or lc.worker_wait_timeout_s,
                          engine_dir=edir if md == "engine" else "", rank_cmd=cmd, stdout=out, timeout_s=timeout)
    secs = time.monotonic() - t0
    text = log_path.read_text(errors="replace")
    sys.stderr.write(text)
    outs = S.parse_outputs(text, md)
    doc = {"mode": md, "prompt": prompt, "output": outs[0] if outs else "", "outputs": outs, "seconds": round(secs, 3),
           "exit_code": rc, "log": str(log_path), "rank_cmd": cmd}

    def human(con: Any) -> None:
        typer.echo(f"prompt: {prompt!r}")
        typer.echo(f"output: {doc['output']!r}")
        typer.echo(f"time:   {secs:.1f} s over {len(group)} hosts x {gpn} ranks ({shlex.quote(cmd[1])})")

    sink.emit(doc, human)
    if rc != 0:
        raise RuntimeFailure(f"smoke: mpirun exited with {rc}; the ranks' output is in {log_path}")
    if not outs or not outs[0].strip():
        raise RuntimeFailure(f"smoke: no generated text in the ranks' output ({log_path}); expected a line "
                             + ('\'Output [Text 0 Beam 0]: "..."\' from run.py' if md == "engine" else S.LLMAPI_MARK))


def register(app: typer.Typer) -> None:
    app.command("smoke")(smoke)
