"""``dsv3ctl launch leader|worker|rank|prepare|drain``: the in-container launcher that turns one LeaderWorkerSet group of pods
(or any host list) into one MPI world running Triton/TensorRT-LLM. See docs/launch.md for the contract.

Every value comes from the spec (``--spec``/``DSV3CTL_SPEC``: serving, parallelism, launch sections) and can be
overridden by a flag; the group comes from LeaderWorkerSet's environment or ``--hosts``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dsv3ctl.cli._common import OutputFormat, OutputOpt, Sink, SpecOpt, load

launch_app = typer.Typer(name="launch", help="In-container launcher: leader (mpirun), worker (sshd + watchdog), "
                                             "rank (exec the server of one MPI rank), prepare (fill the volume), drain "
                                             "(preStop: wait for requests in flight).",
                         no_args_is_help=True)

LeaderAddrOpt = Annotated[str | None, typer.Option("--leader-address", envvar="LWS_LEADER_ADDRESS", show_envvar=True,
                                                   help="{lws}-{group}.{lws}.{namespace}; workers are derived from it.")]
GroupSizeOpt = Annotated[int | None, typer.Option("--group-size", envvar="LWS_GROUP_SIZE", show_envvar=True,
                                                  help="Pods in the group (leader included); default parallelism.nodes.")]
WorkerIndexOpt = Annotated[int | None, typer.Option("--worker-index", envvar="LWS_WORKER_INDEX", show_envvar=True,
                                                    help="This pod's index in the group (0 = leader); logged.")]
HostsOpt = Annotated[str | None, typer.Option("--hosts", help="Comma list of every host, leader first (instead of LWS).")]
SshPortOpt = Annotated[int | None, typer.Option("--ssh-port", help="sshd port (default launch.ssh_port = 2222).")]
SecretOpt = Annotated[Path | None, typer.Option("--ssh-secret-dir", help="Mounted SSH Secret (default /etc/dsv3ctl/ssh).")]
RuntimeOpt = Annotated[Path | None, typer.Option("--runtime-dir", envvar="DSV3CTL_RUNTIME_DIR", show_envvar=True,
                                                 help="Where keys/configs/hostfile go (default launch.runtime_dir).")]
GpnOpt = Annotated[int | None, typer.Option("--gpus-per-node", help="Slots per host (default parallelism.gpus_per_node).")]
ShmOpt = Annotated[float | None, typer.Option("--shm-min-gib", help="Preflight: smallest /dev/shm in GiB.")]
RdmaOpt = Annotated[bool | None, typer.Option("--rdma/--no-rdma", envvar="DSV3CTL_RDMA", show_envvar=True,
                                              help="An RDMA resource was requested (checks /dev/infiniband, memlock).")]
SkipOpt = Annotated[list[str] | None, typer.Option("--skip-preflight", help="Skip a preflight check: shm, memlock, "
                                                                            "infiniband or gpus (repeatable).")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="engine | llmapi (default serving.mode).")]
FrontendOpt = Annotated[str | None, typer.Option("--frontend", help="llmapi: tritonserver | trtllm-serve.")]
RepoOpt = Annotated[str | None, typer.Option("--model-repo", help="Triton model repository (default launch.model_repository).")]
ModelDirOpt = Annotated[str | None, typer.Option("--model-dir", help="HF checkpoint dir for trtllm-serve (default launch.model_dir).")]
HttpOpt = Annotated[int | None, typer.Option("--http-port")]
GrpcOpt = Annotated[int | None, typer.Option("--grpc-port")]
MetricsOpt = Annotated[int | None, typer.Option("--metrics-port")]
TritonOpt = Annotated[str | None, typer.Option("--tritonserver", help="tritonserver executable (default: from PATH).")]
TpOpt = Annotated[int | None, typer.Option("--tp")]
PpOpt = Annotated[int | None, typer.Option("--pp")]
EpOpt = Annotated[int | None, typer.Option("--moe-ep")]
MbsOpt = Annotated[int | None, typer.Option("--max-batch-size")]
MntOpt = Annotated[int | None, typer.Option("--max-num-tokens")]
MslOpt = Annotated[int | None, typer.Option("--max-seq-len")]
KvOpt = Annotated[float | None, typer.Option("--kv-cache-free-gpu-mem-fraction")]
ExtraOpt = Annotated[str | None, typer.Option("--extra-llm-api-options", help="trtllm-serve extra LLM API YAML.")]


def _rank_cfg(s: Any, **kw: Any) -> Any:
    from dsv3ctl.errors import SpecError
    from dsv3ctl.render.launch import rank_config_from_spec

    if kw.get("mode") not in (None, "engine", "llmapi"):
        raise SpecError(f"--mode={kw['mode']!r}: use engine or llmapi")
    if kw.get("frontend") not in (None, "tritonserver", "trtllm-serve"):
        raise SpecError(f"--frontend={kw['frontend']!r}: use tritonserver or trtllm-serve")
    return rank_config_from_spec(s, **kw)


def _rdma(s: Any, flag: bool | None) -> tuple[bool, str]:
    """(RDMA on?, what turned it on): --rdma/DSV3CTL_RDMA, else launch.rdma or the chart's deploy.rdma.enabled."""
    import os

    if flag is not None:
        env = os.environ.get("DSV3CTL_RDMA")
        return flag, (f"DSV3CTL_RDMA={env}" if env is not None else "--rdma")
    from dsv3ctl.core.deploy_rules import rdma_enabled

    on, why = rdma_enabled(s)  # deploy.rdma.enabled: true/false, or auto = on for multi-node groups
    if on:
        return True, ("deploy.rdma.enabled: true in the spec" if s.deploy.rdma.enabled is True else why)
    if s.launch.rdma:
        return True, "launch.rdma: true in the spec"
    return False, ""


