"""Pure pieces of the in-container launcher: group host names, the hostfile, the mpirun argv and the
per-rank server argv. No I/O here; :mod:`dsv3ctl.adapters.launcher` runs what these functions build.

Sources of the facts used:
- LeaderWorkerSet names the leader pod ``<lws>-<group>`` and worker ``i`` ``<lws>-<group>-<i>``; the headless
  service makes each addressable as ``<pod>.<lws>.<namespace>``, and LWS sets ``LWS_LEADER_ADDRESS`` to the
  leader's address, ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX`` (0 = leader) in every container
  (kubernetes-sigs/lws ``site/content/en/docs/reference/labels-annotations-and-environment-variables.md``).
- Triton leader mode (tensorrtllm_backend ``scripts/launch_triton_server.py`` @ v0.19.0 and the Kubernetes
  multi-node tutorial @ e8489525): one ``tritonserver`` per MPI rank; every rank gets
  ``--disable-auto-complete-config --backend-config=python,shm-region-prefix-name=prefix{rank}_``; rank 0
  serves HTTP/gRPC/metrics; other ranks ``--model-control-mode=explicit --load-model=tensorrt_llm`` with
  ``--allow-http=false --allow-grpc=false --allow-metrics=false``.
- llmapi mode: every rank runs ``trtllm-llmapi-launch <cmd>``; the wrapper runs ``<cmd>`` on rank 0 only and
  an MPI worker on the others (TensorRT-LLM ``tensorrt_llm/llmapi/trtllm-llmapi-launch`` @ 020c89e6;
  tensorrtllm_backend ``docs/llmapi.md``). ``trtllm-serve`` flags from the TensorRT-LLM DeepSeek-V3 README.
- OpenMPI 4 (Debian 12 ``openmpi-bin``): ``--allow-run-as-root`` is required as root; hostfile lines are
  ``<host> slots=<n>``; ``orte_keep_fqdn_hostnames`` keeps ``a.b.c`` names instead of shortening them to ``a``;
  ``plm_rsh_no_tree_spawn`` makes mpirun itself ssh to every worker (workers never ssh to each other);
  ``orte_leave_session_attached`` keeps ``orted`` inside its ssh session instead of ``--daemonize`` (observed
  in the namespace tests: without it orted detaches at once), so the worker's watchdog sees the leader's
  session for as long as it lasts.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dsv3ctl.errors import SpecError

FORWARD_ENV_PREFIXES = ("NCCL_", "UCX_", "TRTLLM_", "TLLM_", "CUDA_", "NVIDIA_", "HF_", "DSV3CTL_", "OMPI_MCA_btl",
                        "GLOO_", "PYTHON")
FORWARD_ENV_NAMES = ("PATH", "LD_LIBRARY_PATH", "HOME")
RANK_ENV = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "PMI_RANK")
SIZE_ENV = ("OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "PMI_SIZE")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Group:
    """One LeaderWorkerSet group: ``hosts[0]`` is the leader, ``hosts[i]`` worker ``i``."""

    lws: str
    group: str
    namespace_suffix: str  # everything after "<pod>." in the address, e.g. "<lws>.<ns>" or "<lws>.<ns>.svc"
    size: int
    hosts: tuple[str, ...] = field(default_factory=tuple)

    @property
    def leader(self) -> str:
        return self.hosts[0]

    @property
    def workers(self) -> tuple[str, ...]:
        return self.hosts[1:]


def group_from_leader_address(leader_address: str, group_size: int) -> Group:
    """Derive every host of the group from ``LWS_LEADER_ADDRESS`` (``<lws>-<group>.<lws>.<ns>[...]``).

    Worker ``i`` (1..size-1) is ``<lws>-<group>-<i>.<rest>``. Raises SpecError (exit 2) when the address does
    not have LWS's shape or the size is below 1.
    """
    if group_size < 1:
        raise SpecError(f"LWS_GROUP_SIZE / --group-size={group_size}: must be >= 1; use the LeaderWorkerSet size "
                        "(parallelism.nodes)")
    addr = leader_address.strip().rstrip(".")
    pod, _, rest = addr.partition(".")
    lws, _, rest_tail = rest.partition(".")
    m = re.match(r"^(?P<lws>.+)-(?P<group>[0-9]+)$", pod)
    if not rest or not lws or not m or m.group("lws") != lws:
        raise SpecError(
            f"LWS_LEADER_ADDRESS / --leader-address={leader_address!r}: expected <lws>-<group>.<lws>.<namespace> "
            "(the name LeaderWorkerSet gives the leader pod under its headless service), e.g. "
            "'dsv3-0.dsv3.default'; or pass --hosts with every host of the group"
        )
    for label in (lws, *rest_tail.split(".")) if rest_tail else (lws,):
        if not _DNS_LABEL.match(label):
            raise SpecError(f"LWS_LEADER_ADDRESS={leader_address!r}: {label!r} is not a DNS label")
    hosts = [addr] + [f"{pod}-{i}.{rest}" for i in range(1, group_size)]
    return Group(lws=lws, group=m.group("group"), namespace_suffix=rest, size=group_size, hosts=tuple(hosts))


def group_from_hosts(hosts: Sequence[str]) -> Group:
    """A group from an explicit host list (first = leader), e.g. ``--hosts a,b,c``."""
    hs = tuple(h.strip() for h in hosts if h.strip())
    if not hs:
        raise SpecError("--hosts is empty; pass the leader first, then every worker, e.g. --hosts n0,n1")
    if len(set(hs)) != len(hs):
        raise SpecError(f"--hosts={','.join(hs)}: a host appears twice; list each host once")
    return Group(lws="", group="", namespace_suffix="", size=len(hs), hosts=hs)


def hostfile_text(hosts: Sequence[str], slots: int) -> str:
    """OpenMPI hostfile: one ``<host> slots=<slots>`` line per host (slots = gpus_per_node)."""
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def forwarded_env(env: Mapping[str, str]) -> list[str]:
    """Names of the environment variables mpirun forwards to every rank (``-x NAME``): NCCL_*, UCX_*,
    TRTLLM_*, TLLM_*, CUDA_*, NVIDIA_*, HF_*, DSV3CTL_* plus PATH, LD_LIBRARY_PATH, HOME; sorted."""
    return sorted(k for k in env if k in FORWARD_ENV_NAMES or k.startswith(FORWARD_ENV_PREFIXES))


@dataclass(frozen=True)
class RankConfig:
    """Everything ``dsv3ctl launch rank`` needs to build one rank's server command."""

    mode: str  # engine | llmapi
    frontend: str = "tritonserver"  # llmapi: tritonserver | trtllm-serve
    model_repository: str = "/models/triton_model_repo"
    model_dir: str = "/models/hf"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    tritonserver: str = "tritonserver"
    llmapi_launch: str = "trtllm-llmapi-launch"
    trtllm_serve: str = "trtllm-serve"
    tp: int = 1
    pp: int = 1
    moe_ep: int = 1
    max_batch_size: int = 4
    max_num_tokens: int = 8192
    max_seq_len: int = 4096
    kv_cache_free_gpu_mem_fraction: float = 0.9
    extra_llm_api_options: str = ""

    def to_args(self) -> list[str]:
        """The ``dsv3ctl launch rank`` flags that reproduce this config (what mpirun/srun run per rank)."""
        a = ["--mode", self.mode, "--frontend", self.frontend, "--model-repo", self.model_repository,
             "--model-dir", self.model_dir, "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--metrics-port", str(self.metrics_port), "--tritonserver", self.tritonserver,
             "--tp", str(self.tp), "--pp", str(self.pp), "--moe-ep", str(self.moe_ep),
             "--max-batch-size", str(self.max_batch_size), "--max-num-tokens", str(self.max_num_tokens),
             "--max-seq-len", str(self.max_seq_len),
             "--kv-cache-free-gpu-mem-fraction", str(self.kv_cache_free_gpu_mem_fraction)]
        if self.extra_llm_api_options:
            a += ["--extra-llm-api-options", self.extra_llm_api_options]
        return a


