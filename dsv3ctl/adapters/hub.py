"""Hugging Face Hub adapter for `dsv3ctl weights download`: file metadata (sizes, LFS sha256) and the
transfer itself, both through huggingface_hub (``HfApi.model_info(files_metadata=True)``,
``snapshot_download``), which resumes interrupted files from its ``.incomplete`` temp files.

Token: ``HF_TOKEN`` (read by huggingface_hub itself) or a token file passed explicitly.

Every hub call goes through :func:`_hub_errors`, the one place where huggingface_hub's and its HTTP
library's exceptions (``httpx``/``httpx2``/``requests`` transport errors, offline mode, HTTP errors)
become a RuntimeFailure naming the endpoint and the fix, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dsv3ctl.core.checkpoint import RemoteFile
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


def snapshot(repo: str, revision: str, out: Path, allow: list[str], ignore: list[str], token: str | None,
             workers: int = 8) -> Path:
    """Run huggingface_hub's snapshot_download into ``out`` (progress bars are huggingface_hub's)."""
    from huggingface_hub import snapshot_download

    with _hub_errors(f"download of {repo}@{revision} into {out}", resume_hint=True):
        p = snapshot_download(repo_id=repo, revision=revision, local_dir=str(out), allow_patterns=allow or None,
                              ignore_patterns=ignore or None, token=token, max_workers=workers)
    return Path(p)
