"""Content-addressed artifact directories: where the prepare step writes engines, the TensorRT-LLM checkpoint
and the Triton model repository, and where the serving pods read them.

Layout on the models volume (``deploy.storage``)::

    <mount_path>/<artifacts_dir>/<fingerprint>/engines            (engine mode; launch.engine_dir)
    <mount_path>/<artifacts_dir>/<fingerprint>/trtllm_ckpt        (engine mode; launch.trtllm_checkpoint_dir)
    <mount_path>/<artifacts_dir>/<fingerprint>/triton_model_repo  (launch.model_repository)
    <mount_path>/<artifacts_dir>/<fingerprint>/.ready             (written last by the prepare Job)

The Hugging Face checkpoint (``launch.model_dir``) stays where it is: it depends on the model only and is
shared by every fingerprint. The fingerprint (16 hex digits of a SHA-256) covers what determines the
artifacts: ``model``, ``serving`` (except ``load_timeout_s``, a probe budget), ``parallelism``, ``hardware``
and the image (repository, resolved tag, source commits). An upgrade that changes any of them writes a new
directory while the running group keeps reading the old one; a rollback (same spec as before) finds the old
directory and its ``.ready`` marker intact. Pure: spec in, strings out.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from dsv3ctl.core.spec import Spec

#: Where the pods find the engines when ``launch.engine_dir`` is empty (= adapters.prepare.DEFAULT_ENGINE_DIR).
DEFAULT_ENGINE_SUBDIR = "engines"
READY_MARKER = ".ready"
#: serving keys that change no artifact (a probe budget), left out of the fingerprint
_NOT_ARTIFACT = frozenset({"load_timeout_s"})


def fingerprint(spec: Spec, image_ref: str) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of what determines the artifacts (see module doc).

    ``image_ref`` is the resolved ``repository:tag`` the pods run (:func:`dsv3ctl.render.values.image_tag`)."""
    img = spec.image
    key: dict[str, Any] = {
        "model": spec.model.model_dump(mode="json"),
        "serving": {k: v for k, v in spec.serving.model_dump(mode="json").items() if k not in _NOT_ARTIFACT},
        "parallelism": spec.parallelism.model_dump(mode="json"),
        "hardware": spec.hardware.model_dump(mode="json"),
        "image": {"ref": image_ref, "trtllm_commit": img.trtllm_commit, "backend_commit": img.backend_commit,
                  "triton_tag": img.triton_tag, "engine_base_tag": img.engine_base_tag},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def artifacts_root(spec: Spec) -> str:
    """``<mount_path>/<artifacts_dir>`` (no trailing slash); empty when ``deploy.storage.artifacts_dir`` is empty."""
    st = spec.deploy.storage
    if not st.artifacts_dir:
        return ""
    return f"{st.mount_path.rstrip('/')}/{st.artifacts_dir.strip('/')}"


def artifact_dir(spec: Spec, fp: str) -> str:
    """The directory of fingerprint ``fp`` (empty when artifacts are not content-addressed)."""
    root = artifacts_root(spec)
    return f"{root}/{fp}" if root else ""


def relocate(path: str, mount_path: str, target: str) -> str:
    """``path`` moved from under ``mount_path`` to under ``target`` (same relative part); paths outside
    ``mount_path`` are returned unchanged. ``/models/triton_model_repo`` -> ``/models/artifacts/<fp>/triton_model_repo``."""
    mount = mount_path.rstrip("/") + "/"
    if not path.startswith(mount):
        return path
    return f"{target}/{path[len(mount):]}"


def artifact_paths(spec: Spec, fp: str) -> dict[str, str]:
    """The ``launch.*`` paths that live in the artifact directory of ``fp``: ``model_repository``,
    ``engine_dir`` (filled in when empty) and ``trtllm_checkpoint_dir``. Empty dict when
    ``deploy.storage.artifacts_dir`` is empty (the spec's fixed paths are used as they are)."""
    target = artifact_dir(spec, fp)
    if not target:
        return {}
    lc, mount = spec.launch, spec.deploy.storage.mount_path
    engine = lc.engine_dir or f"{mount.rstrip('/')}/{DEFAULT_ENGINE_SUBDIR}"
    root = artifacts_root(spec)

    def move(path: str) -> str:
        # a path already in some fingerprint's directory (rendered values used as a spec) moves, not nests
        m = re.fullmatch(re.escape(root) + r"/[0-9a-f]{16}/(.+)", path)
        return f"{target}/{m.group(1)}" if m else relocate(path, mount, target)

    return {"model_repository": move(lc.model_repository), "engine_dir": move(engine),
            "trtllm_checkpoint_dir": move(lc.trtllm_checkpoint_dir)}