def rank_config_from_spec(spec, **overrides) -> RankConfig:  # type: ignore[no-untyped-def]
    """RankConfig from a :class:`~dsv3ctl.core.spec.Spec` (serving, parallelism, launch sections)."""
    s, p, lc = spec.serving, spec.parallelism, spec.launch
    base = dict(mode=s.mode, frontend=s.frontend, model_repository=lc.model_repository, model_dir=lc.model_dir,
                http_port=lc.http_port, grpc_port=lc.grpc_port, metrics_port=lc.metrics_port, tp=p.tp, pp=p.pp,
                moe_ep=p.moe_ep, max_batch_size=s.max_batch_size, max_num_tokens=s.max_num_tokens,
                max_seq_len=s.max_seq_len, kv_cache_free_gpu_mem_fraction=s.kv_cache_free_gpu_mem_fraction)
    openai_port = getattr(getattr(spec, "deploy", None), "openai_port", None)
    if (overrides.get("frontend") or s.frontend) == "trtllm-serve" and openai_port:
        base["http_port"] = openai_port  # the chart exposes trtllm-serve on deploy.openai_port
    base.update({k: v for k, v in overrides.items() if v is not None})
    return RankConfig(**base)  # type: ignore[arg-type]


def rank_from_env(env: Mapping[str, str]) -> int:
    """This process's MPI rank from OpenMPI, PMIx, Slurm or PMI variables; SpecError when none is set."""
    return rank_and_source(env)[0]


