"""Hugging Face checkpoint logic for DeepSeek-V3: safetensors headers, the expected tensor inventory,
verification, download planning, resume decisions and disk-space math.

Everything here is deterministic and local: it reads only small local files (``config.json``, the
index, the 8-byte length + JSON header of each shard) and never the tensor payload, except
:func:`sha256_file` for ``--checksums``.

Facts and sources:
- safetensors layout: 8-byte little-endian header length N, N bytes of JSON
  ``{"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end]}}`` with offsets
  relative to byte 8+N (huggingface/safetensors README, "Format").
- The FP8 checkpoint (deepseek-ai/DeepSeek-V3 ``README_WEIGHTS.md`` @ 9b4e9788): float8_e4m3fn weights
  with ``<name>_scale_inv`` float32 of shape ``[ceil(out/128), ceil(in/128)]``; 163 shards indexed by
  ``model.safetensors.index.json`` ``{"metadata": {"total_size"}, "weight_map": {name: shard}}``; a
  scale may sit in another shard than its weight. The inventory itself comes from
  :meth:`dsv3ctl.core.model.DeepSeekV3Config.tensors` (91,991 tensors for the full release).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv3ctl.core.model import DTYPE_BYTES, DeepSeekV3Config, TensorSpec
from dsv3ctl.errors import RuntimeFailure, SpecError

INDEX_NAME = "model.safetensors.index.json"
STATE_DIR = ".dsv3ctl"  # per-checkpoint bookkeeping directory (manifests, fingerprints)
CHECKSUMS_NAME = "checksums.json"  # STATE_DIR/CHECKSUMS_NAME: {"files": {relpath: {"size", "sha256"}}}
VERIFIED_NAME = "verified.json"  # STATE_DIR/VERIFIED_NAME: {"files": {relpath: {"size", "mtime_ns", "sha256"}}}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors refuses headers over 100 MB
SAFETENSORS_DTYPE_BYTES: dict[str, int] = {
    **DTYPE_BYTES, "F8_E5M2": 1, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
SMALL_FILE_PATTERNS = ("*.json", "*.py", "*.model", "*.txt", "*.md", "*.jinja", "LICENSE*")


# --------------------------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in a safetensors header. ``begin``/``end`` are byte offsets relative to the data start."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class ShardHeader:
    """A parsed shard header: ``data_start`` = 8 + header length; ``expected_size`` the complete file size."""

    path: Path
    header_len: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    problems: list[str] = field(default_factory=list)

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def expected_size(self) -> int:
        return self.data_start + max((t.end for t in self.tensors.values()), default=0)


def parse_header(raw: bytes, path: Path) -> ShardHeader:
    """Parse the JSON header bytes of a shard; structural problems (bad offsets, sizes that disagree with
    dtype x shape, overlaps, gaps) go to ``problems`` by tensor name. Raises RuntimeFailure on bad JSON."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RuntimeFailure(f"{path}: safetensors header is not valid JSON ({err}); the file is corrupt, "
                             "delete it and download it again") from None
    if not isinstance(doc, dict):
        raise RuntimeFailure(f"{path}: safetensors header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    tensors: dict[str, TensorEntry] = {}
    problems: list[str] = []
    for name, d in doc.items():
        try:
            dtype = str(d["dtype"])
            shape = tuple(int(x) for x in d["shape"])
            begin, end = (int(x) for x in d["data_offsets"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{name}: malformed header entry {d!r}")
            continue
        e = TensorEntry(name, dtype, shape, begin, end)
        if dtype not in SAFETENSORS_DTYPE_BYTES:
            problems.append(f"{name}: unknown dtype {dtype}")
        elif e.numel * SAFETENSORS_DTYPE_BYTES[dtype] != end - begin:
            problems.append(f"{name}: {dtype}{list(shape)} needs {e.numel * SAFETENSORS_DTYPE_BYTES[dtype]} bytes, "
                            f"header gives {end - begin}")
        tensors[name] = e
    pos = 0
    for e in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if e.begin != pos:
            problems.append(f"{e.name}: data_offsets start at {e.begin}, expected {pos} (overlap or gap)")
        pos = max(pos, e.end)
    return ShardHeader(path, len(raw), tensors, {str(k): str(v) for k, v in meta.items()}, problems)


def read_header(path: str | Path) -> ShardHeader:
    """Read and parse the header of one ``.safetensors`` file (reads 8 + N bytes only).

    Raises RuntimeFailure when the file is missing, shorter than its header or the header is corrupt.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise RuntimeFailure(f"{p}: {len(head)} bytes, too short for a safetensors file (truncated download?)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise RuntimeFailure(f"{p}: header length {n} exceeds 100 MB; not a safetensors file")
            raw = f.read(n)
    except FileNotFoundError:
        raise RuntimeFailure(f"{p}: shard file missing") from None
    if len(raw) != n:
        raise RuntimeFailure(f"{p}: truncated inside its header ({len(raw)} of {n} bytes)")
    return parse_header(raw, p)


def encode_header(entries: Iterable[tuple[str, str, tuple[int, ...]]],
                  metadata: dict[str, str] | None = None) -> tuple[bytes, list[TensorEntry]]:
    """Lay out tensors back to back in the given order and return (8-byte length + JSON header padded
    with spaces to a multiple of 8, the entries with offsets). Deterministic: same input, same bytes."""
    doc: dict[str, Any] = {}
    if metadata is not None:
        doc["__metadata__"] = metadata
    out: list[TensorEntry] = []
    pos = 0
    for name, dtype, shape in entries:
        n = SAFETENSORS_DTYPE_BYTES[dtype]
        for d in shape:
            n *= d
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        out.append(TensorEntry(name, dtype, tuple(shape), pos, pos + n))
        pos += n
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, out


# --------------------------------------------------------------------------------------- index


@dataclass
class Index:
    """``model.safetensors.index.json``: ``weight_map`` name -> shard file, ``total_size`` (None if absent)."""

    weight_map: dict[str, str]
    total_size: int | None
    single_file: bool = False

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def load_index(ckpt: str | Path) -> Index:
    """Read the index of a checkpoint directory; a lone ``model.safetensors`` is accepted as one shard.

    Raises RuntimeFailure when neither exists or the index is not valid JSON with a ``weight_map``.
    """
    d = Path(ckpt)
    p = d / INDEX_NAME
    if not p.is_file():
        single = d / "model.safetensors"
        if single.is_file():
            h = read_header(single)
            return Index({n: single.name for n in h.tensors}, None, single_file=True)
        raise RuntimeFailure(f"{d}: no {INDEX_NAME} (and no model.safetensors); is this a Hugging Face checkpoint "
                             "directory? Download one with `dsv3ctl weights download --out DIR`")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        wm = doc["weight_map"]
        assert isinstance(wm, dict)
    except (json.JSONDecodeError, KeyError, AssertionError, UnicodeDecodeError) as err:
        raise RuntimeFailure(f"{p}: not a safetensors index ({type(err).__name__}: {err})") from None
    total = (doc.get("metadata") or {}).get("total_size")
    return Index({str(k): str(v) for k, v in wm.items()}, int(total) if total is not None else None)


# --------------------------------------------------------------------------------------- inventory


def detect_precision(cfg: DeepSeekV3Config, index: Index, headers: dict[str, ShardHeader]) -> str:
    """fp8 when config.json declares ``quantization_config.quant_method: fp8``, else bf16/fp16 from the
    dtype of layer 0's o_proj weight (bf16 when it cannot be found)."""
    if cfg.fp8:
        return "fp8"
    probe = "model.layers.0.self_attn.o_proj.weight"
    shard = index.weight_map.get(probe)
    if shard and shard in headers and probe in headers[shard].tensors:
        return {"F16": "fp16"}.get(headers[shard].tensors[probe].dtype, "bf16")
    return "bf16"


def expected_inventory(cfg: DeepSeekV3Config, precision: str) -> dict[str, TensorSpec]:
    """Every tensor the architecture predicts (MTP layers included when config.json has them)."""
    return {t.name: t for t in cfg.tensors(precision, include_mtp=cfg.mtp_layers > 0)}


# --------------------------------------------------------------------------------------- verify


@dataclass
class VerifyReport:
    """Result of :func:`verify_checkpoint`. ``ok`` is True when every list is empty."""

    path: str
    precision: str = "?"
    expected_tensors: int = 0
    found_tensors: int = 0
    shards: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    index_problems: list[str] = field(default_factory=list)
    shard_problems: list[str] = field(default_factory=list)
    checksum_problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checksums_checked: int = 0
    checksums_cached: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.malformed or self.index_problems or self.shard_problems
                    or self.checksum_problems)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d


def verify_checkpoint(ckpt: str | Path, checksums: bool = False, cfg: DeepSeekV3Config | None = None,
                      progress: HashProgress | None = None) -> VerifyReport:
    """Check a checkpoint directory offline.

    - the index and the shard headers agree (every indexed tensor is in its shard, every header tensor
      is indexed, ``metadata.total_size`` equals the payload bytes);
    - every shard is complete (file size = 8 + header length + last data offset) and well formed;
    - every tensor the architecture predicts (from the directory's config.json, or ``cfg``) is present
      with the expected dtype and shape, and nothing else (by name);
    - with ``checksums``: sha256 and size of every file listed in ``.dsv3ctl/checksums.json`` (written by
      ``weights download`` from the hub's LFS metadata, and by ``weights cast-bf16``), through
      :func:`verify_checksums` (a file whose size and mtime are unchanged since it last verified is not
      hashed again); ``progress(done_bytes, total_bytes)`` counts the bytes hashed.

    Raises SpecError when config.json is missing or not DeepSeek-V3, RuntimeFailure when there is no index.
    """
    d = Path(ckpt)
    if not d.is_dir():
        raise SpecError(f"{d}: not a directory; pass the checkpoint directory (the one with config.json)")
    cfg = cfg or DeepSeekV3Config.load(d)
    idx = load_index(d)
    rep = VerifyReport(str(d))
    headers: dict[str, ShardHeader] = {}
    for shard in idx.shards:
        sp = d / shard
        try:
            h = read_header(sp)
        except RuntimeFailure as err:
            rep.shard_problems.append(f"{shard}: {err.message}")
            continue
        headers[shard] = h
        rep.malformed.extend(f"{shard}: {p}" for p in h.problems)
        size = sp.stat().st_size
        if size != h.expected_size:
            rep.shard_problems.append(f"{shard}: {size} bytes on disk, header says {h.expected_size} "
                                      f"({'truncated' if size < h.expected_size else 'trailing bytes'})")
    rep.shards = len(idx.shards)
    # index vs headers
    present: dict[str, TensorEntry] = {}  # the entry in the shard the index points to
    for name, shard in idx.weight_map.items():
        hdr = headers.get(shard)
        if hdr is None:
            continue
        if name not in hdr.tensors:
            rep.index_problems.append(f"{name}: indexed in {shard} but not in its header")
        else:
            present[name] = hdr.tensors[name]
    stray: dict[str, TensorEntry] = {}
    for shard, h in headers.items():
        for name, e in h.tensors.items():
            if idx.weight_map.get(name) != shard:
                where = idx.weight_map.get(name)
                rep.index_problems.append(f"{name}: in {shard}'s header but the index says "
                                          f"{where if where else 'nothing (not indexed)'}")
                stray.setdefault(name, e)
    payload = sum(e.nbytes for h in headers.values() for e in h.tensors.values())
    rep.bytes = payload
    if idx.total_size is None:
        if not idx.single_file:
            rep.warnings.append(f"{INDEX_NAME} has no metadata.total_size (DeepSeek's fp8_cast_bf16.py drops it)")
    elif idx.total_size != payload and not rep.shard_problems:
        rep.index_problems.append(f"metadata.total_size={idx.total_size} but the shards hold {payload} payload bytes")
    # inventory
    rep.precision = detect_precision(cfg, idx, headers)
    expected = expected_inventory(cfg, rep.precision)
    rep.expected_tensors = len(expected)
    rep.found_tensors = len(present)
    seen = set(present) | set(idx.weight_map) | set(stray)
    rep.missing = [n for n in expected if n not in seen]
    rep.extra = sorted(n for n in seen if n not in expected)
    for name, spec in expected.items():
        entry = present.get(name)
        if entry is not None and (entry.dtype != spec.dtype or entry.shape != spec.shape):
            rep.malformed.append(f"{name}: {entry.dtype}{list(entry.shape)}, expected {spec.dtype}{list(spec.shape)}")
    if checksums:
        res = verify_checksums(d, progress=progress)
        rep.checksums_checked = res.checked
        rep.checksums_cached = res.cached
        rep.checksum_problems.extend(res.problems)
    return rep


# --------------------------------------------------------------------------------------- manifests


def sha256_file(path: str | Path, chunk: int = 8 * 1024 * 1024, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks; ``progress(n)`` after each chunk of ``n`` bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while b := f.read(chunk):
            h.update(b)
            if progress:
                progress(len(b))
    return h.hexdigest()


def load_checksums(ckpt: str | Path) -> dict[str, dict[str, Any]] | None:
    """The ``files`` map of ``.dsv3ctl/checksums.json`` (relpath -> {size, sha256}), or None if absent."""
    p = Path(ckpt) / STATE_DIR / CHECKSUMS_NAME
    if not p.is_file():
        return None
    try:
        return dict(json.loads(p.read_text(encoding="utf-8"))["files"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RuntimeFailure(f"{p}: corrupt checksum manifest ({err}); delete it and rerun") from None


def checksums_doc(files: dict[str, dict[str, Any]], source: str) -> str:
    """Serialize a checksum manifest (sorted keys, stable bytes)."""
    return json.dumps({"source": source, "files": files}, indent=1, sort_keys=True) + "\n"


HashProgress = Callable[[int, int], None]


@dataclass
class ChecksumResult:
    """Result of :func:`verify_checksums`: ``checked`` files whose sha256 matches the manifest (``cached`` of
    them taken from the verification cache without hashing), ``hashed_bytes`` read, ``problems`` one line per
    file, ``bad`` the relpaths whose content is wrong (size or sha256), ``manifest`` False when there is none."""

    checked: int = 0
    cached: int = 0
    hashed_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    manifest: bool = True

    @property
    def ok(self) -> bool:
        return self.manifest and not self.problems


def _stat_key(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def load_verified(ckpt: str | Path) -> dict[str, dict[str, Any]]:
    """The verification cache ``.dsv3ctl/verified.json`` (relpath -> {size, mtime_ns, sha256}); {} when absent
    or unreadable (the cache only saves work: losing it means hashing again)."""
    p = Path(ckpt) / STATE_DIR / VERIFIED_NAME
    try:
        return dict(json.loads(p.read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def record_verified(ckpt: str | Path, entries: dict[str, str]) -> None:
    """Add ``relpath -> sha256`` of files just hashed to the verification cache, keyed by their current size and
    mtime (so a later change of either invalidates the entry). Atomic rewrite."""
    from dsv3ctl.fsutil import atomic_write_text

    d = Path(ckpt)
    cache = load_verified(d)
    for rel, sha in entries.items():
        size, mtime = _stat_key(d / rel)
        cache[rel] = {"size": size, "mtime_ns": mtime, "sha256": sha}
    atomic_write_text(d / STATE_DIR / VERIFIED_NAME, json.dumps({"files": cache}, indent=1, sort_keys=True) + "\n")


def forget_verified(ckpt: str | Path, rels: Iterable[str]) -> None:
    """Drop entries from the verification cache (a file deleted or replaced)."""
    from dsv3ctl.fsutil import atomic_write_text

    d = Path(ckpt)
    cache = load_verified(d)
    if any(r in cache for r in rels):
        for r in rels:
            cache.pop(r, None)
        atomic_write_text(d / STATE_DIR / VERIFIED_NAME, json.dumps({"files": cache}, indent=1, sort_keys=True) + "\n")


def verify_checksums(ckpt: str | Path, progress: HashProgress | None = None,
                     only: Iterable[str] | None = None) -> ChecksumResult:
    """Check every file of ``.dsv3ctl/checksums.json`` (or the relpaths in ``only``) against its recorded size and
    sha256. A file whose (size, mtime_ns) equals a cache entry recording the manifest's sha256 counts as checked
    without being read; every other file is hashed (``progress(done, total)`` in bytes) and, when it matches,
    cached. ``manifest`` is False (and ``problems`` says so) when there is no manifest."""
    d = Path(ckpt)
    res = ChecksumResult()
    man = load_checksums(d)
    if man is None:
        res.manifest = False
        res.problems.append(f"no {STATE_DIR}/{CHECKSUMS_NAME} in {d}: it is written by `dsv3ctl weights download` and "
                            "`dsv3ctl weights cast-bf16`; run without --checksums, or download the checkpoint again")
        return res
    want_files = sorted(man.items()) if only is None else [(r, man[r]) for r in sorted(set(only)) if r in man]
    cache = load_verified(d)
    todo: list[tuple[str, Path, str]] = []
    for rel, want in want_files:
        fp = d / rel
        if not fp.is_file():
            res.problems.append(f"{rel}: listed in the manifest but missing")
            res.bad.append(rel)
            continue
        size, mtime = _stat_key(fp)
        if want.get("size") is not None and size != int(want["size"]):
            res.problems.append(f"{rel}: size {size}, manifest says {want['size']}")
            res.bad.append(rel)
            continue
        sha = want.get("sha256")
        if not sha:
            continue
        hit = cache.get(rel)
        if hit and hit.get("size") == size and hit.get("mtime_ns") == mtime and hit.get("sha256") == sha:
            res.checked += 1
            res.cached += 1
            continue
        todo.append((rel, fp, str(sha)))
    total = sum((fp.stat().st_size for _r, fp, _s in todo), 0)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    good: dict[str, str] = {}
    for rel, fp, sha in todo:
        got = sha256_file(fp, progress=tick)
        res.hashed_bytes += fp.stat().st_size
        if got != sha:
            res.problems.append(f"{rel}: sha256 {got}, manifest says {sha}")
            res.bad.append(rel)
        else:
            res.checked += 1
            good[rel] = got
    if good:
        record_verified(d, good)
    return res


# --------------------------------------------------------------------------------------- download planning


@dataclass(frozen=True)
class RemoteFile:
    """A file of a hub repo at a revision: ``size`` bytes and ``sha256`` (LFS files only, else None)."""

    path: str
    size: int
    sha256: str | None = None


@dataclass
class DownloadPlan:
    """What ``weights download`` will do. ``fetch`` = files to transfer (absent or incomplete locally),
    ``complete`` = files already present with the right size, ``unmatched_patterns`` = allow/ignore
    patterns that match nothing in the repo (a warning)."""

    files: list[RemoteFile]
    fetch: list[RemoteFile]
    complete: list[RemoteFile]
    unmatched_patterns: list[str]
    download_bytes: int
    cast_bytes: int
    required_bytes: int
    free_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def fits(self) -> bool:
        return self.free_bytes is None or self.required_bytes <= self.free_bytes


def _matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def select_files(files: list[RemoteFile], allow: list[str], ignore: list[str]) -> tuple[list[RemoteFile], list[str]]:
    """Apply huggingface_hub's allow/ignore semantics (fnmatch on the repo path; no allow list = all) and
    return (selected files, patterns that match no file in the repo)."""
    selected = [f for f in files if (not allow or _matches(f.path, allow)) and not _matches(f.path, ignore)]
    unmatched = [p for p in [*allow, *ignore] if not any(fnmatch.fnmatch(f.path, p) for f in files)]
    return selected, unmatched


def bf16_size_from_fp8(files: list[RemoteFile], cfg: DeepSeekV3Config | None = None) -> int:
    """Bytes of the BF16 cast of an FP8 checkpoint: the model's BF16 payload (from the architecture)
    plus the small files. ``cfg`` defaults to the real DeepSeek-V3 (1,368 GB for the full release)."""
    cfg = cfg or DeepSeekV3Config.default()
    small = sum(f.size for f in files if not f.path.endswith(".safetensors"))
    return cfg.checkpoint_bytes("bf16") + small


def plan_download(files: list[RemoteFile], allow: list[str], ignore: list[str], local_dir: str | Path,
                  cast_planned: bool = False, free_bytes: int | None = None,
                  cfg: DeepSeekV3Config | None = None, margin_bytes: int = 1 << 30) -> DownloadPlan:
    """Decide what to transfer and how much disk it needs.

    A local file counts as complete when its size equals the hub's (sha256 is checked by the verify step
    at the end); anything else is fetched again (huggingface_hub resumes its ``.incomplete`` file).
    Required bytes = the bytes still to download + ``margin_bytes`` (1 GiB) + the BF16 cast's size when
    ``cast_planned``.
    """
    sel, unmatched = select_files(files, allow, ignore)
    d = Path(local_dir)
    fetch: list[RemoteFile] = []
    complete: list[RemoteFile] = []
    for f in sel:
        lp = d / f.path
        (complete if lp.is_file() and lp.stat().st_size == f.size else fetch).append(f)
    need = sum(f.size for f in fetch)
    cast = bf16_size_from_fp8(sel, cfg) if cast_planned else 0
    return DownloadPlan(sel, fetch, complete, unmatched, need, cast, need + cast + margin_bytes, free_bytes)


def stale_partials(local_dir: str | Path) -> list[Path]:
    """Leftovers of interrupted transfers: ``.cache/huggingface/download/**/*.incomplete`` (partial files:
    ``weights download`` resumes the one of each file it still needs and removes the others) and ``*.lock``
    files, and dsv3ctl's own ``*.tmp`` temp files."""
    d = Path(local_dir)
    out: list[Path] = []
    cache = d / ".cache" / "huggingface" / "download"
    if cache.is_dir():
        out += sorted(cache.rglob("*.incomplete")) + sorted(cache.rglob("*.lock"))
    if d.is_dir():
        out += sorted(p for p in d.glob(".*.tmp") if p.is_file())
    return out


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as the hub shows sizes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover
