"""``dsv3ctl image build``: build (and push) the container image from docker/Dockerfile with the spec's pins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsv3ctl.cli._common import DryRunOpt, OutputFormat, OutputOpt, Sink, SpecOpt, load

image_app = typer.Typer(name="image", help="The container image from docker/Dockerfile: build (with --push, also push it).",
                        no_args_is_help=True)


def _context(context: Path | None) -> str:
    """The build context: ``--context``, else the source checkout this dsv3ctl runs from (the directory
    holding ``docker/Dockerfile`` next to the ``dsv3ctl`` package, as render/deploy find ``helm/dsv3``).
    ``.`` when that is the current directory. SpecError (exit 2) when there is no docker/Dockerfile."""
    import os

    from dsv3ctl.errors import SpecError
    from dsv3ctl.render.image import DOCKERFILE

    if context is not None:
        if not (context / DOCKERFILE).is_file():
            raise SpecError(f"--context {context}: no {DOCKERFILE} there; the build context is the root of a dsv3ctl "
                            "source checkout", hint="pass --context DIR of a checkout (git clone of dsv3ctl)")
        root = context
    else:
        import dsv3ctl

        root = Path(dsv3ctl.__file__).resolve().parents[1]
        if not (root / DOCKERFILE).is_file():
            raise SpecError(f"no {DOCKERFILE}: this dsv3ctl runs from {root}, which is not a source checkout "
                            "(an installed package has no Dockerfile)",
                            hint="pass --context DIR of a dsv3ctl source checkout (git clone of dsv3ctl)")
    try:
        if root.resolve() == Path(os.getcwd()).resolve():
            return "."
    except OSError:
        pass
    return str(root.resolve())


def _detect_builder() -> str | None:
    """docker when ``docker buildx version`` works, else podman, else buildah; None when none is usable."""
    import shutil
    import subprocess

    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=20).returncode == 0:
                return "docker"
        except (OSError, subprocess.SubprocessError):
            pass
    for b in ("podman", "buildah"):
        if shutil.which(b):
            return b
    return None


def _vcs_ref(context: Path) -> str:
    import subprocess

    try:
        r = subprocess.run(["git", "-C", str(context), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def resolve_branch(repo: str, ref: str, timeout_s: float = 60.0) -> str:
    """The SHA ``ref`` (a branch) points at in ``repo``: ``git ls-remote <repo> refs/heads/<ref>``.
    RuntimeFailure (exit 1) naming the repo and branch when git fails, times out or finds no such branch."""
    import subprocess

    from dsv3ctl.errors import RuntimeFailure

    try:
        r = subprocess.run(["git", "ls-remote", repo, f"refs/heads/{ref}"], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"git ls-remote {repo} refs/heads/{ref}: no answer within {timeout_s:.0f} s "
                             "(resolving image.trtllm_commit)") from None
    except OSError as e:
        raise RuntimeFailure(f"git ls-remote {repo}: {e} (resolving image.trtllm_commit); install git or "
                             "set image.trtllm_commit to a commit SHA") from None
    sha = r.stdout.split()[0] if r.returncode == 0 and r.stdout.strip() else ""
    if not sha:
        raise RuntimeFailure(f"image.trtllm_commit={ref}: no branch {ref} in {repo} "
                             f"({r.stderr.strip() or 'git ls-remote found nothing'}); set a commit SHA or a branch")
    return sha


def build(
    spec: SpecOpt = None,
    target: Annotated[str | None, typer.Option("--target", help="llmapi | engine (default: serving.mode) | test (a "
                                                                 "TEST image: no model, a tritonserver test double).")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="A tag (0.1.0-engine) or a full reference (registry.example.com/dsv3ctl:0.1.0-engine); default image.repository:image.tag, or {version}-{target} as the tag. deploy pulls image.repository:image.tag of the spec, not this.")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the image after building.")] = False,
    builder: Annotated[str | None, typer.Option("--builder", help="docker | podman | buildah (default image.builder: "
                                                                  "auto = docker buildx, else podman, else buildah).")] = None,
    context: Annotated[Path | None, typer.Option(
        "--context", help="Build context: a dsv3ctl source checkout (has docker/Dockerfile); default: the checkout "
                          "this dsv3ctl runs from, wherever the current directory is.")] = None,
    test_base: Annotated[str | None, typer.Option(
        "--test-base", help="--target test only: its Debian 12 base (TEST_BASE), e.g. oci-archive:/path/base.tar "
                            "(tools/test-image.sh makes one); default debian:bookworm-slim.")] = None,
    dry_run: DryRunOpt = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Build the image. --dry-run prints the exact command(s), one per line, and runs nothing; with -o json
    one document {builder, image, context, commands} (commands: a list of argv lists).

    Exit 2 for a bad target/builder or no docker/Dockerfile in the context; 1 when no builder is installed (without --dry-run) or the build fails.
    """
    import shlex
    import subprocess
    import sys

    from dsv3ctl.errors import RuntimeFailure, SpecError
    from dsv3ctl.render.image import build_commands

    s = load(spec)
    ctx = _context(context)
    tgt = target or s.serving.mode
    chosen = builder or (None if s.image.builder == "auto" else s.image.builder)
    if chosen is None:
        chosen = _detect_builder()
        if chosen is None:
            if not dry_run:
                raise RuntimeFailure("no image builder found: install docker with the buildx plugin, podman or buildah")
            sys.stderr.write("note: no image builder found here; showing the docker buildx command\n")
            chosen = "docker"
    from dsv3ctl.render.image import is_sha

    resolved = ""
    if tgt == "engine" and not is_sha(s.image.trtllm_commit):
        if dry_run:
            sys.stderr.write(f"note: image.trtllm_commit={s.image.trtllm_commit} is a branch; a build resolves it "
                             f"with `git ls-remote {s.image.trtllm_repo} refs/heads/{s.image.trtllm_commit}` and "
                             "passes the SHA (label ai.dsv3ctl.trtllm-commit)\n")
        else:
            resolved = resolve_branch(s.image.trtllm_repo, s.image.trtllm_commit)
            sys.stderr.write(f"image.trtllm_commit={s.image.trtllm_commit} resolved to {resolved}\n")
    plan = build_commands(s, builder=chosen, target=tgt, tag=tag, push=push, context=ctx,
                          vcs_ref=_vcs_ref(Path(ctx)), trtllm_commit=resolved, test_base=test_base or "")
    from dsv3ctl.render.values import image_tag

    pulled = f"{s.image.repository}:{image_tag(s)}"
    if plan.image != pulled:
        repo, _, t = plan.image.rpartition(":")
        sys.stderr.write(f"note: deploy and slurm render use {pulled} (image.repository and image.tag of the spec, "
                         f"serving.mode {s.serving.mode}), not {plan.image}; to run this image set image.repository: "
                         f"{repo} and image.tag: {t} in the spec\n")
    if dry_run:
        def human(_con: object) -> None:
            for cmd in plan.commands:  # plain lines (no rich markup/wrapping): they are meant to be copied
                typer.echo(shlex.join(cmd))

        Sink(output).emit({"builder": plan.builder, "image": plan.image, "context": ctx, "commands": plan.commands},
                          human)
        return
    if output is OutputFormat.json:
        raise SpecError("--output json needs --dry-run (a build prints the builder's own output)")
    for cmd in plan.commands:
        sys.stderr.write("+ " + shlex.join(cmd) + "\n")
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise RuntimeFailure(f"{cmd[0]} {cmd[1]} failed with exit code {rc}")
    typer.echo(plan.image)


def register(app: typer.Typer) -> None:
    image_app.command("build")(build)
    app.add_typer(image_app, name="image")
