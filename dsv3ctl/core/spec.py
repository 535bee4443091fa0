"""The deployment spec (``dsv3.yaml``): one pydantic model, validated once, that everything renders from.

Load with :func:`load_spec`; it raises :class:`dsv3ctl.errors.SpecError` (exit code 2) whose message
names each bad field, the rule and a valid alternative ("did you mean" for unknown keys).
The embedded default (``dsv3ctl/data/dsv3.yaml``) is the FP8 example of
TensorRT-LLM's DeepSeek-V3 README (examples/deepseek_v3/README.md on the deepseek branch): DeepSeek-V3, engine mode,
TP 16 over 2 nodes x 8 H100-80GB, max_batch_size 4, max_input_len 2048, max_seq_len 4096.

Only field-local rules live here (types, ranges, enums). Rules that need DeepSeek-V3's architecture
(tp divides 128 heads, pp = 1 in engine mode, memory fit) live in :mod:`dsv3ctl.core.planner`.
"""

from __future__ import annotations

import difflib
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from dsv3ctl.core.hardware import GPUS
from dsv3ctl.errors import SpecError

DEFAULT_SPEC_RESOURCE = "dsv3.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True, use_enum_values=True)


class Precision(str, Enum):
    fp8 = "fp8"
    bf16 = "bf16"
    fp16 = "fp16"


class Mode(str, Enum):
    engine = "engine"
    llmapi = "llmapi"


class ModelSpec(_Strict):
    """Which checkpoint to serve."""

    repo: str = Field("deepseek-ai/DeepSeek-V3", description="Hugging Face repo id of a DeepSeek-V3-family model")
    revision: str = Field("main", description="Branch, tag or commit sha on the hub; pin a sha for reproducibility")
    precision: Precision = Field(Precision.fp8, description="Weight precision served: fp8 | bf16 | fp16")
    allow_patterns: list[str] = Field(
        default_factory=lambda: ["*.safetensors", "*.json", "*.py", "*.model", "*.txt", "*.md"],
        description="huggingface_hub allow_patterns for `weights download`",
    )
    ignore_patterns: list[str] = Field(default_factory=list, description="huggingface_hub ignore_patterns")


#: What ``serving.profile`` sets in llmapi mode (only keys the spec leaves unset). Source: TensorRT-LLM's per-GPU
#: recipe database for DeepSeek-R1-0528 on H200 (FP8, TP 8 = EP 8, 1K in / 1K out), NVIDIA/TensorRT-LLM
#: ``examples/configs/database/deepseek-ai/DeepSeek-R1-0528/H200/1k1k_tp8_conc256.yaml`` @ 355abaf0a4646afd52bee61957619039e2c59591
#: (throughput: enable_attention_dp true, kv_cache_config {dtype: fp8, free_gpu_memory_fraction: 0.75},
#: cuda_graph_config {enable_padding: true}, moe_config.backend CUTLASS, stream_interval 10) and
#: ``.../1k1k_tp8_conc1.yaml`` @ 3105370ba2f2f7eafba58b42327fbbc0c6df8a20 (latency: speculative_config MTP with
#: 3 draft tokens, kv fp8 at 0.8, attention DP off, the same CUDA graph / MoE / stream settings). Both use
#: moe_expert_parallel_size = tensor_parallel_size (applied by :class:`Spec` when parallelism.moe_ep is unset).
#: The recipes' ``attention_dp_config`` and ``print_iter_log`` are left out: attention_dp_config is not a field
#: of TensorRT-LLM 1.0's TorchLlmArgs (dsv3ctl/data/contracts/llm_args.json); the MTP draft length is written
#: as 1.0's ``num_nextn_predict_layers``. CUDA graphs go up to serving.max_batch_size (the recipes set it to
#: the benchmark's concurrency).
SERVING_PROFILES: dict[str, dict[str, Any]] = {
    "throughput": {"serving": {"enable_attention_dp": True, "mtp_layers": 0, "kv_cache_free_gpu_mem_fraction": 0.75,
                               "kv_cache_dtype": "fp8", "moe_backend": "CUTLASS", "stream_interval": 10},
                   "expert_parallel": True},
    "latency": {"serving": {"enable_attention_dp": False, "mtp_layers": 3, "kv_cache_free_gpu_mem_fraction": 0.8,
                            "kv_cache_dtype": "fp8", "moe_backend": "CUTLASS", "stream_interval": 10},
                "expert_parallel": True},
}


