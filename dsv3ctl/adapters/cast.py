"""FP8 -> BF16 cast of a DeepSeek-V3 checkpoint: streaming, bounded memory, parallel, resumable.

Semantics (deepseek-ai/DeepSeek-V3 ``inference/fp8_cast_bf16.py`` and ``inference/kernel.py``
``weight_dequant`` @ 9b4e9788): for every float8_e4m3fn weight W [M, N] with ``<name>_scale_inv`` S
(float32, [ceil(M/128), ceil(N/128)], row-major), the output is ``bf16(float32(W) * S[i//128, j//128])``
with round-to-nearest-even; a partial edge block uses its block's scale; other tensors are copied
byte for byte; the scale is looked up through the index, so it may sit in another shard. Differences
from the reference, on purpose: output shards carry ``{"format": "pt"}`` metadata, the new index keeps
``metadata.total_size``, config.json loses ``quantization_config``, the small files are copied, a weight
without a scale is an error (the reference keeps it FP8 with a warning).

Mechanics:
- Each output shard is written front to back to ``.<name>.partial`` (header first: every output shape is
  known from the input header), hashed while written, fsynced, then renamed; ``.dsv3ctl/cast-manifest.json``
  records size and sha256 per finished shard (atomic rewrite). A rerun deletes stray ``.partial``
  files and skips shards that the manifest lists with a matching size and header; the output is
  deterministic, so ``kill -9`` at any point + rerun gives byte-identical files.
- Pipeline: each worker reads and computes chunk k+1 while its writer thread hashes (sha256) and writes
  chunk k (hashlib and file writes release the GIL); output buffers come from a pool of two and are reused
  only after their bytes are written, so the bytes written are exactly the sequential ones. Each large
  write is followed by ``posix_fadvise(DONTNEED)`` on its range (Linux: starts the disk writeback at once
  and drops written pages), so the fsync before the rename does not wait for the whole shard.
- Memory: payload is read in row chunks of ``chunk_bytes`` (16 MiB of FP8 by default) into one reused
  buffer with plain reads (no mmap), so each worker holds about 5 x chunk_bytes (input + two BF16 output
  buffers) plus a 128 KiB index scratch.
- CPU path (numpy + ml_dtypes): per 128-row block, a [ceil(N/128), 256] table of BF16 values
  ``bf16(fp8_value(b) * s)`` is built and the output is one gather, done in groups of ~64K elements so
  the uint16 index scratch stays in cache, which is exactly the reference's per-element function
  (float32 product then RNE).
- GPU path (torch, optional; a Triton kernel when triton is importable, else torch ops): workers are
  threads, one CUDA stream each, so reading, computing and writing of different shards overlap.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv3ctl.core.checkpoint import (
    CHECKSUMS_NAME,
    INDEX_NAME,
    STATE_DIR,
    TensorEntry,
    checksums_doc,
    encode_header,
    load_index,
    read_header,
    sha256_file,
)
from dsv3ctl.core.model import BLOCK, ceil_div
from dsv3ctl.errors import RuntimeFailure, SpecError
from dsv3ctl.fsutil import atomic_write_text

MANIFEST_NAME = "cast-manifest.json"
PARTIAL_SUFFIX = ".partial"
OUT_METADATA = {"format": "pt"}
CHUNK_BYTES = 16 * 1024 * 1024
COPY_CHUNK = 16 * 1024 * 1024
WRITEBACK_MIN = 1 << 20  # writes at least this big start their disk writeback at once (see _Writer.write)
_FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None) if hasattr(os, "posix_fadvise") else None


# --------------------------------------------------------------------------------------------- planning


@dataclass
class OutTensor:
    """One output tensor: ``op`` is "copy" (bytes unchanged) or "cast" (FP8 + scale -> BF16)."""

    name: str
    op: str
    src: TensorEntry
    scale_name: str | None = None


@dataclass
class ShardPlan:
    name: str
    tensors: list[OutTensor]
    header: bytes  # 8-byte length + JSON header of the output file
    entries: list[TensorEntry]

    @property
    def size(self) -> int:
        return len(self.header) + (self.entries[-1].end if self.entries else 0)


@dataclass
class CastPlan:
    src: Path
    dst: Path
    shards: list[ShardPlan]
    weight_map: dict[str, str]
    total_size: int
    source_fingerprint: str
    small_files: list[str] = field(default_factory=list)


def plan_cast(src: str | Path, dst: str | Path) -> CastPlan:
    """Work out every output shard's header from the input headers (nothing is read but headers).

    Raises SpecError when SRC is not a checkpoint or DST is inside SRC; RuntimeFailure when a shard is
    corrupt or an FP8 weight has no ``_scale_inv`` anywhere in the index.
    """
    s, d = Path(src).resolve(), Path(dst).resolve()
    if not s.is_dir():
        raise SpecError(f"SRC {src}: not a directory; pass the FP8 checkpoint directory")
    if s == d or s in d.parents:
        raise SpecError(f"DST {dst} is inside SRC {src}; choose a directory next to it, e.g. {s.name}-bf16")
    idx = load_index(s)
    headers = {sh: read_header(s / sh) for sh in idx.shards}
    bad = [f"{sh}: {p}" for sh, h in headers.items() for p in h.problems]
    if bad:
        raise RuntimeFailure("corrupt shard headers: " + "; ".join(bad[:5]) + "; run `dsv3ctl weights verify SRC`")
    fp = hashlib.sha256()
    fp.update(json.dumps(idx.weight_map, sort_keys=True).encode())
    consumed: set[str] = set()
    shard_plans: list[ShardPlan] = []
    weight_map: dict[str, str] = {}
    for sh in idx.shards:
        h = headers[sh]
        size = (s / sh).stat().st_size
        if size != h.expected_size:
            raise RuntimeFailure(f"{s / sh}: {size} bytes, header says {h.expected_size} (incomplete); "
                                 "download it again")
        fp.update(f"{sh}:{size}:{h.header_len}".encode())
        outs: list[OutTensor] = []
        for e in sorted(h.tensors.values(), key=lambda t: t.begin):
            if e.dtype == "F8_E4M3":
                sname = e.name + "_scale_inv"
                ssh = idx.weight_map.get(sname)
                if ssh is None or sname not in headers[ssh].tensors:
                    raise RuntimeFailure(f"{e.name} is FP8 but {sname} is not in the index; the checkpoint is "
                                         "incomplete (run `dsv3ctl weights verify SRC`)")
                se = headers[ssh].tensors[sname]
                if len(e.shape) != 2 or se.dtype != "F32" or se.shape != (ceil_div(e.shape[0], BLOCK),
                                                                           ceil_div(e.shape[1], BLOCK)):
                    raise RuntimeFailure(f"{sname}: {se.dtype}{list(se.shape)} does not fit {e.name} "
                                         f"{list(e.shape)} (expected F32 [ceil(M/128), ceil(N/128)])")
                consumed.add(sname)
                outs.append(OutTensor(e.name, "cast", e, sname))
            else:
                outs.append(OutTensor(e.name, "copy", e))
        shard_plans.append(ShardPlan(sh, outs, b"", []))
    total = 0
    for sp in shard_plans:
        sp.tensors = [t for t in sp.tensors if t.name not in consumed]
        header, entries = encode_header(
            [(t.name, "BF16" if t.op == "cast" else t.src.dtype, t.src.shape) for t in sp.tensors], OUT_METADATA)
        sp.header, sp.entries = header, entries
        total += entries[-1].end if entries else 0
        for t in sp.tensors:
            weight_map[t.name] = sp.name
    small = sorted(
        str(p.relative_to(s)) for p in s.rglob("*")
        if p.is_file() and not p.name.endswith(".safetensors") and p.name != INDEX_NAME
        and not any(part.startswith(".") for part in p.relative_to(s).parts)
    )
    return CastPlan(s, d, shard_plans, dict(sorted(weight_map.items())), total, fp.hexdigest(), small)


# --------------------------------------------------------------------------------------------- kernels


def _fp8_lut() -> Any:
    import ml_dtypes
    import numpy as np

    return np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


class CpuDequant:
    """numpy + ml_dtypes dequantizer: ``__call__(w_u8 [r, N], scale_rows [ceil(r/128), Nb], out=None) -> uint16
    [r, N]`` holding BF16 bits (written into ``out`` when given). ``r`` is a multiple of 128 except for a
    tensor's last chunk."""

    GROUP_ELEMS = 65536  # index scratch per np.take call (128 KiB of uint16): stays in L2 between add and take

    def __init__(self) -> None:
        import ml_dtypes
        import numpy as np

        self.np = np
        self.bf16 = ml_dtypes.bfloat16
        self.lut = _fp8_lut()
        self._colblk: dict[int, Any] = {}
        self._idx: Any = None

    def __call__(self, w: Any, s: Any, out: Any = None) -> Any:
        np = self.np
        r, n = w.shape
        nb = ceil_div(n, BLOCK)
        cb = self._colblk.get(n)
        if cb is None:  # column j reads table row j // 128; nb * 256 <= 65536 for every DeepSeek-V3 shape
            dt = np.uint16 if nb * 256 <= 65536 else np.int32
            cb = self._colblk[n] = ((np.arange(n) // BLOCK) * 256).astype(dt)
        if out is None:
            out = np.empty((r, n), np.uint16)
        g = max(1, min(BLOCK, self.GROUP_ELEMS // max(n, 1)))  # rows per take: cache-sized index scratch
        if self._idx is None or self._idx.dtype != cb.dtype or self._idx.size < g * n:
            self._idx = np.empty(max(g * n, self.GROUP_ELEMS), cb.dtype)
        idx = self._idx[:g * n].reshape(g, n)
        for b, i in enumerate(range(0, r, BLOCK)):
            rows = min(BLOCK, r - i)
            table = (s[b][:, None] * self.lut[None, :]).astype(self.bf16).view(np.uint16).ravel()
            for k in range(i, i + rows, g):
                kk = min(g, i + rows - k)
                np.add(w[k:k + kk], cb, out=idx[:kk], casting="unsafe")
                np.take(table, idx[:kk], out=out[k:k + kk], mode="wrap")  # indices are in range by construction
        return out


class TorchDequant:
    """torch dequantizer on one CUDA device; a Triton kernel when triton imports, else torch ops.
    ``__call__(w_u8 cuda [r, N], s cuda float32 [ceil(r/128), Nb]) -> bf16 cuda [r, N]``."""

    def __init__(self, device: str = "cuda") -> None:
        import torch

        self.torch = torch
        self.device = device
        self.kernel = None
        try:
            from dsv3ctl.adapters import _cast_triton

            self.kernel = _cast_triton.dequant
        except Exception:  # noqa: BLE001 - triton missing or broken: fall back to torch ops
            self.kernel = None

    def __call__(self, w: Any, s: Any) -> Any:
        if self.kernel is not None:
            return self.kernel(w, s)
        torch = self.torch
        r, n = w.shape
        x = w.view(torch.float8_e4m3fn).to(torch.float32)
        ex = s.repeat_interleave(BLOCK, 0)[:r].repeat_interleave(BLOCK, 1)[:, :n]
        return (x * ex).to(torch.bfloat16)


# --------------------------------------------------------------------------------------------- runner


@dataclass
class CastResult:
    dst: str
    shards_total: int
    shards_done: int
    shards_skipped: int
    bytes_in: int
    bytes_out: int
    seconds: float
    device: str
    workers: int
    noop: bool = False
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_exact(f: Any, offset: int, n: int, into: Any = None) -> Any:
    f.seek(offset)
    if into is None:
        into = bytearray(n)
    mv = memoryview(into).cast("B")[:n]
    got = 0
    while got < n:
        k = f.readinto(mv[got:])
        if not k:
            raise RuntimeFailure(f"{f.name}: unexpected end of file at {offset + got} (input changed while casting?)")
        got += k
    return into


class _Writer:
    """Sequential writer of one output shard: temp name, sha256 while writing, fsync, rename."""

    def __init__(self, final: Path, hash_: bool) -> None:
        self.final = final
        self.tmp = final.with_name("." + final.name + PARTIAL_SUFFIX)
        self.f = self.tmp.open("wb")
        self.h = hashlib.sha256() if hash_ else None
        self.n = 0

    def write(self, data: Any) -> None:
        mv = memoryview(data).cast("B")
        if self.h is not None:
            self.h.update(mv)
        self.f.write(mv)
        if len(mv) >= WRITEBACK_MIN and _FADV_DONTNEED is not None:
            # Start the disk writeback of this chunk now (Linux: DONTNEED on dirty pages submits them
            # asynchronously, then drops the clean ones), so the final fsync does not wait for the whole
            # shard and a 1.3 TB cast does not fill the page cache. Bytes and fsync-before-rename unchanged.
            self.f.flush()
            try:
                os.posix_fadvise(self.f.fileno(), self.n, len(mv), _FADV_DONTNEED)
            except OSError:
                pass
        self.n += len(mv)

    def commit(self) -> tuple[int, str | None]:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.final)
        return self.n, self.h.hexdigest() if self.h is not None else None

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class _Pipe:
    """Runs ``_Writer.write`` (sha256 + file write, both release the GIL on large buffers) on a background
    thread so that hashing and writing chunk k overlap reading and computing chunk k+1. Output buffers
    come from a small pool (``take``) and go back to it once written, so at most ``nbuf`` chunks are in
    flight and no buffer is reused before its bytes are in the file. Order of writes is preserved."""

    def __init__(self, w: _Writer, nbuf: int = 2, buffers: list[Any] | None = None) -> None:
        self.w = w
        self.q: queue.Queue[Any] = queue.Queue()
        self.free: queue.Queue[Any] = queue.Queue()
        self.nbuf = len(buffers) if buffers else nbuf
        self.made = 0
        for b in buffers or []:  # caller-owned (pinned) buffers: the pool never grows beyond them
            self.free.put(b)
            self.made += 1
        self.err: BaseException | None = None
        self.t = threading.Thread(target=self._run, name=f"cast-write-{w.final.name}", daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            data, buf = item
            if self.err is None:
                try:
                    self.w.write(data)
                except BaseException as err:  # noqa: BLE001 - handed to the producer
                    self.err = err
            if buf is not None:
                self.free.put(buf)

    def _check(self) -> None:
        if self.err is not None:
            raise self.err

    def take(self, nbytes: int) -> Any:
        """A reusable uint8 buffer of at least ``nbytes`` (blocks while all ``nbuf`` are being written)."""
        import numpy as np

        self._check()
        if self.free.empty() and self.made < self.nbuf:
            self.made += 1
            return np.empty(nbytes, np.uint8)
        buf = self.free.get()
        self._check()
        return buf if buf.size >= nbytes else np.empty(nbytes, np.uint8)

    def put(self, data: Any, buf: Any = None) -> None:
        """Queue ``data`` for writing; ``buf`` (from :meth:`take`) returns to the pool once written."""
        self._check()
        self.q.put((data, buf))

    def close(self) -> None:
        """Wait until everything queued is written; re-raise the writer's error."""
        if self.t.is_alive():
            self.q.put(None)
            self.t.join()
        self._check()


GPU_OUT_BUFFERS = 3  # pinned output buffers per GPU worker (the writer's pool): bounds the chunks in flight


class _GpuStaging:
    """One GPU worker thread's host staging, allocated once and reused for every chunk of every shard it casts:
    a CUDA stream, one pinned input buffer (file bytes are read straight into it) and :data:`GPU_OUT_BUFFERS`
    pinned output buffers that the writer thread hands back once written. Host memory per worker is therefore
    fixed: ``in_bytes + GPU_OUT_BUFFERS * out_bytes`` (16 MiB + 3 x 32 MiB with the default chunk), whatever
    the shard size. A buffer grows (is replaced) only when a chunk does not fit."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.inp: Any = None  # pinned torch uint8 [in_bytes]
        self.inp_np: Any = None
        self.outs: list[Any] = []  # pinned torch uint8 [out_bytes]
        self.outs_np: list[Any] = []

    def _pinned(self, n: int) -> Any:
        return self.torch.empty(n, dtype=self.torch.uint8, pin_memory=True)

    def reserve(self, in_bytes: int, out_bytes: int) -> None:
        if self.inp is None or self.inp.numel() < in_bytes:
            self.inp = self._pinned(in_bytes)
            self.inp_np = self.inp.numpy()
        if not self.outs or self.outs[0].numel() < out_bytes:
            self.outs = [self._pinned(out_bytes) for _ in range(GPU_OUT_BUFFERS)]
            self.outs_np = [t.numpy() for t in self.outs]

    def tensor_of(self, buf: Any) -> Any:
        """The pinned torch tensor behind a pool buffer (a plain numpy array when the pool had to grow)."""
        for t, a in zip(self.outs, self.outs_np, strict=True):
            if a is buf:
                return t
        return self.torch.from_numpy(buf)


_STAGING = threading.local()


def _staging(torch: Any) -> _GpuStaging:
    st = getattr(_STAGING, "gpu", None)
    if st is None:
        st = _STAGING.gpu = _GpuStaging(torch)
    return st


def _scale_reader(plan: CastPlan, idx_map: dict[str, str]) -> Callable[[str], Any]:
    headers: dict[str, Any] = {}
    lock = threading.Lock()

    def get(name: str) -> Any:
        import numpy as np

        sh = idx_map[name]
        with lock:
            h = headers.get(sh) or headers.setdefault(sh, read_header(plan.src / sh))
        e = h.tensors[name]
        with (plan.src / sh).open("rb") as f:
            raw = _read_exact(f, h.data_start + e.begin, e.nbytes)
        return np.frombuffer(raw, dtype="<f4").reshape(e.shape)

    return get


def _cast_shard(plan: CastPlan, sp: ShardPlan, get_scale: Callable[[str], Any], device: str,
                chunk_bytes: int, progress: Callable[[int], None], hash_: bool) -> tuple[int, str | None]:
    import numpy as np

    src_h = read_header(plan.src / sp.name)
    w = _Writer(plan.dst / sp.name, hash_)
    gpu = TorchDequant() if device != "cpu" else None
    st: _GpuStaging | None = None
    if gpu is not None:
        st = _staging(gpu.torch)
        in_need = max((min(m, _chunk_rows(n, chunk_bytes)) * n for t in sp.tensors if t.op == "cast"
                       for m, n in [t.src.shape]), default=0)
        st.reserve(max(in_need, 1), max(2 * in_need, COPY_CHUNK))
    pipe = _Pipe(w, buffers=st.outs_np if st is not None else None)
    try:
        pipe.put(sp.header)
        cpu = CpuDequant() if device == "cpu" else None
        inbuf: Any = None  # one reused input buffer: a chunk is consumed before the next read
        with (plan.src / sp.name).open("rb", buffering=0) as f:
            for t in sp.tensors:
                base = src_h.data_start + t.src.begin
                if t.op == "copy":
                    for off in range(0, t.src.nbytes, COPY_CHUNK):
                        n = min(COPY_CHUNK, t.src.nbytes - off)
                        buf = pipe.take(n)
                        _read_exact(f, base + off, n, buf)
                        pipe.put(buf[:n], buf)
                        progress(n)
                    continue
                m, n = t.src.shape
                s = get_scale(t.scale_name)  # type: ignore[arg-type]
                rows = _chunk_rows(n, chunk_bytes)
                for r0 in range(0, m, rows):
                    r = min(rows, m - r0)
                    srows = s[r0 // BLOCK: r0 // BLOCK + ceil_div(r, BLOCK)]
                    if cpu is not None:
                        if inbuf is None or inbuf.size < r * n:
                            inbuf = np.empty(max(r * n, rows * n), np.uint8)
                        wu8 = _read_exact(f, base + r0 * n, r * n, inbuf)[:r * n].reshape(r, n)
                        buf = pipe.take(2 * r * n)
                        out = buf[:2 * r * n].view(np.uint16).reshape(r, n)
                        cpu(wu8, srows, out)
                        if sys.byteorder == "little":
                            pipe.put(buf[:2 * r * n], buf)
                        else:  # safetensors is little-endian
                            pipe.put(out.astype("<u2"), buf)
                    else:
                        assert st is not None and gpu is not None
                        torch = gpu.torch
                        _read_exact(f, base + r0 * n, r * n, st.inp_np)  # straight into pinned memory
                        buf = pipe.take(2 * r * n)  # blocks while the writer holds every pinned buffer
                        host = st.tensor_of(buf)[:2 * r * n].view(torch.bfloat16).view(r, n)
                        with torch.cuda.stream(st.stream):
                            xin = st.inp[:r * n].view(r, n).to(gpu.device, non_blocking=True)
                            sin = torch.from_numpy(np.ascontiguousarray(srows)).to(gpu.device, non_blocking=True)
                            host.copy_(gpu(xin, sin), non_blocking=True)
                        st.stream.synchronize()  # input buffer free again, output bytes on the host
                        pipe.put(buf[:2 * r * n], buf)
                    progress(r * n)
        pipe.close()
        if w.n != sp.size:
            raise RuntimeFailure(f"{sp.name}: wrote {w.n} bytes, planned {sp.size} (internal error)")
        return w.commit()
    except BaseException as err:
        if pipe.err is None:
            pipe.err = err  # the writer thread skips what is still queued
        try:
            pipe.close()
        except BaseException:  # noqa: BLE001 - the first error is the one to report
            pass
        w.abort()
        raise


def _chunk_rows(n: int, chunk_bytes: int) -> int:
    """Rows per chunk of an FP8 [M, n] weight: a multiple of 128 holding about ``chunk_bytes`` (at least 128)."""
    return max(BLOCK, (chunk_bytes // max(n, 1)) // BLOCK * BLOCK)


def _load_manifest(dst: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    p = dst / STATE_DIR / MANIFEST_NAME
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if doc.get("source_fingerprint") != fingerprint:
        return {}
    return dict(doc.get("shards") or {})


def _write_manifest(dst: Path, fingerprint: str, shards: dict[str, dict[str, Any]]) -> None:
    doc = {"source_fingerprint": fingerprint, "shards": shards}
    atomic_write_text(dst / STATE_DIR / MANIFEST_NAME, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _shard_done(dst: Path, sp: ShardPlan, rec: dict[str, Any] | None) -> bool:
    p = dst / sp.name
    if rec is None or not p.is_file() or p.stat().st_size != sp.size or rec.get("size") != sp.size:
        return False
    with p.open("rb") as f:
        return f.read(len(sp.header)) == sp.header


#: Compute capability the GPU path needs: Triton compiles ``tl.float8e4nv`` (the kernel's FP8 load) only when
#: ``allow_fp8e4nv`` is set, i.e. on CUDA arch >= 89 (triton-lang/triton@f22c4a28
#: python/triton/language/semantic.py, ``cast``: "fp8e4nv data type is not supported on CUDA arch < 89").
MIN_CAPABILITY = (8, 9)


def gpu_support() -> tuple[bool, str]:
    """(usable, why) for the GPU path on CUDA device 0: torch imports, sees a GPU, has ``float8_e4m3fn``, and
    the GPU's compute capability is at least :data:`MIN_CAPABILITY`. ``why`` names what is missing."""
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - torch absent or broken
        return False, f"torch is not importable ({type(err).__name__}: {err})"
    try:
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA GPU"
        cap = tuple(torch.cuda.get_device_capability(0))
        name = str(torch.cuda.get_device_name(0))
    except Exception as err:  # noqa: BLE001 - driver problems
        return False, f"CUDA is not usable ({type(err).__name__}: {err})"
    if not hasattr(torch, "float8_e4m3fn"):
        return False, f"torch {getattr(torch, '__version__', '?')} has no float8_e4m3fn dtype (torch >= 2.1 needed)"
    if cap < MIN_CAPABILITY:
        return False, (f"GPU 0 ({name}) has compute capability {cap[0]}.{cap[1]}; the FP8 cast kernel needs "
                       f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ada, Hopper, Blackwell)")
    return True, f"{name}, compute capability {cap[0]}.{cap[1]}"


def resolve_device(device: str, log: Callable[[str], None] | None = None) -> str:
    """auto -> cuda when :func:`gpu_support` says the GPU path works, else cpu (with a one-line notice when a
    GPU is visible but unusable). Raises SpecError for an unknown device and for cuda when it does not work."""
    if device not in ("auto", "cpu", "cuda"):
        raise SpecError(f"--device {device!r}: use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    ok, why = gpu_support()
    if ok:
        return "cuda"
    if device == "cuda":
        raise SpecError(f"--device cuda: {why}", "use --device cpu (or --device auto, which falls back to it)")
    if log and ("compute capability" in why or "float8" in why or "CUDA is not usable" in why):
        log(f"notice: {why}; casting on the CPU instead")
    return "cpu"


@dataclass
class SourceCheck:
    """Result of :func:`check_source`: the verified report, or ``noop`` (with ``message``) when SRC is BF16."""

    precision: str
    tensors: int
    noop: bool = False
    message: str = ""


def check_source(src: str | Path, dst: str | Path, strict: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> SourceCheck:
    """Every check on SRC that can fail, before anything is written: DST not inside SRC; config.json present and
    a DeepSeek-V3-family config (SpecError, exit 2); the index readable and every tensor the architecture
    predicts present in its shard with the right dtype and shape, shards complete (RuntimeFailure, exit 1);
    recorded checksums (``.dsv3ctl/checksums.json``) match (exit 1); the checkpoint is FP8. A BF16 source is a
    no-op (``noop``), or SpecError with ``strict``."""
    from dsv3ctl.core.checkpoint import load_checksums, verify_checkpoint

    s, d = Path(src).resolve(), Path(dst).resolve()
    if not s.is_dir():
        raise SpecError(f"SRC {src}: not a directory; pass the FP8 checkpoint directory")
    if s == d or s in d.parents:
        raise SpecError(f"DST {dst} is inside SRC {src}; choose a directory next to it, e.g. {s.name}-bf16")
    recorded = load_checksums(s) is not None
    rep = verify_checkpoint(s, checksums=recorded, progress=progress)
    if not rep.ok:
        probs = rep.missing + rep.extra + rep.malformed + rep.index_problems + rep.shard_problems + rep.checksum_problems
        what = (f"{len(rep.missing)} missing, {len(rep.extra)} extra, {len(rep.malformed)} malformed tensors, "
                f"{len(rep.index_problems) + len(rep.shard_problems)} index/shard problems, "
                f"{len(rep.checksum_problems)} checksum mismatches")
        fix = ("rerun `dsv3ctl weights download` (it deletes and fetches bad files again)" if rep.checksum_problems
               else f"run `dsv3ctl weights verify {src}` and download the reported files again")
        raise RuntimeFailure(f"SRC {src} does not verify ({what}; first: {'; '.join(probs[:3])}); nothing was written",
                             fix)
    if rep.precision == "fp8":
        return SourceCheck("fp8", rep.found_tensors)
    msg = f"SRC {src} is already a {rep.precision} checkpoint ({rep.found_tensors} tensors): nothing to cast"
    if strict or rep.precision != "bf16":
        raise SpecError(msg, "pass the FP8 checkpoint as SRC" + ("" if strict else "; a BF16 one is served as is"))
    return SourceCheck(rep.precision, rep.found_tensors, noop=True,
                       message=msg + f"; serve or convert {src} directly")


def worker_bytes(device: str, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Host memory of one cast worker, in bytes: CPU 5 x ``chunk_bytes`` (input + two BF16 output buffers) + the
    index scratch; GPU the pinned staging of :class:`_GpuStaging` (input + :data:`GPU_OUT_BUFFERS` outputs).
    Plus 64 MiB per worker for headers, scales and the interpreter's own allocations."""
    if device == "cpu":
        per = 5 * chunk_bytes + (1 << 20)
    else:
        per = chunk_bytes + GPU_OUT_BUFFERS * max(2 * chunk_bytes, COPY_CHUNK)
    return per + (64 << 20)


def _auto_workers(device: str, chunk_bytes: int, log: Callable[[str], None] | None) -> int:
    """CPU: os.cpu_count() up to 8; GPU: 4; capped so that workers x :func:`worker_bytes` fit the memory budget
    (the smaller of MemAvailable and the cgroup limit: :func:`dsv3ctl.adapters.sysmem.budget`)."""
    from dsv3ctl.adapters.sysmem import budget

    want = min(os.cpu_count() or 1, 8) if device == "cpu" else 4
    b = budget()
    per = worker_bytes(device, chunk_bytes)
    if b.available and b.available // per < want:
        fits = max(1, int(b.available // per))
        if log:
            log(f"workers capped from {want} to {fits}: each needs about {per / (1 << 20):.0f} MiB, "
                f"{b.available / (1 << 30):.1f} GiB available ({b.source})")
        return fits
    return want


def cast_checkpoint(src: str | Path, dst: str | Path, device: str = "auto", workers: int = 0,
                    chunk_bytes: int = CHUNK_BYTES, checksums: bool = True, progress: Callable[[int, int], None] | None = None,
                    log: Callable[[str], None] | None = None, strict: bool = False,
                    hash_progress: Callable[[int, int], None] | None = None) -> CastResult:
    """Cast the FP8 checkpoint SRC into a BF16 checkpoint DST (see the module docstring).

    ``workers`` 0 = auto (:func:`_auto_workers`: CPU os.cpu_count() up to 8, GPU 4, capped by memory). ``checksums`` hashes every output shard
    while writing (sha256 into ``.dsv3ctl/checksums.json`` for ``verify --checksums``); off, the manifest
    keeps sizes only and the cast is faster on small CPUs. ``progress(done_bytes, total_bytes)`` counts input
    payload bytes. Returns a :class:`CastResult`. Raises SpecError for bad arguments, RuntimeFailure for
    corrupt input or I/O errors (finished shards stay; a rerun resumes).

    Before anything is written: :func:`resolve_device` (capability), :func:`check_source` (config, inventory,
    checksums, FP8; ``hash_progress(done, total)`` while hashing files not yet verified). A BF16 source returns at
    once with ``noop`` set (SpecError with ``strict``).
    """
    t0 = time.perf_counter()
    dev = resolve_device(device, log)
    if dev == "cpu":
        try:
            import ml_dtypes  # noqa: F401
            import numpy  # noqa: F401
        except ImportError:
            raise SpecError("the CPU cast needs numpy and ml_dtypes (pip install 'dsv3ctl[weights]')") from None
    chk = check_source(src, dst, strict=strict, progress=hash_progress)
    if chk.noop:
        if log:
            log(chk.message)
        return CastResult(str(Path(dst)), 0, 0, 0, 0, 0, time.perf_counter() - t0, dev, 0, noop=True,
                          message=chk.message)
    plan = plan_cast(src, dst)
    nworkers = workers or _auto_workers(dev, chunk_bytes, log)
    dst_p = plan.dst
    dst_p.mkdir(parents=True, exist_ok=True)
    for stray in dst_p.glob("." + "*" + PARTIAL_SUFFIX):
        stray.unlink(missing_ok=True)
    for stray in (dst_p / STATE_DIR).glob(".*.tmp") if (dst_p / STATE_DIR).is_dir() else []:
        stray.unlink(missing_ok=True)
    for stray in dst_p.glob(".*.tmp"):
        stray.unlink(missing_ok=True)
    manifest = _load_manifest(dst_p, plan.source_fingerprint)
    todo = [sp for sp in plan.shards if not _shard_done(dst_p, sp, manifest.get(sp.name))]
    keep = {sp.name for sp in plan.shards} - {sp.name for sp in todo}
    manifest = {k: v for k, v in manifest.items() if k in keep}
    idx = load_index(plan.src)
    get_scale = _scale_reader(plan, idx.weight_map)
    total_in = sum(t.src.nbytes for sp in todo for t in sp.tensors)
    done = [0]
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            done[0] += n
            if progress:
                progress(done[0], total_in)

    def one(sp: ShardPlan) -> None:
        size, digest = _cast_shard(plan, sp, get_scale, dev, chunk_bytes, tick, checksums)
        with lock:
            manifest[sp.name] = {"size": size, "sha256": digest}
            _write_manifest(dst_p, plan.source_fingerprint, manifest)
        if log:
            log(f"wrote {sp.name} ({size:,} bytes)")

    if log and keep:
        log(f"resuming: {len(keep)} of {len(plan.shards)} shards already done and verified")
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(nworkers, len(todo)))) as ex:
            futs = [ex.submit(one, sp) for sp in todo]
            errors = []
            for fu in futs:
                try:
                    fu.result()
                except BaseException as err:  # noqa: BLE001 - collect, then raise the first
                    errors.append(err)
            if errors:
                raise errors[0]
    _finish(plan, manifest)
    return CastResult(str(dst_p), len(plan.shards), len(todo), len(keep), total_in,
                      sum(sp.size for sp in todo), time.perf_counter() - t0, dev, nworkers)


def _finish(plan: CastPlan, manifest: dict[str, dict[str, Any]]) -> None:
    """Copy the small files, write config.json (no quantization_config), the index and checksums.json."""
    files: dict[str, dict[str, Any]] = {k: dict(v) for k, v in manifest.items()}
    for rel in plan.small_files:
        srcf, dstf = plan.src / rel, plan.dst / rel
        if rel == "config.json":
            cfg = json.loads(srcf.read_text(encoding="utf-8"))
            cfg.pop("quantization_config", None)
            cfg["torch_dtype"] = "bfloat16"
            atomic_write_text(dstf, json.dumps(cfg, indent=2) + "\n")
        else:
            dstf.parent.mkdir(parents=True, exist_ok=True)
            tmp = dstf.with_name("." + dstf.name + ".tmp")
            shutil.copyfile(srcf, tmp)
            os.replace(tmp, dstf)
        files[rel] = {"size": dstf.stat().st_size, "sha256": sha256_file(dstf)}
    index = {"metadata": {"total_size": plan.total_size}, "weight_map": plan.weight_map}
    text = json.dumps(index, indent=2) + "\n"
    atomic_write_text(plan.dst / INDEX_NAME, text)
    files[INDEX_NAME] = {"size": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    atomic_write_text(plan.dst / STATE_DIR / CHECKSUMS_NAME, checksums_doc(files, f"dsv3ctl weights cast-bf16 {plan.src}"))
