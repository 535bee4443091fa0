"""``dsv3ctl repo``: build and check the Triton model repository; write a labelled engine skeleton."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from dsv3ctl.cli._common import OutputFormat, OutputOpt, Sink, SpecOpt, load

group = typer.Typer(help="Triton model repository: build (from engines, or for llmapi), check (the rules that break "
                         "deployments), engine-skeleton (a labelled placeholder engine directory).",
                    no_args_is_help=True)

DEFAULT_ENGINE_MOUNT = "/models/engines"  # = dsv3ctl.render.model_repo.DEFAULT_ENGINE_MOUNT (kept light here)


class RepoMode(str, Enum):
    engine = "engine"
    llmapi = "llmapi"


@group.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", help="Repository directory to write (atomically).")],
    engine_dir: Annotated[Path | None, typer.Option("--engine-dir", help="trtllm-build output dir (engine mode).")] = None,
    tokenizer_dir: Annotated[Path | None, typer.Option(
        "--tokenizer-dir", help="Dir with tokenizer.json + tokenizer_config.json (engine mode).")] = None,
    spec: SpecOpt = None,
    mode: Annotated[RepoMode | None, typer.Option("--mode", help="engine | llmapi; default: the spec's serving.mode.")] = None,
    engine_mount: Annotated[str, typer.Option(
        "--engine-mount", help="Where the engines sit inside the pod (gpt_model_path).")] = DEFAULT_ENGINE_MOUNT,
    model_path: Annotated[str | None, typer.Option(
        "--model-path", help="llmapi: checkpoint path inside the pod (or a Hugging Face id, downloaded at every pod start); default: the spec's launch.model_dir.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a different existing repository.")] = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Write the model repository: engine mode (ensemble, preprocessing, tensorrt_llm, postprocessing,
    tensorrt_llm_bls) from the engine's config.json + the spec, or llmapi mode (tensorrt_llm with
    model.yaml, plus extra-llm-api-options.yaml). Exit 2 on bad input or a different existing --out."""
    from dsv3ctl.adapters.model_repo import build_repo

    s = load(spec)
    m = (mode.value if mode else s.serving.mode)
    summary = build_repo(s, out, m, engine_dir, tokenizer_dir, engine_mount, model_path, force)
    sink = Sink(output)

    def human(con) -> None:  # type: ignore[no-untyped-def]
        verb = "wrote" if summary["changed"] else "unchanged"
        con.print(f"{verb} {summary['out']} ({summary['mode']} mode): {', '.join(summary['models'])}")
        if summary.get("note"):
            con.print(f"note: {summary['note']}")
        if summary.get("placeholder_engine"):
            con.print("note: the engine directory is a labelled placeholder skeleton (empty rank files)")

    sink.emit(summary, human)


@group.command("check")
def check(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    engine_dir: Annotated[Path | None, typer.Option("--engine-dir", help="Engine dir to check limits and ranks against.")] = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Parse every config.pbtxt as Triton's ModelConfig and check the rules that break deployments.

    Prints one `file: field: problem: fix` line per problem; exit 1 when there is any (invalid artifacts, as `weights verify`). When a config does not parse, the rules that depend on it are skipped (a note says which) rather than reported as problems.
    """
    from dsv3ctl.adapters.model_repo import check_repo

    problems, notes = check_repo(repo, engine_dir)
    sink = Sink(output)

    def human(con) -> None:  # type: ignore[no-untyped-def]
        for p in problems:  # problems first: a note may refer to one of them
            con.print(p, markup=False)
        for n in notes:
            con.print(f"note: {n}", markup=False)
        con.print(f"{'FAIL' if problems else 'ok'}: {len(problems)} problem(s) in {repo}")

    sink.emit({"repo": str(repo), "ok": not problems, "problems": problems, "notes": notes}, human)
    if problems:
        raise typer.Exit(1)


@group.command("engine-skeleton")
def engine_skeleton(
    out: Annotated[Path, typer.Argument(help="Directory to write the skeleton into.")],
    spec: SpecOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty directory.")] = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Write a LABELLED engine-directory skeleton (config.json as trtllm-build writes it for the spec,
    empty rank{N}.engine placeholders, PLACEHOLDER.txt) for tests and the demo. It cannot be served."""
    import os
    import shutil
    import tempfile

    from dsv3ctl.errors import SpecError
    from dsv3ctl.render.engine_skeleton import files

    s = load(spec)
    content = files(s)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise SpecError(f"{out}: exists and is not empty", hint="pass --force to replace it, or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for rel, data in content.items():
            (tmp / rel).write_bytes(data)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ranks = sum(1 for k in content if k.endswith(".engine"))
    Sink(output).emit({"out": str(out), "ranks": ranks, "placeholder": True},
                      lambda con: con.print(f"wrote placeholder engine skeleton {out}: config.json + {ranks} empty "
                                            "rank*.engine (labelled, not servable)"))


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="repo")
