"""Runners for TensorRT-LLM's DeepSeek-V3 ``convert_checkpoint.py`` and ``trtllm-build`` (engine mode).

They run inside the engine image (docker/Dockerfile target ``engine``: TensorRT-LLM built from the
``deepseek`` preview branch, ``convert_checkpoint.py`` at :data:`DEFAULT_CONVERT_SCRIPT`, ``trtllm-build``
on PATH). The argv comes from :mod:`dsv3ctl.render.trtllm`; this module adds:

- preflight (:func:`preflight_convert`, :func:`preflight_build`): the installed TensorRT-LLM knows
  ``DeepseekV3ForCausalLM`` (``tensorrt_llm.models.MODEL_MAP``, probed in a subprocess of the
  interpreter that runs the tools), the GPU architecture (``nvidia-smi``; the deepseek branch's MLA
  kernel is SM90 only), host memory per worker (workers are capped to what fits), free disk, and the
  input checkpoint (``weights verify`` for the Hugging Face checkpoint; mapping and rank files for the
  TensorRT-LLM checkpoint);
- a run with the tool's output streamed line by line to the console and to ``.dsv3ctl/<step>.log``
  in the output directory, progress by rank files appearing (``rank*.safetensors`` / ``rank*.engine``);
- idempotence: the output is written to ``.<OUT>.partial`` next to OUT and renamed on success, with
  ``OUT/.dsv3ctl/fingerprint.json`` (sha256 over the argv without workers/paths, the spec fields that
  matter, the input's index/config hash and the TensorRT-LLM version); a rerun with the same fingerprint
  and valid outputs does nothing;
- output validation (``config.json`` mapping = the spec's tp/pp/moe_tp/moe_ep, one rank file per rank)
  and ``OUT/.dsv3ctl/build-info.json`` with the TensorRT-LLM version, so a mismatched runtime can be
  caught at deploy (engines only load in the TensorRT-LLM that built them).

Facts (layout of config.json and rank files, flags, SM90): reference doc sections 3 and 4 (TensorRT-LLM
``deepseek`` branch @ 0321f71e / 130232d9, ``PretrainedModel.save_checkpoint``, ``EngineConfig.to_dict``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv3ctl.core.spec import Spec
from dsv3ctl.errors import RuntimeFailure, SpecError
from dsv3ctl.fsutil import atomic_write_text

GIB = 1024 ** 3
#: Where docker/Dockerfile's engine target installs the deepseek branch's examples/deepseek_v3.
DEFAULT_CONVERT_SCRIPT = "/opt/tensorrt_llm/examples/deepseek_v3/convert_checkpoint.py"
STATE_DIR = ".dsv3ctl"
FINGERPRINT_NAME = "fingerprint.json"
BUILD_INFO_NAME = "build-info.json"
ARCHITECTURE = "DeepseekV3ForCausalLM"
#: Compute capability the deepseek branch's MLA kernel supports (reference doc 4.3: "SM90 only").
REQUIRED_SM = 90
#: Memory a worker needs besides its rank's tensors (Python, TensorRT-LLM, CUDA context), bytes.
WORKER_OVERHEAD = 2 * GIB
#: Disk headroom kept free after the output, bytes.
DISK_HEADROOM = 1 * GIB

Log = Callable[[str], None]

_PROBE = r"""
import json, sys
try:
    import tensorrt_llm
except BaseException as e:
    print("DSV3CTL_PROBE " + json.dumps({"installed": False, "error": type(e).__name__ + ": " + str(e)}))
    sys.exit(0)
info = {"installed": True, "version": str(getattr(tensorrt_llm, "__version__", "unknown")),
        "file": str(getattr(tensorrt_llm, "__file__", ""))}
try:
    from tensorrt_llm.models import MODEL_MAP
    info["deepseek_v3"] = "DeepseekV3ForCausalLM" in MODEL_MAP