def _fabric_opts(s: Any, mode: str | None, rdma_on: bool, nodes: int) -> Any:
    """FabricOptions for this group (None when the check is off): --fabric-check over launch.fabric_check."""
    from dsv3ctl.adapters.fabric import options_from_spec
    from dsv3ctl.errors import SpecError

    if mode not in (None, "off", "warn", "enforce"):
        raise SpecError(f"--fabric-check={mode!r}: use off, warn or enforce")
    s2 = s.model_copy(update={"parallelism": s.parallelism.model_copy(update={"nodes": nodes})})
    opts = options_from_spec(s2, mode=mode, rdma=rdma_on)
    return None if opts.mode == "off" else opts


def _group(s: Any, hosts: str | None, leader_address: str | None, group_size: int | None) -> list[str]:
    from dsv3ctl.errors import SpecError
    from dsv3ctl.render.launch import group_from_hosts, group_from_leader_address

    if hosts:
        return list(group_from_hosts(hosts.split(",")).hosts)
    if not leader_address:
        raise SpecError("no group: set LWS_LEADER_ADDRESS (LeaderWorkerSet does) or --leader-address, or pass "
                        "--hosts leader,worker1,...")
    return list(group_from_leader_address(leader_address, group_size or s.parallelism.nodes).hosts)


def leader(
    spec: SpecOpt = None, leader_address: LeaderAddrOpt = None, group_size: GroupSizeOpt = None,
    worker_index: WorkerIndexOpt = None, hosts: HostsOpt = None, ssh_port: SshPortOpt = None,
    ssh_secret_dir: SecretOpt = None, runtime_dir: RuntimeOpt = None, gpus_per_node: GpnOpt = None,
    shm_min_gib: ShmOpt = None, rdma: RdmaOpt = None, skip_preflight: SkipOpt = None,
    wait_timeout: Annotated[int | None, typer.Option("--wait-timeout", help="Seconds to wait for workers "
                                                                            "(default launch.worker_wait_timeout_s).")] = None,
    engine_dir: Annotated[str | None, typer.Option("--engine-dir", help="Engine dir whose config.json gives tp x pp.")] = None,
    mode: ModeOpt = None, frontend: FrontendOpt = None, model_repo: RepoOpt = None, model_dir: ModelDirOpt = None,
    http_port: HttpOpt = None, grpc_port: GrpcOpt = None, metrics_port: MetricsOpt = None,
    tritonserver: TritonOpt = None, extra_llm_api_options: ExtraOpt = None,
    fabric_check: Annotated[str | None, typer.Option("--fabric-check", help="off | warn | enforce (default "
                                                     "launch.fabric_check: enforce for several nodes, off for one).")] = None,
    fabric_only: Annotated[bool, typer.Option("--fabric-only", help="No model: run the fabric check over the group "
                                                                    "and exit (0 ok/warn, 1 fail).")] = False,
) -> None:
    """Leader pod: preflight, check world size, set up SSH, wait for workers, write the hostfile, run the fabric check
    (an all-reduce over every rank with the server's mpirun and environment), run mpirun.

    Exit code: mpirun's; 2 for a world-size mismatch, bad input or a failed preflight; 1 when workers never appear or
    the fabric check fails (enforce).
    """
    from dsv3ctl.adapters import launcher as L

    s = load(spec)
    lc = s.launch
    gpn = gpus_per_node or s.parallelism.gpus_per_node
    group = _group(s, hosts, leader_address, group_size)
    if worker_index not in (None, 0):
        L.log("leader", f"warning: LWS_WORKER_INDEX={worker_index} but running as leader")
    cfg = _rank_cfg(s, mode=mode, frontend=frontend, model_repository=model_repo, model_dir=model_dir,
                    http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, tritonserver=tritonserver,
                    extra_llm_api_options=extra_llm_api_options)
    rdma_on, rdma_source = _rdma(s, rdma)
    L.preflight("leader", shm_min_gib=lc.shm_min_gib if shm_min_gib is None else shm_min_gib,
                rdma=rdma_on, gpus_per_node=gpn, skip=skip_preflight or lc.skip_preflight, rdma_source=rdma_source)
    fabric = _fabric_opts(s, fabric_check or ("enforce" if fabric_only and s.launch.fabric_check in ("auto", "off")
                                              else None), rdma_on, len(group))
    rc = L.run_leader(group=group, slots=gpn, cfg=cfg, ssh_port=ssh_port or lc.ssh_port,
                      secret_dir=str(ssh_secret_dir or lc.ssh_secret_dir), runtime_dir=str(runtime_dir or lc.runtime_dir),
                      wait_timeout_s=wait_timeout or lc.worker_wait_timeout_s,
                      engine_dir=engine_dir if engine_dir is not None else lc.engine_dir, fabric=fabric,
                      fabric_only=fabric_only)
    raise typer.Exit(rc)