class ServingSpec(_Strict):
    """Runtime limits and Triton/TensorRT-LLM serving options."""

    mode: Mode = Field(Mode.engine, description="engine: TensorRT engines (deepseek preview branch); llmapi: PyTorch backend")
    max_batch_size: int = Field(4, ge=1, le=4096, description="Requests in flight per instance")
    max_input_len: int = Field(2048, ge=1, description="Prompt tokens per request")
    max_seq_len: int = Field(4096, ge=2, description="Prompt + generated tokens per request (at most 163840, "
                                                     "DeepSeek-V3's max_position_embeddings)")
    max_num_tokens: int = Field(8192, ge=1, description="Tokens per engine step (batch of context + generation)")
    max_beam_width: int = Field(1, ge=1, le=8, description="Beam width (1 = sampling/greedy)")
    kv_cache_free_gpu_mem_fraction: float = Field(
        0.9, gt=0.0, le=1.0, description="Fraction of the GPU memory left after weights that the KV cache takes"
    )
    paged_context_fmha: bool = Field(True, description="trtllm-build --use_paged_context_fmha enable")
    batch_scheduler_policy: Literal["max_utilization", "guaranteed_no_evict"] = "guaranteed_no_evict"
    enable_chunked_context: bool = False
    enable_kv_cache_reuse: bool = False
    exclude_input_in_output: bool = True
    decoupled: bool = Field(True, description="Decoupled (streaming) transaction policy for tensorrt_llm and BLS")
    preprocessing_instances: int = Field(1, ge=1)
    postprocessing_instances: int = Field(1, ge=1)
    bls_instances: int = Field(1, ge=1)
    # llmapi (PyTorch backend) options
    frontend: Literal["tritonserver", "trtllm-serve"] = Field(
        "tritonserver", description="llmapi mode: serve through Triton's llmapi model or TensorRT-LLM's trtllm-serve"
    )
    profile: Literal["throughput", "latency"] = Field(
        "throughput", description="llmapi: TensorRT-LLM's published DeepSeek-R1 H200 recipe to start from "
        "(throughput: attention DP + expert parallel, many users; latency: MTP, few users); explicit keys override it"
    )
    mtp_layers: int = Field(0, ge=0, le=3, description="llmapi: MTP speculative decoding next-n layers (0 = off)")
    enable_attention_dp: bool = Field(False, description="llmapi: attention data parallelism")
    cuda_graph_max_batch_size: int | Literal["auto"] = Field(
        "auto", description="llmapi: CUDA graphs (with padding) up to this batch; auto = max_batch_size, 0 = off"
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto", description="llmapi: KV cache dtype (kv_cache_config.dtype; TensorRT-LLM's default auto = the model's)"
    )
    moe_backend: Literal["CUTLASS", "CUTEDSL", "WIDEEP", "TRTLLM", "DEEPGEMM", "VANILLA"] = Field(
        "CUTLASS", description="llmapi: MoE backend (moe_config.backend)"
    )
    stream_interval: int = Field(1, ge=1, description="llmapi: iterations per streamed response")
    load_timeout_s: int = Field(
        3600, ge=60, description="Seconds a model load may take before the startup probe gives up (up to an hour)"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """llmapi mode: every key of :data:`SERVING_PROFILES` ``[profile]`` the spec does not set itself."""
        if not isinstance(data, dict) or data.get("mode") != "llmapi":
            return data
        profile = SERVING_PROFILES.get(data.get("profile", "throughput"))
        if profile is None:
            return data  # the Literal check names the field and the choices
        return {**{k: v for k, v in profile["serving"].items() if k not in data}, **data}

    @model_validator(mode="after")
    def _limits(self) -> ServingSpec:
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(
                f"max_input_len={self.max_input_len} must be < max_seq_len={self.max_seq_len} "
                f"(room to generate); use max_input_len={self.max_seq_len // 2} or raise max_seq_len"
            )
        return self


class ParallelismSpec(_Strict):
    """Parallel layout of one model instance: world size = nodes x gpus_per_node = tp x pp."""

    nodes: int = Field(2, ge=1, le=64, description="Nodes per model instance (LeaderWorkerSet size)")
    gpus_per_node: int = Field(8, ge=1, le=16)
    tp: int = Field(16, ge=1, description="Tensor parallel size")
    pp: int = Field(1, ge=1, description="Pipeline parallel size")
    moe_ep: int = Field(1, ge=1, description="MoE expert parallel size; moe_tp = tp / moe_ep")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def moe_tp(self) -> int:
        return self.tp // self.moe_ep


class HardwareSpec(_Strict):
    gpu: str = Field("H100-80GB", description="GPU model, one of: " + ", ".join(GPUS))

    @field_validator("gpu")
    @classmethod
    def _known(cls, v: str) -> str:
        if v in GPUS:
            return v
        lower = {g.lower(): g for g in GPUS}
        near = [lower[v.lower()]] if v.lower() in lower else (
            [g for g in GPUS if g.lower().startswith(v.lower())][:1]
            or [lower[m] for m in difflib.get_close_matches(v.lower(), list(lower), n=1)])
        alt = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(f"unknown GPU; {alt}known: {', '.join(GPUS)}")


class ImageSpec(_Strict):
    """The container image (docker/Dockerfile) and its pinned build arguments."""

    repository: str = Field("ghcr.io/dsv3ctl/dsv3ctl", description="Image repository to tag and push")
    tag: str = Field("", description="Image tag; empty = <version>-<mode>")
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    # Build arguments of docker/Dockerfile (see docs/image.md for the source of each pin).
    triton_tag: str = Field(
        "25.10", pattern=r"^[0-9]{2}\.[0-9]{2}$",
        description="llmapi target base nvcr.io/nvidia/tritonserver:<tag>-trtllm-python-py3; 25.10 ships TensorRT-LLM "
                    "1.0.0 (Triton release compatibility matrix; 25.08 still ships 0.21.0)",
    )
    engine_base_tag: str = Field(
        "24.11", pattern=r"^[0-9]{2}\.[0-9]{2}$",
        description="engine target base nvcr.io/nvidia/tritonserver:<tag>-py3 (no TensorRT-LLM: it is built from source)",
    )
    trtllm_repo: str = Field("https://github.com/NVIDIA/TensorRT-LLM.git", description="TensorRT-LLM git repository")
    trtllm_commit: str = Field(
        "deepseek", pattern=r"^([0-9a-f]{7,40}|[A-Za-z][A-Za-z0-9._/-]{0,99})$",
        description="TensorRT-LLM source for engine mode: a commit SHA, or a branch that `image build` resolves "
                    "to a SHA and stamps into the image (label ai.dsv3ctl.trtllm-commit and "
                    "/opt/tensorrt_llm/TRTLLM_COMMIT). Default: the deepseek preview branch, whose FP8 conversion "
                    "came with PR #2719; 0321f71e (2025-01-16) converts BF16/INT8/INT4 weight-only only "
                    "(dsv3ctl/data/trtllm_commits.json)",
    )
    backend_repo: str = Field("https://github.com/triton-inference-server/tensorrtllm_backend.git",
                              description="Triton TensorRT-LLM backend git repository")
    backend_commit: str = Field(
        "c575d8cb980883efca12fe89ba918499c29459be", pattern=r"^[0-9a-f]{7,40}$",
        description="tensorrtllm_backend commit (v0.18.2) compiled against the TensorRT-LLM source above",
    )
    builder: Literal["auto", "docker", "podman", "buildah"] = Field(
        "auto", description="Image builder: auto = docker buildx when present, else podman, else buildah"
    )


class LaunchSpec(_Strict):
    """The in-container launcher (``dsv3ctl launch leader|worker|rank``): SSH, waiting, preflight, paths."""

    ssh_port: int = Field(2222, ge=1, le=65535, description="Port every pod's sshd listens on (not 22: no root port clash)")
    ssh_secret_dir: str = Field("/etc/dsv3ctl/ssh", description="Where the chart mounts the SSH key Secret")
    runtime_dir: str = Field("/run/dsv3ctl", description="Where the launcher writes keys, sshd/ssh config and the hostfile")
    worker_wait_timeout_s: int = Field(
        600, ge=1, le=86400, description="Seconds the leader waits for every worker's DNS name and SSH port"
    )
    model_repository: str = Field("/models/triton_model_repo", description="Triton model repository inside the pod")
    engine_dir: str = Field("", description="Engine directory (engine mode); empty = read gpt_model_path from "
                                            "<model_repository>/tensorrt_llm/config.pbtxt")
    model_dir: str = Field("/models/hf", description="Hugging Face checkpoint directory (trtllm-serve frontend)")
    trtllm_checkpoint_dir: str = Field(
        "/models/trtllm_ckpt", description="TensorRT-LLM checkpoint directory `launch prepare` converts into (engine mode)")
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=1, le=65535)
    metrics_port: int = Field(8002, ge=1, le=65535)
    shm_min_gib: float = Field(8.0, ge=0, description="Preflight: smallest /dev/shm (GiB) the ranks may start with")
    skip_preflight: list[Literal["shm", "memlock", "infiniband", "gpus"]] = Field(
        default_factory=list, description="Preflight checks the leader and worker pods skip (as --skip-preflight): "
                                          "e.g. gpus on nodes whose containers see no GPU devices")
    rdma: bool = Field(False, description="An RDMA resource was requested: preflight needs /dev/infiniband and "
                                          "an unlimited memlock limit")
    fabric_check: Literal["auto", "off", "warn", "enforce"] = Field(
        "auto", description="All-reduce over the whole world before the server starts (dsv3ctl.core.fabric): enforce "
                            "stops the launch when NCCL uses sockets while RDMA is on, ranks disagree on the transport "
                            "or the bus bandwidth is below fabric_min_busbw_gbps; warn only logs; auto = enforce for "
                            "more than one node, off for one")
    fabric_min_busbw_gbps: float = Field(
        0.0, ge=0, description="Smallest all-reduce bus bandwidth (Gb/s, nccl-tests definition) at the largest size; "
                               "0 = derived: 0.5 x deploy.rdma.count x 400 Gb/s for multi-node groups with RDMA, "
                               "none otherwise (dsv3ctl plan states it)")
    fabric_timeout_s: int = Field(300, ge=10, le=3600, description="Bound on the fabric check's rendezvous and "
                                                                   "collectives (seconds)")

    @field_validator("fabric_check", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        """YAML 1.1 reads a bare ``off`` as false (PyYAML's bool resolver): take it as ``"off"``."""
        return "off" if v is False else v


class SlurmSpec(_Strict):
    """The sbatch script of ``dsv3ctl slurm render`` (srun + pyxis container path)."""

    job_name: str = Field("dsv3", pattern=r"^[A-Za-z0-9_.-]+$")
    partition: str = Field("", description="sbatch --partition; empty = the cluster default")
    account: str = Field("", description="sbatch --account; empty = none")
    time_limit: str = Field("04:00:00", pattern=r"^[0-9:-]+$", description="sbatch --time")
    container_mounts: list[str] = Field(
        default_factory=lambda: ["/models:/models"], description="srun --container-mounts entries (src:dst[:flags])"
    )


# ------------------------------------------------------------------------------------------ deploy -------
# Kubernetes deployment (Helm chart helm/dsv3 on LeaderWorkerSet). Field names are the chart's value names:
# the chart's values.yaml is this spec's model_dump and values.schema.json its JSON Schema (a test keeps
# them equal), so spec and chart values cannot drift. Sizes are Kubernetes quantities ("64Gi", "32").

_K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_K8S_NAME_OR_EMPTY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
_QUANTITY = r"^([0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?)?$"
AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]