except BaseException as e:
    info["deepseek_v3"] = False
    info["error"] = type(e).__name__ + ": " + str(e)
print("DSV3CTL_PROBE " + json.dumps(info))
"""


# ------------------------------------------------------------------------------------------ findings
@dataclass
class Finding:
    """One preflight result. ``level`` is ``error`` or ``warning``; ``spec`` errors exit 2, others 1."""

    level: str
    check: str
    message: str
    hint: str = ""
    spec: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Preflight:
    """Everything a run needs, measured once: findings, the worker count, sizes (bytes) and the probe."""

    step: str
    findings: list[Finding] = field(default_factory=list)
    workers: int = 1
    input_bytes: int = 0
    need_disk: int = 0
    free_disk: int = 0
    mem_per_worker: int = 0
    mem_available: int = 0
    trtllm: dict[str, Any] = field(default_factory=dict)
    input_hash: str = ""

    def error(self, check: str, message: str, hint: str = "", spec: bool = False) -> None:
        self.findings.append(Finding("error", check, message, hint, spec))

    def warn(self, check: str, message: str, hint: str = "") -> None:
        self.findings.append(Finding("warning", check, message, hint))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def raise_errors(self) -> None:
        """Raise SpecError (exit 2) when any error is a spec error, else RuntimeFailure (exit 1)."""
        errs = self.errors
        if not errs:
            return
        msg = f"{self.step} preflight failed:\n" + "\n".join(f"  - [{e.check}] {e.message}" for e in errs)
        hint = "; ".join(e.hint for e in errs if e.hint) or None
        raise (SpecError if any(e.spec for e in errs) else RuntimeFailure)(msg, hint)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["findings"] = [f.to_json() for f in self.findings]
        return d


# ------------------------------------------------------------------------------------------ measuring
def mem_available() -> int:
    """Host memory the step may use, in bytes: the smaller of MemAvailable and what the memory cgroup still
    allows (:func:`dsv3ctl.adapters.sysmem.budget`); 0 when unreadable."""
    from dsv3ctl.adapters.sysmem import available_bytes

    return available_bytes()


def free_disk(path: str | Path) -> int:
    """Free bytes on the file system that holds ``path`` (its nearest existing ancestor)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def gpu_caps() -> list[tuple[str, str]] | None:
    """``[(name, compute_cap)]`` from ``nvidia-smi --query-gpu=name,compute_cap``; None when nvidia-smi is
    absent or cannot answer (old drivers lack compute_cap)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        r = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    out = []
    for line in r.stdout.splitlines():
        if "," in line:
            name, cap = line.rsplit(",", 1)
            out.append((name.strip(), cap.strip()))
    return out


def probe_trtllm(python: str, timeout: float = 600.0) -> dict[str, Any]:
    """Import ``tensorrt_llm`` with ``python`` in a subprocess: ``{installed, version, file, deepseek_v3,
    error}``. Raises RuntimeFailure when ``python`` cannot be run."""
    exe = shutil.which(python) or python
    try:
        r = subprocess.run([exe, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise RuntimeFailure(f"--python={python}: not found", "pass the interpreter that has tensorrt_llm "
                             "(python3 in the engine image)") from None
    except subprocess.TimeoutExpired:
        return {"installed": False, "error": f"importing tensorrt_llm took over {timeout:.0f}s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("DSV3CTL_PROBE "):
            return json.loads(line[len("DSV3CTL_PROBE "):])
    tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
    return {"installed": False, "error": f"{exe} exited {r.returncode}: {' | '.join(tail)}"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ checks
#: File override for the image's TensorRT-LLM commit stamp (tests point it into tmp).
COMMIT_FILE_ENV = "DSV3CTL_TRTLLM_COMMIT_FILE"


def installed_commit() -> str:
    """The TensorRT-LLM commit the image was built from (:data:`dsv3ctl.core.trtllm_pin.STAMP_PATH`,
    written by docker/Dockerfile), or "" outside the image."""
    from dsv3ctl.core.trtllm_pin import STAMP_PATH

    p = Path(os.environ.get(COMMIT_FILE_ENV) or STAMP_PATH)
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def check_accepts(pf: Preflight, tool: str, help_argv: list[str], argv: list[str], fix: str) -> None:
    """Capability probe: ``help_argv`` (the tool's ``--help``) must list every flag of ``argv``; a flag it
    does not list is a spec error (exit 2) naming the flag, the tool, the installed TensorRT-LLM version and
    commit, and ``fix``. A probe that cannot run is a runtime error (exit 1)."""
    from dsv3ctl.adapters.probe import read_help, refusal, unaccepted

    pr = read_help(help_argv)
    commit = installed_commit()
    version = f"tensorrt_llm {pf.trtllm.get('version', 'unknown')}" + (f", commit {commit[:12]}" if commit else "")
    if pr.error:
        pf.error("flags", f"cannot ask {tool} for its flags: {pr.error}", f"run inside the engine image, or {fix}")
        return
    miss = unaccepted(argv, pr)
    if miss:
        pf.error("flags", refusal(tool, version, miss, fix), fix, spec=True)


def _check_trtllm(pf: Preflight, python: str, probe: Callable[[str], dict[str, Any]]) -> None:
    info = probe(python)
    pf.trtllm = info
    if not info.get("installed"):
        pf.error("tensorrt_llm", f"tensorrt_llm is not importable by {python} ({info.get('error', 'not installed')})",
                 "run inside the engine image (`dsv3ctl image build --target engine`), or pass --python with the "
                 "interpreter that has the deepseek-branch TensorRT-LLM")
    elif not info.get("deepseek_v3"):
        pf.error("tensorrt_llm", f"TensorRT-LLM {info.get('version')} ({info.get('file')}) has no "
                 f"{ARCHITECTURE} in tensorrt_llm.models.MODEL_MAP: stock releases do not build DeepSeek-V3 "
                 "engines" + (f" ({info['error']})" if info.get("error") else ""),
                 "engine mode needs the engine image built from the deepseek branch (`dsv3ctl image build "
                 "--target engine`), or set serving.mode: llmapi (PyTorch backend, no conversion)")


def _check_gpu(pf: Preflight, required: bool, caps: Callable[[], list[tuple[str, str]] | None]) -> None:
    found = caps()
    if found is None:
        pf.warn("gpu", "nvidia-smi not found or no compute_cap: GPU architecture not checked "
                f"(engines need SM{REQUIRED_SM})")
        return
    if not found:
        (pf.error if required else pf.warn)("gpu", "nvidia-smi lists no GPU", "run on a node with SM90 GPUs")
        return
    bad = [(n, c) for n, c in found if c.replace(".", "") != str(REQUIRED_SM)]
    if bad:
        names = ", ".join(f"{n} (sm {c})" for n, c in sorted(set(bad)))
        msg = (f"GPU architecture: {names}; the deepseek branch's MLA kernel needs SM{REQUIRED_SM} "
               "(H100/H200/H20)")
        if required:
            pf.error("gpu", msg, "build engines on the GPU type that will serve them (H100/H200)")
        else:
            pf.warn("gpu", msg + "; conversion runs on the CPU, but engines must be built on SM90")


def _plan_workers(pf: Preflight, requested: int, world: int, per_worker: int, available: int) -> None:
    pf.mem_per_worker, pf.mem_available = per_worker, available
    want = requested if requested > 0 else world
    want = max(1, min(want, world))
    if available <= 0:
        pf.warn("memory", "MemAvailable unreadable: workers not capped by memory")
        pf.workers = want
        return
    fits = available // per_worker
    if fits < 1:
        pf.error("memory", f"one worker needs about {per_worker / GIB:.1f} GiB of host memory (one rank of "
                 f"{world}), {available / GIB:.1f} GiB available",
                 "free host memory, use a node with more, or raise parallelism.tp (smaller ranks)")
        pf.workers = 0
        return
    if fits < want:
        pf.warn("memory", f"workers capped from {want} to {fits}: each needs about {per_worker / GIB:.1f} GiB, "
                f"{available / GIB:.1f} GiB available")
        want = int(fits)
    pf.workers = want


def _check_disk(pf: Preflight, out: Path, need: int, free: Callable[[Path], int]) -> None:
    pf.need_disk, pf.free_disk = need, free(out.parent)
    if pf.free_disk < need:
        pf.error("disk", f"{out.parent}: {pf.free_disk / GIB:.1f} GiB free, about {need / GIB:.1f} GiB needed "
                 f"(output estimate + {DISK_HEADROOM // GIB} GiB headroom)", "free space or choose another output dir")


# ------------------------------------------------------------------------------------------ outputs
def _mapping_problems(spec: Spec, mapping: dict[str, Any], src: str) -> list[str]:
    par = spec.parallelism
    want = {"world_size": par.world_size, "tp_size": par.tp, "pp_size": par.pp, "moe_tp_size": par.moe_tp,
            "moe_ep_size": par.moe_ep}
    return [f"{src}: mapping.{k} = {mapping.get(k)!r}, the spec needs {v}" for k, v in want.items()
            if mapping.get(k) != v]


def _rank_problems(d: Path, suffix: str, world: int) -> list[str]:
    present = {p.name for p in d.glob(f"rank*{suffix}") if re.fullmatch(rf"rank\d+{re.escape(suffix)}", p.name)}
    expected = {f"rank{r}{suffix}" for r in range(world)}
    probs = [f"{d}: {n}: missing" for n in sorted(expected - present)]
    probs += [f"{d}: {n}: not a rank of world_size {world}" for n in sorted(present - expected)]
    probs += [f"{d}: {n}: empty" for n in sorted(present & expected) if (d / n).stat().st_size == 0]
    return probs


def _read_config(d: Path) -> dict[str, Any] | None:
    try:
        cfg = json.loads((d / "config.json").read_text())
        return cfg if isinstance(cfg, dict) else None
    except (OSError, ValueError):
        return None


def validate_checkpoint(d: str | Path, spec: Spec) -> list[str]:
    """Problems with a convert_checkpoint.py output for ``spec``: config.json (architecture, ``mapping``
    world/tp/pp/moe_tp/moe_ep) and ``rank{0..world-1}.safetensors`` (present, non-empty, no others)."""
    d = Path(d)
    cfg = _read_config(d)
    if cfg is None:
        return [f"{d}/config.json: missing or not JSON (rank 0 writes it)"]
    probs = _mapping_problems(spec, cfg.get("mapping") or {}, f"{d}/config.json")
    if cfg.get("architecture") not in (None, ARCHITECTURE):
        probs.append(f"{d}/config.json: architecture = {cfg.get('architecture')!r}, expected {ARCHITECTURE}")
    return probs + _rank_problems(d, ".safetensors", spec.parallelism.world_size)


def validate_engine(d: str | Path, spec: Spec) -> list[str]:
    """Problems with a trtllm-build output for ``spec``: config.json (``pretrained_config.mapping``,
    ``build_config`` sizes) and ``rank{0..world-1}.engine``."""
    d = Path(d)
    cfg = _read_config(d)
    if cfg is None or not isinstance(cfg.get("pretrained_config"), dict):
        return [f"{d}/config.json: missing, not JSON or without pretrained_config (trtllm-build writes it)"]
    probs = _mapping_problems(spec, cfg["pretrained_config"].get("mapping") or {}, f"{d}/config.json pretrained_config")
    bc = cfg.get("build_config") or {}
    sv = spec.serving
    for k in ("max_batch_size", "max_seq_len", "max_input_len", "max_num_tokens", "max_beam_width"):
        if k in bc and bc[k] != getattr(sv, k):
            probs.append(f"{d}/config.json: build_config.{k} = {bc[k]!r}, serving.{k} = {getattr(sv, k)}")
    return probs + _rank_problems(d, ".engine", spec.parallelism.world_size)


# ------------------------------------------------------------------------------------------ preflight
def _measures(probe: Any, caps: Any, memory: Any, free: Any) -> tuple[Any, Any, Any, Any]:
    """The measuring functions, looked up at call time (tests replace them on this module)."""
    return (probe or probe_trtllm, caps or gpu_caps, memory or mem_available, free or free_disk)


def _dir_bytes(d: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in d.glob(pattern) if p.is_file())


def check_recorded_checksums(pf: Preflight, model_dir: Path) -> None:
    """Error ``checksums`` when ``model_dir/.dsv3ctl/checksums.json`` lists a file whose size or sha256 does not
    match (hashing only files not verified since their last change: ``verify_checksums``). A checkpoint without
    recorded checksums (not downloaded or cast by dsv3ctl) is checked by its structure only."""
    from dsv3ctl.core.checkpoint import load_checksums, verify_checksums

    if load_checksums(model_dir) is None:
        return
    res = verify_checksums(model_dir)
    if res.problems:
        pf.error("checksums", f"{model_dir}: {len(res.problems)} file(s) do not match their recorded checksums "
                 f"(first: {'; '.join(res.problems[:3])})",
                 "rerun `dsv3ctl weights download` (it deletes and fetches them again) or re-cast the checkpoint")


def preflight_convert(spec: Spec, model_dir: Path, out: Path, workers: int, python: str, script: str, *,
                      probe: Callable[[str], dict[str, Any]] | None = None,
                      caps: Callable[[], list[tuple[str, str]] | None] | None = None,
                      memory: Callable[[], int] | None = None,
                      free: Callable[[Path], int] | None = None) -> Preflight:
    """Checks before ``convert_checkpoint.py``; never raises for a failed check (see :meth:`Preflight.raise_errors`).

    Memory per worker (one worker converts one rank) is estimated as 2 x the rank's share of the input
    (tensors read + converted, held until saved) + :data:`WORKER_OVERHEAD`; disk as the input size (FP8
    stays FP8 with ``--use_fp8_weights``, BF16 stays BF16) + :data:`DISK_HEADROOM`.
    """
    from dsv3ctl.core.checkpoint import INDEX_NAME, load_index, verify_checkpoint

    probe, caps, memory, free = _measures(probe, caps, memory, free)
    pf = Preflight("convert")
    world = spec.parallelism.world_size
    if not Path(script).is_file():
        pf.error("convert-script", f"--convert-script={script}: not a file",
                 f"run inside the engine image (it installs {DEFAULT_CONVERT_SCRIPT}) or pass --convert-script")
    try:
        rep = verify_checkpoint(model_dir)
    except (SpecError, RuntimeFailure) as err:
        pf.error("checkpoint", err.message, err.hint or f"check {model_dir} with `dsv3ctl weights verify`")
        rep = None
    if rep is not None:
        if not rep.ok:
            first = (rep.missing + rep.extra + rep.malformed + rep.index_problems + rep.shard_problems)[:5]
            pf.error("checkpoint", f"{model_dir} does not verify: {len(rep.missing)} missing, {len(rep.extra)} extra, "
                     f"{len(rep.malformed)} malformed tensors, {len(rep.index_problems) + len(rep.shard_problems)} "
                     f"index/shard problems (first: {'; '.join(first)})",
                     f"run `dsv3ctl weights verify {model_dir}` and re-download or re-cast the reported files")
        prec = spec.model.precision
        if prec == "fp8" and rep.precision != "fp8":
            pf.error("precision", f"model.precision=fp8 but {model_dir} is a {rep.precision} checkpoint",
                     "set model.precision: bf16, or pass the FP8 checkpoint", spec=True)
        elif prec in ("bf16", "fp16") and rep.precision == "fp8":
            pf.error("precision", f"model.precision={prec} but {model_dir} is an FP8 checkpoint",
                     f"cast it first: `dsv3ctl weights cast-bf16 {model_dir} DST` and convert DST, or set "
                     "model.precision: fp8", spec=True)
        idx = model_dir / INDEX_NAME
        pf.input_hash = sha256_file(idx) if idx.is_file() else ""
        pf.input_bytes = sum((model_dir / s).stat().st_size for s in load_index(model_dir).shards
                             if (model_dir / s).is_file())
        check_recorded_checksums(pf, model_dir)
    _check_trtllm(pf, python, probe)
    _check_gpu(pf, required=False, caps=caps)
    if os.environ.get("TRTLLM_DISABLE_UNIFIED_CONVERTER"):
        pf.warn("environment", "TRTLLM_DISABLE_UNIFIED_CONVERTER is set: convert_checkpoint.py loads the whole "
                "Hugging Face model into host memory (the memory estimate does not cover that)",
                "unset TRTLLM_DISABLE_UNIFIED_CONVERTER")
    per_worker = 2 * pf.input_bytes // max(world, 1) + WORKER_OVERHEAD
    _plan_workers(pf, workers, world, per_worker, memory())
    _check_disk(pf, out, pf.input_bytes + DISK_HEADROOM, free)
    return pf


def preflight_build(spec: Spec, ckpt_dir: Path, out: Path, workers: int, python: str, *,
                    probe: Callable[[str], dict[str, Any]] | None = None,
                    caps: Callable[[], list[tuple[str, str]] | None] | None = None,
                    memory: Callable[[], int] | None = None,
                    free: Callable[[Path], int] | None = None) -> Preflight:
    """Checks before ``trtllm-build``: the TensorRT-LLM checkpoint matches the spec (mapping, rank files),
    TensorRT-LLM with DeepSeek-V3, SM90 GPUs (an error here), memory per worker (2 x one rank's checkpoint
    + :data:`WORKER_OVERHEAD`; workers also capped by the GPUs nvidia-smi lists) and disk (1.1 x the
    checkpoint + :data:`DISK_HEADROOM`). Never raises for a failed check."""
    probe, caps, memory, free = _measures(probe, caps, memory, free)
    pf = Preflight("build-engine")
    world = spec.parallelism.world_size
    probs = validate_checkpoint(ckpt_dir, spec)
    if probs:
        pf.error("checkpoint", f"{ckpt_dir} is not a TensorRT-LLM checkpoint for this spec: " + "; ".join(probs[:5]),
                 f"convert it first: `dsv3ctl convert MODEL_DIR {ckpt_dir}` with the same spec")
    cfg_p = ckpt_dir / "config.json"
    pf.input_hash = sha256_file(cfg_p) if cfg_p.is_file() else ""
    fp = ckpt_dir / STATE_DIR / FINGERPRINT_NAME
    if fp.is_file():
        pf.input_hash = hashlib.sha256((pf.input_hash + fp.read_text()).encode()).hexdigest()
    pf.input_bytes = _dir_bytes(ckpt_dir, "rank*.safetensors") if ckpt_dir.is_dir() else 0
    _check_trtllm(pf, python, probe)
    info_p = ckpt_dir / STATE_DIR / BUILD_INFO_NAME
    if info_p.is_file() and pf.trtllm.get("version"):
        try:
            made_by = json.loads(info_p.read_text()).get("tensorrt_llm_version")
        except ValueError:
            made_by = None
        if made_by and made_by != pf.trtllm["version"]:
            pf.warn("tensorrt_llm", f"{ckpt_dir} was converted by TensorRT-LLM {made_by}, building with "
                    f"{pf.trtllm['version']}", "convert and build with the same image")
    found = caps()
    _check_gpu(pf, required=True, caps=lambda: found)
    per_worker = 2 * pf.input_bytes // max(world, 1) + WORKER_OVERHEAD
    _plan_workers(pf, workers, world, per_worker, memory())
    if found and pf.workers > len(found):
        pf.warn("gpu", f"workers capped from {pf.workers} to {len(found)} (one GPU per build worker)")
        pf.workers = len(found)
    _check_disk(pf, out, int(pf.input_bytes * 1.1) + DISK_HEADROOM, free)
    return pf


# ------------------------------------------------------------------------------------------ fingerprint
def _strip(argv: list[str], drop: tuple[str, ...]) -> list[str]:
    """argv without its interpreter/executable path and without ``drop`` flags and their values."""
    out, i = [], 1
    while i < len(argv):
        if argv[i] in drop:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def fingerprint(step: str, spec: Spec, argv: list[str], input_hash: str, trtllm_version: str) -> dict[str, Any]:
    """The identity of a step's output: argv (executable, paths and ``--workers`` dropped: they do not
    change the result), the spec fields that matter, the input's hash and the TensorRT-LLM version;
    ``sha256`` over all of it (canonical JSON)."""
    par, sv = spec.parallelism, spec.serving
    fields: dict[str, Any] = {"precision": spec.model.precision, "tp": par.tp, "pp": par.pp, "moe_tp": par.moe_tp,
                              "moe_ep": par.moe_ep}
    if step == "build-engine":
        fields.update({k: getattr(sv, k) for k in ("max_batch_size", "max_seq_len", "max_input_len",
                                                   "max_num_tokens", "max_beam_width", "paged_context_fmha")})
    drop = ("--workers", "--model_dir", "--output_dir", "--checkpoint_dir")
    body = {"step": step, "argv": _strip(argv, drop), "spec": fields, "input_sha256": input_hash,
            "tensorrt_llm_version": trtllm_version}
    body["sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return body


def _stored_fingerprint(out: Path) -> str | None:
    try:
        return json.loads((out / STATE_DIR / FINGERPRINT_NAME).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------ running
@dataclass
class RunResult:
    """What a runner did. ``skipped`` when the fingerprint matched valid outputs."""

    step: str
    out: str
    argv: list[str]
    workers: int
    fingerprint: str
    skipped: bool
    seconds: float
    tensorrt_llm_version: str
    log: str
    findings: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def partial_dir(out: Path) -> Path:
    """Where a run writes before the rename: ``.<name>.partial`` next to ``out``."""
    return out.parent / f".{out.name}.partial"


def stream(argv: list[str], log_path: Path, log: Log, watch: Path, suffix: str, world: int,
           env: dict[str, str] | None = None, poll_s: float = 1.0) -> int:
    """Run ``argv``; every output line (stdout and stderr merged) goes to ``log`` and ``log_path``;
    ``progress: k/world rank*<suffix>`` is logged whenever the count of rank files in ``watch`` changes.
    Returns the exit status. On KeyboardInterrupt the child is terminated (then killed after 10 s)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    done = threading.Event()
    with open(log_path, "a", encoding="utf-8") as lf:
        def emit(line: str) -> None:
            with lock:
                lf.write(line + "\n")
                lf.flush()
                log(line)

        emit(f"$ {shlex.join(argv)}")

        def watcher() -> None:
            seen, finished = -1, False
            while True:
                n = sum(1 for p in watch.glob(f"rank*{suffix}")) if watch.is_dir() else 0
                if n != seen:
                    seen = n
                    emit(f"progress: {n}/{world} rank*{suffix}")
                if finished:
                    return
                finished = done.wait(poll_s)  # one last count after the tool exits

        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                errors="replace", env=env)
        th = threading.Thread(target=watcher, daemon=True)
        th.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                emit(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        finally:
            done.set()
            th.join()
        return rc


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted afterwards."""
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def killed_note(step: str, rc: int, pf: Preflight) -> str:
    """``"; <why>"`` when ``rc`` means SIGKILL (the OOM killer, the estimate ``workers x mem_per_worker`` and
    the ``--workers`` value that halves it), else ``""``."""
    from dsv3ctl.adapters.sysmem import killed_message

    need = pf.workers * pf.mem_per_worker if pf.mem_per_worker else None
    msg = killed_message(rc, f"{step} ({pf.workers} workers)", need, f"--workers {max(1, pf.workers // 2)}")
    return f"; {msg}" if msg else ""


def run_step(step: str, spec: Spec, out: Path, argv: list[str], pf: Preflight, validate: Callable[[Path, Spec], list[str]],
             suffix: str, log: Log, force: bool = False) -> RunResult:
    """Run one step (``convert`` or ``build-engine``) idempotently; ``argv`` must write into
    :func:`partial_dir` (out). An up-to-date output is reported before preflight errors are raised (a
    finished output may itself fill the disk). Raises SpecError/RuntimeFailure for preflight errors
    (:meth:`Preflight.raise_errors`), RuntimeFailure when the tool fails or its output does not validate
    (the partial dir and its log are kept for inspection; a rerun starts over), or when ``out`` holds
    something dsv3ctl did not write (unless ``force``)."""
    from dsv3ctl import __version__

    out = out.absolute()
    tmp = partial_dir(out)
    version = str(pf.trtllm.get("version", "unknown"))
    fp = fingerprint(step, spec, argv, pf.input_hash, version)
    stored = _stored_fingerprint(out)
    if stored == fp["sha256"] and not validate(out, spec):
        log(f"{out}: up to date (fingerprint {fp['sha256'][:12]} matches, outputs valid); nothing to do")
        return RunResult(step, str(out), argv, pf.workers, fp["sha256"], True, 0.0, version,
                         str(out / STATE_DIR / f"{step}.log"), [f.to_json() for f in pf.findings])
    pf.raise_errors()
    if out.exists() and any(out.iterdir()) and stored is None and not force:
        raise RuntimeFailure(f"{out}: exists, is not empty and has no {STATE_DIR}/{FINGERPRINT_NAME} (not written "
                             f"by dsv3ctl {step}); refusing to replace it", "pass --force to replace it, or choose "
                             "another output directory")
    for stale in (tmp, out.parent / f".{out.name}.old"):
        if stale.exists():
            log(f"removing stale {stale} from an earlier run")
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    log_path = tmp / STATE_DIR / f"{step}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    rc = stream(argv, log_path, log, tmp, suffix, spec.parallelism.world_size, env=env)
    secs = time.monotonic() - t0
    if rc != 0:
        raise RuntimeFailure(f"{step}: {Path(argv[0]).name} exited with status {rc} after {secs:.0f}s; log: {log_path}"
                             + killed_note(step, rc, pf),
                             f"fix the cause shown in the log and rerun (the partial output {tmp} is removed then)")
    probs = validate(tmp, spec)
    if probs:
        raise RuntimeFailure(f"{step}: output does not match the spec: " + "; ".join(probs[:8]) + f"; log: {log_path}",
                             "check the log; the tool's version or flags may differ from the deepseek branch")
    info = {"step": step, "tensorrt_llm_version": version, "tensorrt_llm_file": pf.trtllm.get("file"),
            "argv": argv, "workers": pf.workers, "fingerprint": fp["sha256"], "dsv3ctl_version": __version__,
            "seconds": round(secs, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "world_size": spec.parallelism.world_size}
    atomic_write_text(tmp / STATE_DIR / BUILD_INFO_NAME, json.dumps(info, indent=2) + "\n")
    atomic_write_text(tmp / STATE_DIR / FINGERPRINT_NAME, json.dumps(fp, indent=2) + "\n")
    _replace_dir(tmp, out)
    log(f"{step}: done in {secs:.1f}s -> {out}")
    return RunResult(step, str(out), argv, pf.workers, fp["sha256"], False, secs, version,
                     str(out / STATE_DIR / f"{step}.log"), [f.to_json() for f in pf.findings])
