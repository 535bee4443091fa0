"""Hugging Face Hub adapter for `dsv3ctl weights download`: file metadata (sizes, LFS sha256) and the
transfer itself, both through huggingface_hub's own functions, with dsv3ctl deciding what to (re)fetch.

How huggingface_hub 2.4.0 behaves (``huggingface_hub/file_download.py`` and ``_local_folder.py`` of the installed
2.4.0 wheel) and what that means here:

- ``hf_hub_download(local_dir=...)`` returns a local file without reading it when its download metadata
  (``<dir>/.cache/huggingface/download/<path>.metadata``: commit, etag, timestamp) records the requested commit
  (file_download.py:1342-1360) or the same etag (file_download.py:1431), so a shard with the right size and the
  wrong bytes is never fetched again by it: dsv3ctl deletes such a file *and* its metadata.
- It downloads into a process-unique ``<hash>.<etag>.<uuid8>.incomplete`` opened with ``"wb"``
  (file_download.py:2004-2046) and deletes it on failure, so a killed process leaves that file behind and no
  later run resumes it. dsv3ctl therefore transfers LFS files itself, with huggingface_hub's ``http_get``
  (file_download.py:334), which sends ``Range: bytes=<resume_size>-`` when ``resume_size > 0``
  (file_download.py:377-378, utils/_http.py:1199) and starts over when a server ignores the range
  (file_download.py:403-417), into one stable file per (path, etag): ``LocalDownloadFilePaths.incomplete_path``
  = ``<hash>.<etag>.incomplete`` (_local_folder.py:93). A leftover ``<hash>.<etag>.<uuid8>.incomplete`` of the
  same file is adopted (the largest) and the others are deleted and reported.
- The URL, etag and size come from ``get_hf_file_metadata`` (HEAD ``/<repo>/resolve/<commit>/<path>``;
  file_download.py:1618-1690): ``X-Linked-Etag`` (the LFS sha256) or ``ETag``, ``X-Linked-Size`` or
  ``Content-Length``, ``X-Repo-Commit``, and ``Location`` after a redirect; the authorization header is not sent to
  another host (file_download.py:1818-1822). After the transfer, dsv3ctl hashes the file, and only a matching file
  is renamed into place and gets huggingface_hub's download metadata (``write_download_metadata``,
  _local_folder.py:432), so ``hf_hub_download`` treats it as present.
- Small (non-LFS) files go through ``hf_hub_download`` unchanged.

Token: ``HF_TOKEN`` (read by huggingface_hub itself) or a token file passed explicitly.

Every hub call goes through :func:`_hub_errors`, the one place where huggingface_hub's and its HTTP
library's exceptions (``httpx``/``httpx2``/``requests`` transport errors, offline mode, HTTP errors)
become a RuntimeFailure naming the endpoint and the fix, never a traceback.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dsv3ctl.core.checkpoint import RemoteFile, forget_verified, record_verified, sha256_file, verify_checksums
from dsv3ctl.errors import RuntimeFailure, SpecError


def read_token(token_file: str | Path | None) -> str | None:
    """The token in ``token_file`` (first line, stripped), or None to let huggingface_hub use HF_TOKEN /
    its cached login. Raises SpecError when the file does not exist or is empty."""
    if not token_file:
        return None
    p = Path(token_file)
    if not p.is_file():
        raise SpecError(f"--token-file {p}: no such file; write the token there or set HF_TOKEN")
    tok = p.read_text(encoding="utf-8").strip().splitlines()
    if not tok or not tok[0].strip():
        raise SpecError(f"--token-file {p}: empty; put a Hugging Face access token on its first line")
    return tok[0].strip()


def endpoint() -> str:
    """The hub endpoint huggingface_hub talks to (``HF_ENDPOINT``, default https://huggingface.co)."""
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except Exception:  # noqa: BLE001 - only for messages
        import os

        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection/timeout exception classes of the HTTP libraries huggingface_hub may use."""
    out: list[type[BaseException]] = [OSError]
    for mod in ("httpx2", "httpx"):
        try:
            m = __import__(mod)
            out.append(m.TransportError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        out += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return tuple(out)


@contextmanager
def _hub_errors(what: str, resume_hint: bool = False) -> Iterator[None]:
    """Map hub failures raised inside the block to RuntimeFailure (exit 1) naming ``what``, the endpoint
    and the fix. Repository/revision errors are handled by the caller before this."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    ep = endpoint()
    again = "; rerun the same command to resume" if resume_hint else ""
    try:
        yield
    except OfflineModeIsEnabled:
        raise RuntimeFailure(f"{what}: HF_HUB_OFFLINE is set, so the Hugging Face Hub at {ep} is not contacted",
                             hint="unset HF_HUB_OFFLINE (or HF_HUB_OFFLINE=0) to download") from None
    except HfHubHTTPError as err:
        raise RuntimeFailure(f"{what}: the Hugging Face Hub at {ep} answered with an error: {_short(err)}{again}",
                             hint="check HF_TOKEN / --token-file and model.repo, model.revision") from None
    except _transport_errors() as err:
        raise RuntimeFailure(f"{what}: cannot reach the Hugging Face Hub at {ep}: {_short(err)}{again}",
                             hint="check the network (proxy: HTTPS_PROXY), set HF_ENDPOINT to a reachable mirror, "
                                  "or use an already downloaded checkpoint (HF_HUB_OFFLINE=1 and `dsv3ctl weights "
                                  "verify DIR`)") from None


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def remote_files(repo: str, revision: str, token: str | None) -> tuple[list[RemoteFile], str]:
    """(files with size and LFS sha256, resolved commit sha) of ``repo`` at ``revision``.
    Raises RuntimeFailure on network/auth errors (message says which)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        with _hub_errors(f"file list of {repo}@{revision}"):
            info = HfApi(token=token).model_info(repo, revision=revision, files_metadata=True)
    except RepositoryNotFoundError:
        raise RuntimeFailure(f"model.repo {repo!r}: not found on the hub at {endpoint()} (or gated: set HF_TOKEN)") \
            from None
    except RevisionNotFoundError:
        raise RuntimeFailure(f"model.revision {revision!r}: no such branch, tag or commit in {repo}") from None
    files = []
    for s in info.siblings or []:
        lfs: Any = getattr(s, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        files.append(RemoteFile(s.rfilename, int(s.size or 0), sha))
    return files, str(info.sha or revision)


@dataclass
class FetchResult:
    """What :func:`fetch` did: ``fetched`` files transferred (``resumed`` relpath -> bytes already on disk),
    ``refetched`` local files whose sha256 was wrong (deleted and fetched again), ``rejected`` files whose
    transfer did not match the hub's sha256 (deleted: the next run fetches them again), ``cleaned`` stray
    partial files removed (path, bytes)."""

    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    resumed: dict[str, int] = field(default_factory=dict)
    refetched: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    cleaned: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "cleaned": [list(c) for c in self.cleaned]}


Log = Callable[[str], None]


def _download_dir(out: Path) -> Path:
    return out / ".cache" / "huggingface" / "download"


def _tidy_partials(out: Path, files: list[RemoteFile], res: FetchResult, log: Log) -> None:
    """Keep one resumable partial per selected LFS file (the stable ``<hash>.<etag>.incomplete``, or the largest
    leftover ``<hash>.<etag>.<uuid8>.incomplete`` renamed to it); delete and report every other ``*.incomplete``
    and stray ``*.lock`` under ``.cache/huggingface/download``."""
    from huggingface_hub._local_folder import get_local_download_paths

    dl = _download_dir(out)
    if not dl.is_dir():
        return
    keep: set[Path] = set()
    for f in files:
        if not f.sha256:
            continue
        stable = get_local_download_paths(out, f.path).incomplete_path(f.sha256)
        prefix = stable.name[: -len(".incomplete")] + "."
        leftovers = sorted((p for p in stable.parent.glob(prefix + "*.incomplete") if p != stable),
                           key=lambda p: p.stat().st_size, reverse=True)
        if leftovers and (not stable.exists() or stable.stat().st_size < leftovers[0].stat().st_size):
            os.replace(leftovers[0], stable)
            log(f"{f.path}: resuming from a partial file of an earlier run ({stable.stat().st_size:,} bytes)")
        if stable.exists():
            keep.add(stable)
    for p in sorted(dl.rglob("*.incomplete")):
        if p not in keep:
            n = p.stat().st_size
            p.unlink(missing_ok=True)
            res.cleaned.append((str(p.relative_to(out)), n))
            log(f"removed stray partial file {p.relative_to(out)} ({n:,} bytes) left by an earlier run")
    for p in sorted(dl.rglob("*.lock")):
        p.unlink(missing_ok=True)


def _drop_local(out: Path, rel: str) -> None:
    """Delete a local file and huggingface_hub's download metadata for it (else it is never fetched again)."""
    from huggingface_hub._local_folder import get_local_download_paths

    paths = get_local_download_paths(out, rel)
    paths.file_path.unlink(missing_ok=True)
    paths.metadata_path.unlink(missing_ok=True)
    forget_verified(out, [rel])


def _fetch_lfs(repo: str, commit: str, f: RemoteFile, out: Path, token: str | None) -> tuple[int, bool]:
    """Transfer one LFS file into its stable partial file (resuming from its size), check its sha256, rename it
    into place and write huggingface_hub's download metadata. Returns (bytes that were already on disk,
    sha256 matched); a mismatching transfer is deleted."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub._local_folder import get_local_download_paths, write_download_metadata
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, f.path, revision=commit, endpoint=constants.ENDPOINT)
    meta = get_hf_file_metadata(url, token=token)
    if meta.etag and f.sha256 and meta.etag != f.sha256:
        raise RuntimeFailure(f"{f.path}: the hub's file listing says sha256 {f.sha256}, its download answers etag "
                             f"{meta.etag}; the revision changed while downloading? rerun to list it again")
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    location = meta.location or url
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # signed CDN URL (as huggingface_hub does, file_download.py:1820)
    paths = get_local_download_paths(out, f.path)
    part = paths.incomplete_path(f.sha256 or meta.etag or "noetag")
    with part.open("ab") as fh:
        have = fh.tell()
        if have > f.size:
            fh.truncate(0)
            fh.seek(0)
            have = 0
        http_get(location, fh, resume_size=have, headers=headers, expected_size=f.size, displayed_filename=f.path)
        fh.flush()
        os.fsync(fh.fileno())
    if f.sha256 and sha256_file(part) != f.sha256:
        part.unlink(missing_ok=True)
        return have, False
    paths.file_path.unlink(missing_ok=True)
    os.replace(part, paths.file_path)
    write_download_metadata(local_dir=out, filename=f.path, commit_hash=commit, etag=f.sha256 or meta.etag or "")
    if f.sha256:
        record_verified(out, {f.path: f.sha256})
    return have, True


def fetch(repo: str, commit: str, files: list[RemoteFile], out: Path, token: str | None, log: Log,
          progress: Callable[[int, int], None] | None = None, workers: int = 8) -> FetchResult:
    """Bring every file of ``files`` (from :func:`remote_files`, already filtered) into ``out`` at ``commit``.

    The manifest ``out/.dsv3ctl/checksums.json`` must already list them (the CLI writes it first). LFS files
    already present with the hub's size are checked against their sha256 (cached by size + mtime:
    :func:`dsv3ctl.core.checkpoint.verify_checksums`); a mismatch is deleted with its metadata and fetched again.
    Missing or partial LFS files are transferred with range requests from their last byte, ``workers`` (8, as
    huggingface_hub's ``snapshot_download`` default ``max_workers``, _snapshot_download.py:63) at a time. Raises
    RuntimeFailure (exit 1) for hub/network errors (rerun resumes)."""
    from huggingface_hub import hf_hub_download

    res = FetchResult()
    out.mkdir(parents=True, exist_ok=True)
    lfs = [f for f in files if f.sha256]
    present = [f.path for f in lfs if (out / f.path).is_file() and (out / f.path).stat().st_size == f.size]
    _tidy_partials(out, [f for f in lfs if f.path not in present], res, log)  # a complete file needs no partial
    if present:
        chk = verify_checksums(out, progress=progress, only=present)
        for rel in chk.bad:
            log(f"{rel}: sha256 does not match the hub's; deleted, fetching it again")
            _drop_local(out, rel)
            res.refetched.append(rel)
        res.present = [r for r in present if r not in chk.bad]
    lock = threading.Lock()

    def one(f: RemoteFile) -> None:
        if not f.sha256:
            hf_hub_download(repo_id=repo, filename=f.path, revision=commit, local_dir=str(out), token=token)
            return
        have, ok = _fetch_lfs(repo, commit, f, out, token)
        with lock:
            res.fetched.append(f.path)
            if have:
                res.resumed[f.path] = have
            if not ok:
                res.rejected.append(f.path)
        if have:
            log(f"{f.path}: resumed at byte {have:,} of {f.size:,}")
        if not ok:
            log(f"{f.path}: the transferred bytes do not match the hub's sha256 {f.sha256}; deleted, the next "
                "run fetches it again")

    todo = [f for f in files if f.path not in res.present]
    with _hub_errors(f"download of {repo}@{commit[:12]} into {out}", resume_hint=True):
        small = [f for f in todo if not f.sha256]
        for f in small:  # config, tokenizer, code: small, one at a time
            one(f)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
            for fu in [ex.submit(one, f) for f in todo if f.sha256]:
                fu.result()
    res.fetched.sort()
    res.rejected.sort()
    return res