def check_rank(rank: int, cfg: RankConfig, source: str) -> int:
    """SpecError (exit 2) unless 0 <= ``rank`` < tp x pp (the world the config was built for)."""
    world = cfg.tp * cfg.pp
    if not 0 <= rank < world:
        raise SpecError(f"{source}={rank}: outside the world of tp x pp = {cfg.tp} x {cfg.pp} = {world} ranks; a rank "
                        f"is 0..{world - 1}", hint="check --rank / the launcher's -np, or --tp/--pp and the spec's "
                                                   "parallelism section")
    return rank


def rank_and_source(env: Mapping[str, str], rank: int | None = None) -> tuple[int, str]:
    """(rank, where it came from: ``--rank`` or the variable's name). SpecError when there is none."""
    if rank is not None:
        return rank, "--rank"
    for k in RANK_ENV:
        if env.get(k, "").isdigit():
            return int(env[k]), k
    raise SpecError(f"no MPI rank in the environment (looked at {', '.join(RANK_ENV)}); `dsv3ctl launch rank` "
                    "runs under mpirun or srun, or pass --rank")


def engine_rank_argv(cfg: RankConfig, rank: int) -> list[str]:
    """tritonserver argv for ``rank`` in Triton leader mode (see the module docstring for the source)."""
    argv = [cfg.tritonserver, f"--model-repository={cfg.model_repository}", "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name=prefix{rank}_", f"--id=rank{rank}"]
    if rank == 0:
        argv += [f"--http-port={cfg.http_port}", f"--grpc-port={cfg.grpc_port}", f"--metrics-port={cfg.metrics_port}"]
    else:
        argv += ["--model-control-mode=explicit", "--load-model=tensorrt_llm", "--allow-http=false",
                 "--allow-grpc=false", "--allow-metrics=false"]
    return argv


def llmapi_rank_argv(cfg: RankConfig, rank: int) -> list[str]:
    """``trtllm-llmapi-launch <server>`` for llmapi mode. The argv is the same on every rank (the wrapper
    decides what each rank runs); ``rank`` only selects the Python-backend shm prefix for tritonserver.

    tritonserver does not get ``--disable-auto-complete-config`` here, as in tensorrtllm_backend's
    ``docs/llmapi.md`` launch line (main @ 0b9d7d5a, line 105). It changes nothing for dsv3ctl's llmapi
    model: that model has no ``auto_complete_config`` (upstream's copies ``triton_config`` from model.yaml);
    its config.pbtxt states ``max_batch_size: 0`` and the decoupled policy itself
    (:func:`dsv3ctl.render.model_repo.llmapi_files`).
    """
    if cfg.frontend == "trtllm-serve":
        server = [cfg.trtllm_serve, cfg.model_dir, "--host", "0.0.0.0", "--port", str(cfg.http_port),
                  "--backend", "pytorch", "--tp_size", str(cfg.tp), "--pp_size", str(cfg.pp),
                  "--ep_size", str(cfg.moe_ep), "--max_batch_size", str(cfg.max_batch_size),
                  "--max_num_tokens", str(cfg.max_num_tokens), "--max_seq_len", str(cfg.max_seq_len),
                  "--kv_cache_free_gpu_memory_fraction", str(cfg.kv_cache_free_gpu_mem_fraction)]
        if cfg.extra_llm_api_options:
            server += ["--extra_llm_api_options", cfg.extra_llm_api_options]
    else:
        server = [cfg.tritonserver, f"--model-repository={cfg.model_repository}",
                  f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
                  f"--http-port={cfg.http_port}", f"--grpc-port={cfg.grpc_port}", f"--metrics-port={cfg.metrics_port}"]
    return [cfg.llmapi_launch, *server]


def rank_argv(cfg: RankConfig, rank: int) -> list[str]:
    """The server argv of ``rank`` for ``cfg.mode`` (engine: tritonserver leader mode; llmapi: the wrapper)."""
    if cfg.mode == "engine":
        return engine_rank_argv(cfg, rank)
    if cfg.mode == "llmapi":
        return llmapi_rank_argv(cfg, rank)
    raise SpecError(f"serving.mode / --mode={cfg.mode!r}: use engine or llmapi")