def _default_access_modes() -> list[AccessMode]:
    return ["ReadWriteMany"]


class RdmaSpec(_Strict):
    """RDMA device-plugin resource requested per pod (adds the IPC_LOCK capability when enabled)."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="Request an RDMA resource per pod. auto: on only for multi-node groups (TP across nodes "
                            "over TCP is far slower; one node talks over NVLink and needs no RDMA device); "
                            "false: NCCL_IB_DISABLE=1")
    resource: str = Field("rdma/ib", pattern=r"^([a-z0-9.-]+/[A-Za-z0-9_.-]+)?$",
                          description="Extended resource name: rdma/ib, rdma/rdma_shared_device_a, "
                                      "vpc.amazonaws.com/efa, ...; '' = RDMA on without requesting a resource (the "
                                      "NICs come another way, e.g. GKE multi-networking annotations)")
    count: int = Field(1, ge=1, le=64, description="How many of the RDMA resource each pod requests")


class NcclSpec(_Strict):
    """NCCL/UCX environment for every rank (empty string = leave unset, NCCL auto-detects)."""

    ib_hca: str = Field("", description="NCCL_IB_HCA, e.g. 'mlx5_0,mlx5_1' or '=mlx5_0:1'")
    socket_ifname: str = Field("", description="NCCL_SOCKET_IFNAME (bootstrap/socket interface), e.g. 'eth0' or '^lo,docker'")
    debug: Literal["", "VERSION", "WARN", "INFO", "TRACE"] = Field("WARN", description="NCCL_DEBUG")
    ucx_net_devices: str = Field("", description="UCX_NET_DEVICES, e.g. 'mlx5_0:1'")
    extra_env: dict[str, str] = Field(default_factory=dict, description="More environment variables for every pod")


class StorageSpec(_Strict):
    """Where the weights and engines live, mounted at ``mount_path`` in every pod and the prepare Job."""

    kind: Literal["hostPath", "existingClaim", "newClaim"] = Field(
        "hostPath", description="hostPath: a directory on each node; existingClaim: a PVC you made; "
                                "newClaim: the chart creates a PVC (kept on undeploy)")
    host_path: str = Field("/var/lib/dsv3ctl", pattern=r"^/", description="kind=hostPath: node directory (DirectoryOrCreate)")
    claim_name: str = Field("", description="existingClaim: its name (required); newClaim: name (empty = <release>-dsv3-models)")
    size: str = Field("2Ti", pattern=_QUANTITY, description="newClaim: requested size")
    storage_class: str = Field("", description="newClaim: storageClassName (empty = cluster default)")
    access_modes: list[AccessMode] = Field(
        default_factory=_default_access_modes, min_length=1, description="newClaim: access modes")
    mount_path: str = Field("/models", pattern=r"^/", description="Mount path in the pods; launch.model_dir and "
                                                                   "launch.model_repository must lie under it")
    sub_path: str = Field("", pattern=r"^([^/].*)?$", description="Directory of the volume to mount (volumeMount subPath; empty = its root)")
    artifacts_dir: str = Field(
        "artifacts", pattern=r"^([^/.][^/]*(/[^/.][^/]*)*)?$",
        description="Directory under mount_path for content-addressed artifacts: engines, the TensorRT-LLM checkpoint "
                    "and the Triton repository live in <mount_path>/<artifacts_dir>/<fingerprint>/ (the fingerprint "
                    "of model, serving, parallelism, hardware and image), so an upgrade writes a new directory and a "
                    "rollback finds the old one; empty = the fixed launch.* paths")


class PrepareSpec(_Strict):
    """The prepare Job (``dsv3ctl prepare``, run by ``dsv3ctl deploy`` before the group is installed)."""

    enabled: bool = Field(False, description="dsv3ctl deploy runs a prepare Job (download, cast, convert, build, "
                                             "repository) into the volume before it installs or upgrades the group")
    timeout_s: int = Field(36000, ge=60, le=7 * 86400,
                           description="Seconds the prepare Job may run (its activeDeadlineSeconds; deploy waits as long)")
    backoff_limit: int = Field(2, ge=0, le=10, description="Retries of a failed prepare pod (Job backoffLimit)")


#: ``deploy.platform`` choices (presets in dsv3ctl/data/platforms.json, applied by dsv3ctl.core.platforms).
PLATFORMS = ("generic", "gke", "eks", "aks", "network-operator")
Platform = Literal["generic", "gke", "eks", "aks", "network-operator"]

_LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LabelKey = Annotated[str, StringConstraints(pattern=_LABEL_KEY, max_length=316)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")]
_VOLUME_SOURCES = ("hostPath", "emptyDir", "secret", "configMap", "persistentVolumeClaim", "csi", "ephemeral",
                   "projected", "downwardAPI", "nfs", "image")


class SecretEnv(_Strict):
    """One environment variable read from a Secret (``valueFrom.secretKeyRef``)."""

    name: EnvName = Field(description="Variable name")
    secret: str = Field(pattern=_K8S_NAME, max_length=253, description="Secret name in the release's namespace")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret")
    optional: bool = Field(False, description="Start the pod when the Secret or key is missing")


class VolumeMount(_Strict):
    """An extra volumeMount of the dsv3 container (Kubernetes core/v1 VolumeMount)."""

    name: str = Field(pattern=_K8S_NAME, max_length=63, description="Name of a volume in deploy.extra_volumes")
    mountPath: str = Field(pattern=r"^/", description="Where it appears in the container")  # noqa: N815 - k8s name
    readOnly: bool = False  # noqa: N815 - Kubernetes' field name
    subPath: str = Field("", pattern=r"^([^/].*)?$", description="Directory of the volume to mount (empty = its root)")  # noqa: N815


class DeploySpec(_Strict):
    """Kubernetes deployment: namespace, release, pod shape, storage, scheduling and optional objects."""

    namespace: str = Field("dsv3", pattern=_K8S_NAME, max_length=63, description="Namespace of the release")
    release: str = Field("dsv3", pattern=_K8S_NAME, max_length=40, description="Helm release name")
    name_override: str = Field(
        "", pattern=_K8S_NAME_OR_EMPTY, max_length=40,
        description="Replaces the chart name dsv3 in object names (<release>-<name>) and in the "
                    "app.kubernetes.io/name label; empty = dsv3")
    fullname_override: str = Field(
        "", pattern=_K8S_NAME_OR_EMPTY, max_length=40,
        description="Base name of every object instead of <release>-<name> (at most 40 characters, so LWS pod, "
                    "StatefulSet and revision names stay under 63); empty = derived from the release")
    platform: Platform = Field(
        "generic", description="Preset of what the platform documents for multi-node GPU + RDMA (RDMA/EFA resource, "
                               "NCCL/libfabric environment, GPU node label, tolerations, pod annotations; values and "
                               "sources in dsv3ctl/data/platforms.json); it fills only keys the spec leaves unset and "
                               "dsv3ctl plan lists what it set. generic = none. Applied by dsv3ctl render/deploy: the "
                               "chart itself does not read it")
    replicas: int = Field(1, ge=1, le=1000, description="Model instances (LeaderWorkerSet replicas = groups)")
    restart_policy: Literal["RecreateGroupOnPodRestart", "RecreateGroupAfterStart"] = Field(
        "RecreateGroupOnPodRestart", description="LWS group restart: an MPI job cannot lose a rank")
    rdma: RdmaSpec = Field(default_factory=RdmaSpec)
    shm_size: str = Field("64Gi", pattern=_QUANTITY, description="/dev/shm (memory emptyDir) size limit")
    host_network: bool = Field(False, description="Pods on the node network (then dnsPolicy ClusterFirstWithHostNet)")
    host_ipc: bool = Field(False, description="Share the node's IPC namespace")
    nccl: NcclSpec = Field(default_factory=NcclSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    hf_token_secret: str = Field("", description="Existing Secret with key HF_TOKEN (empty = no token)")
    ssh_secret: str = Field("", description="Existing Secret with ssh-privatekey/ssh-publickey for MPI "
                                            "(empty = the chart creates <release>-dsv3-ssh once and reuses it)")
    cpu: str = Field("16", pattern=_QUANTITY, description="CPU request per pod")
    memory: str = Field("", pattern=_QUANTITY, description="Memory request = limit per pod (Guaranteed memory); "
                                                        "empty = from the plan: engine/weight bytes per node + "
                                                        "shm_size + memory_headroom")
    memory_headroom: str = Field("32Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)$",
                                 description="memory='': added to the plan's bytes per node (runtime, Python, buffers)")
    ephemeral_storage: str = Field("50Gi", pattern=r"^[0-9]+(\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)$",
                                   description="ephemeral-storage request = limit per pod (logs, /tmp, runtime dir)")
    termination_grace_s: int | None = Field(
        None, ge=1, le=86400, description="terminationGracePeriodSeconds; null = serving.max_seq_len x "
                                          "drain_per_token_ms + 30 s, so a request in flight can finish")
    drain_per_token_ms: float = Field(50.0, gt=0, le=10000, description="Time per generated token assumed when "
                                                                        "sizing termination_grace_s")
    service_monitor_labels: dict[LabelKey, str] = Field(
        default_factory=dict, description="Extra labels on the ServiceMonitor (the Prometheus operator's "
                                          "serviceMonitorSelector, e.g. release: prometheus)")
    gpu_product_label: str | None = Field(
        None, description="nodeSelector nvidia.com/gpu.product; null = from hardware.gpu, '' = do not select")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Extra nodeSelector labels")
    affinity: dict[str, Any] = Field(default_factory=dict, description="Extra pod affinity (merged after the one-pod-per-node anti-affinity)")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Pod tolerations")
    priority_class_name: str = Field("", description="priorityClassName of the pods (and the prepare Job)")
    scheduler_name: str = Field("", description="schedulerName of the pods, e.g. volcano or a Kueue-managed "
                                                "scheduler; empty = the default scheduler")
    pod_labels: dict[LabelKey, str] = Field(default_factory=dict, description="Extra labels on the serving pods "
                                                                              "(e.g. kueue.x-k8s.io/queue-name)")
    pod_annotations: dict[LabelKey, str] = Field(default_factory=dict, description="Extra annotations on the serving "
                                                                                   "pods (e.g. Multus networks)")
    extra_volumes: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra pod volumes (Kubernetes core/v1 Volume objects, each with a name "
                                          "and one source)")
    extra_volume_mounts: list[VolumeMount] = Field(default_factory=list, description="Extra mounts of the dsv3 container")
    env: dict[EnvName, str] = Field(default_factory=dict, description="Extra plain environment variables of the pods")
    env_from_secrets: list[SecretEnv] = Field(default_factory=list, description="Extra environment variables read from Secrets")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secret names for image pulls")
    exclusive_topology: str = Field("", description="Topology key for one group per domain (LWS exclusive-topology), e.g. a rack label")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    service_monitor: bool = Field(False, description="Render a prometheus-operator ServiceMonitor for the metrics port")
    network_policy: bool = Field(False, description="Only release pods reach worker SSH/MPI ports; serving ports stay open")
    max_surge: int | None = Field(
        None, ge=0, le=1000, description="LWS rolloutStrategy maxSurge: extra groups during an upgrade (each costs "
                                         "nodes x gpus_per_node GPUs); null = 1 when replicas > 1, else 0")
    max_unavailable: int = Field(1, ge=0, le=1000, description="LWS rolloutStrategy maxUnavailable: groups that may be "
                                                              "down during an upgrade (not 0 when maxSurge is 0)")
    pdb: bool = Field(True, description="PodDisruptionBudget with maxUnavailable 1: evicting one pod recreates its "
                                        "group, whose pods then count as unavailable, so at most one group is "
                                        "disrupted at a time (none when replicas=1)")
    prepare: PrepareSpec = Field(default_factory=PrepareSpec)
    helm_test: bool = Field(True, description="Render the `helm test` Pod that checks readiness through the Service")
    helm_test_image: str = Field(
        "busybox:1.36", description="Image of the `helm test` Pod: any image with BusyBox wget (a few MB, instead "
                                    "of pulling the serving image); empty = the serving image (its python3)")
    openai_port: int = Field(8080, ge=1024, le=65535, description="trtllm-serve frontend: its OpenAI-compatible port")
    startup_probe_period_s: int = Field(10, ge=1, le=300, description="Leader startupProbe period; failureThreshold = ceil(serving.load_timeout_s / period)")
    max_recreations: int = Field(3, ge=1, le=1000, description="dsv3ctl deploy --wait fails once a group has been "
                                                              "recreated this many times (a container restart makes "
                                                              "LWS recreate the whole group, so a crash loop shows as "
                                                              "recreations, not CrashLoopBackOff)")
    unschedulable_grace_s: int = Field(600, ge=1, le=86400, description="dsv3ctl deploy --wait fails once a pod has "
                                                                        "been unschedulable this long (--grace "
                                                                        "overrides) and no cluster autoscaler is adding "
                                                                        "nodes for it; long enough for node autoscaling")


    @field_validator("extra_volumes")
    @classmethod
    def _volumes(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import re

        for i, vol in enumerate(v):
            name = vol.get("name")
            if not isinstance(name, str) or not re.fullmatch(_K8S_NAME, name) or name in ("models", "dshm", "ssh", "spec"):
                raise ValueError(f"extra_volumes[{i}] needs a name that is a DNS label and not one the chart uses "
                                 "(models, dshm, ssh, spec), e.g. {name: cache, emptyDir: {}}")
            src = [k for k in vol if k != "name"]
            if len(src) != 1:
                raise ValueError(f"extra_volumes[{i}] ({name}) needs exactly one volume source "
                                 f"({', '.join(_VOLUME_SOURCES)}, ...), got {src or 'none'}")
        return v

    @model_validator(mode="after")
    def _mounts(self) -> DeploySpec:
        names = {str(x["name"]) for x in self.extra_volumes}
        for m in self.extra_volume_mounts:
            if m.name not in names:
                raise ValueError(f"extra_volume_mounts: {m.name!r} is not in deploy.extra_volumes "
                                 f"({', '.join(sorted(names)) or 'none'}); add the volume or remove the mount")
        return self

    @model_validator(mode="after")
    def _rollout(self) -> DeploySpec:
        surge = self.effective_max_surge
        if surge == 0 and self.max_unavailable == 0:
            raise ValueError("deploy.max_unavailable=0 with max_surge=0 would never roll a group (LWS refuses it); "
                             "use max_unavailable=1 or max_surge=1")
        return self

    @property
    def effective_max_surge(self) -> int:
        """``max_surge``, or 1 when replicas > 1 else 0 when it is null."""
        if self.max_surge is not None:
            return self.max_surge
        return 1 if self.replicas > 1 else 0


class Spec(_Strict):
    """The whole deployment spec. Keys: model, serving, parallelism, hardware, image (+ more sections
    added by the renderers that need them, e.g. ``deploy``)."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)
    image: ImageSpec = Field(default_factory=ImageSpec)
    launch: LaunchSpec = Field(default_factory=LaunchSpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    deploy: DeploySpec = Field(default_factory=DeploySpec)
    _source: str | None = PrivateAttr(None)  # the file it was loaded from (None: the embedded default)

    @model_validator(mode="before")
    @classmethod
    def _profile_layout(cls, data: Any) -> Any:
        """llmapi mode: the profiles' recipes put the routed experts in expert parallel over the tensor-parallel
        group (moe_expert_parallel_size = tensor_parallel_size); applied only when parallelism.moe_ep is unset."""
        if not isinstance(data, dict):
            return data
        srv, par = data.get("serving"), data.get("parallelism")
        if not isinstance(srv, dict) or srv.get("mode") != "llmapi" or not (par is None or isinstance(par, dict)):
            return data
        profile = SERVING_PROFILES.get(srv.get("profile", "throughput"))
        par = dict(par or {})
        if profile and profile["expert_parallel"] and "moe_ep" not in par:
            par["moe_ep"] = par.get("tp", ParallelismSpec.model_fields["tp"].default)
            return {**data, "parallelism": par}
        return data

    def command(self, verb: str) -> str:
        """``dsv3ctl <verb>`` for this same spec (with ``--spec FILE`` when it came from a file), for hints."""
        import shlex

        return f"dsv3ctl {verb}" + (f" --spec {shlex.quote(self._source)}" if self._source else "")


# --------------------------------------------------------------------------------------------- loading


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at ``loc`` (a pydantic error location), for "did you mean" hints."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        current = ann
    return list(getattr(current, "model_fields", {}) or [])


def _rephrase(e: Any) -> str:
    """pydantic's message as rule + valid alternative (pydantic error types: docs.pydantic.dev/errors)."""
    t, ctx = e["type"], e.get("ctx") or {}
    msg = str(e["msg"]).removeprefix("Value error, ")
    if t == "greater_than_equal":
        return f"must be >= {ctx['ge']}; use {ctx['ge']} or more"
    if t == "greater_than":
        return f"must be > {ctx['gt']}; use a larger value"
    if t == "less_than_equal":
        return f"must be <= {ctx['le']}; use {ctx['le']} or less"
    if t == "less_than":
        return f"must be < {ctx['lt']}; use a smaller value"
    if t in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number, e.g. 8 (not a word or a fraction)"
    if t in ("float_parsing", "float_type"):
        return "must be a number, e.g. 0.9"
    if t in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if t in ("string_type",):
        return "must be a string"
    if t in ("enum", "literal_error"):
        return f"must be one of {ctx.get('expected', '')}".rstrip()
    if t == "string_pattern_mismatch":
        return f"does not match the pattern {ctx.get('pattern')}; e.g. a lowercase DNS name (dsv3) or a quantity (64Gi)"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping of keys to values"
    if t == "list_type":
        return "must be a list"
    return msg


#: keys that are not set but follow from others: (location) -> how
DERIVED_KEYS = {("parallelism", "moe_tp"): "moe_tp is derived: tp / moe_ep; set parallelism.moe_ep (and tp) instead"}


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``<source>: <dotted.field>=<input>: <rule>[; did you mean ...]``."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden" and loc in DERIVED_KEYS:
            lines.append(f"{source}: {dotted}: {DERIVED_KEYS[loc]}")
            continue
        if e["type"] == "extra_forbidden":
            valid = _field_names(Spec, loc)
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"did you mean {'.'.join([*map(str, loc[:-1]), near[0]])!r}?" if near else ""
            lines.append(f"{source}: {dotted}: unknown key; {hint} valid keys here: {', '.join(valid)}".replace("; ", "; ", 1))
            continue
        msg = _rephrase(e)
        inp = e.get("input")
        shown = "" if isinstance(inp, dict) else f"={inp!r}"
        lines.append(f"{source}: {dotted}{shown}: {msg}")
    return "\n".join(lines)


def default_spec_text() -> str:
    """The embedded default spec as commented YAML (what ``dsv3ctl init`` writes)."""
    return resources.files("dsv3ctl.data").joinpath(DEFAULT_SPEC_RESOURCE).read_text(encoding="utf-8")


def parse_spec(data: Any, source: str = "spec") -> Spec:
    """Validate a mapping into a :class:`Spec`; raises :class:`SpecError` naming each field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the top level must be a mapping with keys {', '.join(Spec.model_fields)}")
    try:
        return Spec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


def load_spec(path: str | Path | None = None) -> Spec:
    """Load ``path`` (YAML), or the embedded default when ``path`` is None.

    Raises SpecError (exit 2) when the file is missing, is empty, is not YAML or fails validation.
    """
    if path is None:
        return parse_spec(yaml.safe_load(default_spec_text()), "default spec")
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"spec file {str(p)!r} is a directory; pass a YAML file, e.g. `dsv3ctl init {p / 'dsv3.yaml'}`")
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist; create one with `dsv3ctl init {p}`")
    try:
        with p.open(encoding="utf-8") as f:  # a stream, so YAML errors name the file
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    if data is None:
        raise SpecError(f"spec file {str(p)!r} is empty (no keys)", hint=f"write a starter spec with `dsv3ctl init "
                                                                         f"{p} --force`, or leave out --spec for "
                                                                         "the embedded default")
    spec = parse_spec(data, str(p))
    spec._source = str(p)
    return spec


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of the spec (``dsv3ctl spec schema``)."""
    return Spec.model_json_schema()
