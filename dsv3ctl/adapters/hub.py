"""Hugging Face Hub adapter for `dsv3ctl weights download`: file metadata (sizes, LFS sha256) and the
transfer itself, both through huggingface_hub (``HfApi.model_info(files_metadata=True)``,
``snapshot_download``), which resumes interrupted files from its ``.incomplete`` temp files.

Token: ``HF_TOKEN`` (read by huggingface_hub itself) or a token file passed explicitly.
"""

from __future__ import annotations

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


def remote_files(repo: str, revision: str, token: str | None) -> tuple[list[RemoteFile], str]:
    """(files with size and LFS sha256, resolved commit sha) of ``repo`` at ``revision``.
    Raises RuntimeFailure on network/auth errors (message says which)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(token=token).model_info(repo, revision=revision, files_metadata=True)
    except RepositoryNotFoundError:
        raise RuntimeFailure(f"model.repo {repo!r}: not found on the hub (or gated: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise RuntimeFailure(f"model.revision {revision!r}: no such branch, tag or commit in {repo}") from None
    except (HfHubHTTPError, OSError) as err:
        raise RuntimeFailure(f"cannot reach the Hugging Face Hub for {repo}@{revision}: {err}") from None
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
    from huggingface_hub.errors import HfHubHTTPError

    try:
        p = snapshot_download(repo_id=repo, revision=revision, local_dir=str(out), allow_patterns=allow or None,
                              ignore_patterns=ignore or None, token=token, max_workers=workers)
    except (HfHubHTTPError, OSError) as err:
        raise RuntimeFailure(f"download of {repo}@{revision} interrupted: {err}; rerun the same command to "
                             "resume") from None
    return Path(p)