def mpirun_argv(
    *, mpirun: str, hostfile: str, world_size: int, ssh_config: str, forward: Sequence[str], rank_cmd: Sequence[str],
    as_root: bool, extra_mca: Mapping[str, str] | None = None,
) -> list[str]:
    """The leader's mpirun argv: every rank runs ``rank_cmd`` (``dsv3ctl launch rank ...``).

    ``mpirun`` should be an absolute path: OpenMPI treats that like ``--prefix`` so remote daemons find
    ``orted`` even when sshd's PATH lacks it. ``ssh_config`` is passed with ``-F`` so host-key checking and
    the port come from the launcher's group-scoped config, never from global defaults.
    """
    argv = [mpirun]
    if as_root:
        argv.append("--allow-run-as-root")
    argv += ["--hostfile", hostfile, "-np", str(world_size), "--map-by", "slot", "--bind-to", "none",
             "--mca", "plm_rsh_agent", "ssh", "--mca", "plm_rsh_args", f"-F {ssh_config}",
             "--mca", "plm_rsh_no_tree_spawn", "1", "--mca", "orte_keep_fqdn_hostnames", "1",
             "--mca", "orte_leave_session_attached", "1"]
    for k, v in (extra_mca or {}).items():
        argv += ["--mca", k, v]
    for name in forward:
        argv += ["-x", name]
    argv += list(rank_cmd)
    return argv


def ssh_config_text(hosts: Sequence[str], *, port: int, identity: str, known_hosts: str) -> str:
    """ssh_config for the leader: only the group's hosts get the port, key and strict host-key checking
    against the group's own known_hosts file (nothing global is changed)."""
    return (
        f"Host {' '.join(hosts)}\n"
        f"    Port {port}\n"
        f"    User root\n"
        f"    IdentityFile {identity}\n"
        f"    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {known_hosts}\n"
        f"    GlobalKnownHostsFile /dev/null\n"
        f"    StrictHostKeyChecking yes\n"
        f"    CheckHostIP no\n"
        f"    BatchMode yes\n"
        f"    ConnectTimeout 10\n"
        f"    ConnectionAttempts 3\n"
        f"    ServerAliveInterval 10\n"
        f"    ServerAliveCountMax 3\n"
        f"    LogLevel ERROR\n"
    )


def known_hosts_text(hosts: Sequence[str], port: int, host_pubkey: str) -> str:
    """One known_hosts line that trusts the group's host key for exactly the group's hosts on ``port``."""
    names = ",".join(f"[{h}]:{port}" if port != 22 else h for h in hosts)
    return f"{names} {host_pubkey.strip()}\n"


def sshd_config_text(*, port: int, host_key: str, authorized_keys: str, pid_file: str, path_env: str) -> str:
    """sshd_config for a worker: key-only root login on ``port``; PATH of the pod passed to sessions."""
    return (
        f"Port {port}\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        f"PidFile {pid_file}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes yes\n"
        "X11Forwarding no\n"
        "AllowTcpForwarding no\n"
        "PrintMotd no\n"
        "LogLevel INFO\n"
        "MaxStartups 64:30:256\n"
        "ClientAliveInterval 10\n"
        "ClientAliveCountMax 3\n"
        f"SetEnv PATH={path_env}\n"
    )


def shell_join(argv: Sequence[str]) -> str:
    return shlex.join(list(argv))


def engine_parallelism(config: Mapping) -> tuple[int, int]:  # type: ignore[type-arg]
    """(tp, pp) from a TensorRT-LLM engine ``config.json``: ``pretrained_config.mapping.tp_size/pp_size``
    (what the C++ runtime checks against its world, ``gptJsonConfig.cpp``). SpecError when absent."""
    try:
        mapping = config["pretrained_config"]["mapping"]
        return int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    except (KeyError, TypeError, ValueError):
        raise SpecError("engine config.json has no pretrained_config.mapping; point --engine-dir at a trtllm-build "
                        "output directory") from None


def llmapi_parallelism(model_yaml: Mapping) -> tuple[int, int]:  # type: ignore[type-arg]
    """(tp, pp) from the llmapi model's ``model.yaml`` (``tensor_parallel_size``, ``pipeline_parallel_size``)."""
    return int(model_yaml.get("tensor_parallel_size", 1) or 1), int(model_yaml.get("pipeline_parallel_size", 1) or 1)


def check_world_size(*, hosts: int, slots: int, tp: int, pp: int, source: str) -> int:
    """Raise SpecError (exit 2) unless hosts x slots = tp x pp; return the world size."""
    world = hosts * slots
    if world != tp * pp:
        alt = f"nodes={tp * pp // slots}" if (tp * pp) % slots == 0 else f"gpus_per_node dividing {tp * pp}"
        raise SpecError(
            f"world size mismatch: {hosts} hosts x {slots} GPUs (parallelism.gpus_per_node) = {world} ranks, but "
            f"{source} was built for tp x pp = {tp} x {pp} = {tp * pp}; refusing to launch. Use {alt} "
            f"(LeaderWorkerSet size), or rebuild for tp={world // max(1, pp)}"
        )
    return world