def worker(
    spec: SpecOpt = None, leader_address: LeaderAddrOpt = None, group_size: GroupSizeOpt = None,
    worker_index: WorkerIndexOpt = None, hosts: HostsOpt = None, ssh_port: SshPortOpt = None,
    ssh_secret_dir: SecretOpt = None, runtime_dir: RuntimeOpt = None, gpus_per_node: GpnOpt = None,
    shm_min_gib: ShmOpt = None, rdma: RdmaOpt = None, skip_preflight: SkipOpt = None,
) -> None:
    """Worker pod: preflight, install SSH keys, run sshd in the foreground with a watchdog that exits (1) once
    the leader's session is gone, so LeaderWorkerSet recreates the whole group."""
    from dsv3ctl.adapters import launcher as L

    s = load(spec)
    lc = s.launch
    group = _group(s, hosts, leader_address, group_size)
    if worker_index == 0:
        L.log("worker", "warning: LWS_WORKER_INDEX=0 is the leader's index")
    rdma_on, rdma_source = _rdma(s, rdma)
    L.preflight("worker", shm_min_gib=lc.shm_min_gib if shm_min_gib is None else shm_min_gib,
                rdma=rdma_on, gpus_per_node=gpus_per_node or s.parallelism.gpus_per_node,
                skip=skip_preflight or lc.skip_preflight, rdma_source=rdma_source)
    rc = L.run_worker(group=group, ssh_port=ssh_port or lc.ssh_port,
                      secret_dir=str(ssh_secret_dir or lc.ssh_secret_dir), runtime_dir=str(runtime_dir or lc.runtime_dir))
    raise typer.Exit(rc)


