"""The image build command (pure): builder argv lists from the spec's ``image`` section.

``docker/Dockerfile`` has two targets: ``llmapi`` (NGC ``tritonserver:<triton_tag>-trtllm-python-py3``,
TensorRT-LLM >= 1.0, PyTorch backend and ``trtllm-serve``) and ``engine`` (TensorRT-LLM built from the
``deepseek`` preview branch at ``trtllm_commit`` plus the Triton TensorRT-LLM backend built against that same
source: engines only load in the runtime that built them; reference section 0). Every pin is a build
argument; the Dockerfile records them as OCI labels (``org.opencontainers.image.*`` and ``ai.dsv3ctl.*``).

A third target, ``test``, is for local tests only (Debian 12 ``TEST_BASE``, Debian's OpenMPI and OpenSSH,
dsv3ctl through the same install script, a tritonserver TEST DOUBLE; no model): ``--test-base`` sets
``TEST_BASE`` (e.g. ``oci-archive:/path/base.tar``, what tools/test-image.sh passes).

Builders: ``docker buildx build`` (``--push`` pushes from the build, else ``--load``); ``podman build`` then
``podman push``; ``buildah build`` then ``buildah push``. The flags used are those builders' documented
``build``/``push`` options (``--target``, ``--file``, ``--tag``, ``--build-arg``, ``--platform``).
buildah also gets ``--format docker``: ``buildah build --help`` (buildah 1.28.2, Debian 12) lists
``--format format of the built image's manifest and metadata ... (default "oci")``, and a build in the
OCI format ignores the Dockerfile's ``SHELL ["/bin/bash", "-o", "pipefail", "-c"]`` (buildah prints
"SHELL is not supported for OCI image format, [...] will be ignored. Must use `docker` format"), so
without it a failing command inside a pipe would not fail the build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dsv3ctl import __version__
from dsv3ctl.errors import SpecError

TARGETS = ("llmapi", "engine", "test")
#: the targets that serve a model (``test`` runs a TEST DOUBLE in place of tritonserver)
SERVING_TARGETS = ("llmapi", "engine")
BUILDERS = ("docker", "podman", "buildah")
DOCKERFILE = "docker/Dockerfile"


@dataclass(frozen=True)
class BuildPlan:
    builder: str
    image: str
    commands: list[list[str]]


def is_sha(ref: str) -> bool:
    """True for a hex commit SHA (7-40 digits), False for a branch name such as ``deepseek``."""
    return 7 <= len(ref) <= 40 and all(c in "0123456789abcdef" for c in ref)


def build_args(spec, vcs_ref: str = "", trtllm_commit: str = "") -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The Dockerfile's build arguments from ``spec.image`` (names as in docker/Dockerfile).
    ``trtllm_commit``: the SHA a branch ``image.trtllm_commit`` was resolved to (it becomes the
    ``ai.dsv3ctl.trtllm-commit`` label); empty = ``image.trtllm_commit`` as written."""
    im = spec.image
    args = {
        "TRITON_TAG": im.triton_tag,
        "ENGINE_BASE_TAG": im.engine_base_tag,
        "TRTLLM_REPO": im.trtllm_repo,
        "TRTLLM_COMMIT": trtllm_commit or im.trtllm_commit,
        "BACKEND_REPO": im.backend_repo,
        "BACKEND_COMMIT": im.backend_commit,
        "DSV3CTL_VERSION": __version__,
    }
    if vcs_ref:
        args["VCS_REF"] = vcs_ref
    return args


#: a tag of an image reference: distribution/reference ``regexp.go`` @ 00a09fa3, ``tag = `[\w][\w.-]{0,127}```
#: (Go's ``\w`` is ASCII-only, hence re.ASCII); the reference is ``name(:tag)?(@digest)?``, a registry's
#: ``host:port`` only before the first ``/``
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)


def split_ref(value: str) -> tuple[str | None, str | None]:
    """``--tag`` as ``(repository, tag)``: a plain tag (``0.1.0-engine``) gives ``(None, tag)``; a full
    reference (``registry.example.com/dsv3ctl:0.1.0-engine``, ``localhost:5000/dsv3``) gives its repository
    and its tag (None when it has none). The tag is what follows the last ``:`` after the last ``/``
    (distribution/reference grammar: a registry's ``host:port`` comes before the first ``/``).
    SpecError (exit 2) when the tag part breaks the tag rule."""
    repo: str | None = None
    tag: str | None = value
    if "/" in value:
        head, _, last = value.rpartition("/")
        name, sep, t = last.partition(":")
        repo, tag = f"{head}/{name}", (t if sep else None)
    elif ":" in value:
        repo, _, tag = value.partition(":")
    if tag is not None and not TAG_RE.match(tag):
        raise SpecError(f"--tag {value!r}: the tag {tag!r} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}; pass a tag "
                        "(0.1.0-engine) or a full reference (registry.example.com/dsv3ctl:0.1.0-engine)")
    if repo is not None and (not repo or repo != repo.lower()):
        raise SpecError(f"--tag {value!r}: the repository {repo!r} must be lowercase and not empty "
                        "(e.g. registry.example.com/dsv3ctl)")
    return repo, tag


def image_ref(spec, target: str, tag: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """``<repository>:<tag>``; ``--tag`` may be a tag or a full reference (:func:`split_ref`); otherwise
    repository = ``image.repository`` and tag = ``image.tag``, else ``<version>-<target>``."""
    repo, t = split_ref(tag) if tag else (None, None)
    return f"{repo or spec.image.repository}:{t or spec.image.tag or f'{__version__}-{target}'}"


def build_commands(spec, *, builder: str, target: str, tag: str | None = None, push: bool = False,  # type: ignore[no-untyped-def]
                   context: str = ".", vcs_ref: str = "", platform: str = "linux/amd64",
                   trtllm_commit: str = "", test_base: str = "") -> BuildPlan:
    """The argv lists that build (and with ``push`` push) the image. ``test_base``: ``TEST_BASE`` of the
    ``test`` target (empty: the Dockerfile's default). SpecError for an unknown target/builder, or a
    ``test_base`` with another target."""
    if target not in TARGETS:
        raise SpecError(f"--target={target!r}: use one of {', '.join(TARGETS)} (serving.mode picks the default)")
    if test_base and target != "test":
        raise SpecError(f"--test-base={test_base!r} with --target={target}: TEST_BASE is the base of the test target "
                        "only; use --target test, or drop --test-base")
    if builder not in BUILDERS:
        raise SpecError(f"image.builder / --builder={builder!r}: use one of {', '.join(BUILDERS)} or auto")
    ref = image_ref(spec, target, tag)
    common = ["--target", target, "--file", f"{context.rstrip('/')}/{DOCKERFILE}" if context != "." else DOCKERFILE,
              "--tag", ref, "--platform", platform]
    for k, v in build_args(spec, vcs_ref, trtllm_commit).items():
        common += ["--build-arg", f"{k}={v}"]
    if test_base:
        common += ["--build-arg", f"TEST_BASE={test_base}"]
    if builder == "docker":
        cmd = ["docker", "buildx", "build", *common, "--push" if push else "--load", context]
        return BuildPlan(builder, ref, [cmd])
    if builder == "podman":
        cmds = [["podman", "build", *common, context]]
        if push:
            cmds.append(["podman", "push", ref])
        return BuildPlan(builder, ref, cmds)
    cmds = [["buildah", "build", *common, "--format", "docker", context]]
    if push:
        cmds.append(["buildah", "push", ref])
    return BuildPlan(builder, ref, cmds)