def rank(
    spec: SpecOpt = None,
    rank_: Annotated[int | None, typer.Option("--rank", help="MPI rank (default: OMPI_COMM_WORLD_RANK, PMIX_RANK, "
                                                             "SLURM_PROCID or PMI_RANK).")] = None,
    mode: ModeOpt = None, frontend: FrontendOpt = None, model_repo: RepoOpt = None, model_dir: ModelDirOpt = None,
    http_port: HttpOpt = None, grpc_port: GrpcOpt = None, metrics_port: MetricsOpt = None,
    tritonserver: TritonOpt = None, tp: TpOpt = None, pp: PpOpt = None, moe_ep: EpOpt = None,
    max_batch_size: MbsOpt = None, max_num_tokens: MntOpt = None, max_seq_len: MslOpt = None,
    kv_cache_free_gpu_mem_fraction: KvOpt = None, extra_llm_api_options: ExtraOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the server argv instead of exec'ing it.")] = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """One MPI rank: exec the server for this rank (engine: tritonserver in leader mode; llmapi:
    trtllm-llmapi-launch with tritonserver or trtllm-serve).

    The rank must be in 0..tp x pp - 1 (exit 2 otherwise). With --dry-run, -o json prints {rank, rank_source, argv, env: the MPI/Slurm rank and size variables that are set, inherited_env: names of the other variables the server inherits (values not printed: they may hold tokens)}.
    """
    import os

    from dsv3ctl.adapters import launcher as L
    from dsv3ctl.errors import SpecError
    from dsv3ctl.render.launch import RANK_ENV, SIZE_ENV, forwarded_env, rank_and_source, shell_join

    if output is OutputFormat.json and not dry_run:
        raise SpecError("--output json needs --dry-run (without it the server replaces this process)")

    s = load(spec)
    cfg = _rank_cfg(s, mode=mode, frontend=frontend, model_repository=model_repo, model_dir=model_dir,
                    http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, tritonserver=tritonserver,
                    tp=tp, pp=pp, moe_ep=moe_ep, max_batch_size=max_batch_size, max_num_tokens=max_num_tokens,
                    max_seq_len=max_seq_len, kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction,
                    extra_llm_api_options=extra_llm_api_options)
    argv = L.exec_rank(cfg, rank_, dry_run=dry_run)
    r, source = rank_and_source(os.environ, rank_)
    doc = {"rank": r, "rank_source": source, "argv": argv,
           "env": {k: os.environ[k] for k in (*RANK_ENV, *SIZE_ENV) if k in os.environ},
           "inherited_env": forwarded_env(os.environ)}
    Sink(output).emit(doc, lambda con: typer.echo(shell_join(argv)))


def prepare(
    spec: SpecOpt = None,
    python: Annotated[str, typer.Option("--python", help="Interpreter with tensorrt_llm (convert, build-engine).")] =
        "python3",
    convert_script: Annotated[str, typer.Option("--convert-script", help="The deepseek branch's convert_checkpoint.py.")] =
        "/opt/tensorrt_llm/examples/deepseek_v3/convert_checkpoint.py",
    trtllm_build: Annotated[str, typer.Option("--trtllm-build", help="trtllm-build executable.")] = "trtllm-build",
    token_file: Annotated[Path | None, typer.Option("--token-file", help="Hugging Face token file (else HF_TOKEN).")] =
        None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the steps, their commands and paths; run nothing.")] =
        False,
) -> None:
    """Prepare the shared volume (the chart's prepare Job): weights download (skipped when the checkpoint
    verifies), weights cast-bf16 (model.precision bf16), convert + build-engine (engine mode), repo build into
    launch.model_repository. Finished steps are skipped, so a rerun resumes."""
    from dsv3ctl.adapters import launcher as L
    from dsv3ctl.adapters import prepare as P

    s = load(spec)
    steps = P.plan_steps(s, spec, python=python, convert_script=convert_script, trtllm_build=trtllm_build,
                         token_file=token_file)
    log = lambda msg: L.log("prepare", msg)  # noqa: E731
    if dry_run:
        for i, rec in enumerate(P.run_steps(steps, log, dry_run=True), 1):
            paths = ", ".join(f"{k}={v}" for k, v in rec["paths"].items())
            typer.echo(f"[{i}/{len(steps)}] {rec['step']}: {rec['command']}")
            typer.echo(f"    paths: {paths}" + (f"\n    would skip: {rec['reason']}" if rec["reason"] else ""))
        return
    log(f"{len(steps)} steps ({getattr(s.serving.mode, 'value', s.serving.mode)} mode): {', '.join(st.name for st in steps)}")
    recs = P.run_steps(steps, log)
    skipped = sum(1 for r in recs if r["status"] == "skipped")
    log(f"prepared: {len(recs) - skipped} done, {skipped} skipped")


def drain(
    spec: SpecOpt = None,
    url: Annotated[str | None, typer.Option("--url", help="Triton metrics URL (default: this pod's launch.metrics_port "
                                                          "on the leader; the leader's, from LWS_LEADER_ADDRESS, on a "
                                                          "worker).")] = None,
    leader_address: LeaderAddrOpt = None,
    worker_index: WorkerIndexOpt = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds to wait at most (default: the pod's "
                                                                    "termination grace period - 10 s).")] = None,
    settle: Annotated[float, typer.Option("--settle", help="Seconds to wait first, while the pod's removal from the "
                                                           "Service's endpoints reaches every node.")] = 5.0,
) -> None:
    """preStop hook of every pod of a group: wait until the leader's server has no request in flight (queued in Triton
    or active in the TensorRT-LLM executor), so a rollout, scale-down or delete lets generations finish before
    SIGTERM.

    A worker waits on the leader's metrics too: its ranks are part of the same MPI world. Exit 0 when drained (or
    the metrics endpoint does not answer: nothing is left to wait for), 1 at the deadline with requests in flight.
    """
    from dsv3ctl.adapters import launcher as L
    from dsv3ctl.adapters.drain import drain as run_drain
    from dsv3ctl.core.deploy_rules import termination_grace_s

    s = load(spec)
    role = "worker" if worker_index not in (None, 0) else "leader"
    host = leader_address if role == "worker" and leader_address else "127.0.0.1"
    target = url or f"http://{host}:{s.launch.metrics_port}/metrics"
    limit = timeout if timeout is not None else max(1, termination_grace_s(s) - 10)
    L.log(role, f"drain: waiting up to {limit:.0f} s for the requests in flight on {target} to finish")
    r = run_drain(target, timeout_s=limit, settle_s=settle)
    L.log(role, f"drain: {r.message}")
    raise typer.Exit(0 if r.drained else 1)


def register(app: typer.Typer) -> None:
    launch_app.command("drain")(drain)
    launch_app.command("leader")(leader)
    launch_app.command("prepare")(prepare)
    launch_app.command("worker")(worker)
    launch_app.command("rank")(rank)
    app.add_typer(launch_app, name="launch")
