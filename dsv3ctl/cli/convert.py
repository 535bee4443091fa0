"""``dsv3ctl convert`` and ``dsv3ctl build-engine``: TensorRT-LLM checkpoint conversion and engine build
(engine mode; run inside the engine image). See docs/weights.md and :mod:`dsv3ctl.adapters.trtllm`."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from dsv3ctl.cli._common import DryRunOpt, OutputFormat, OutputOpt, Sink, SpecOpt, load

WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="Ranks processed in parallel; 0 = one per rank, "
                                         "capped by host memory (and by GPUs for build-engine).")]
PythonOpt = Annotated[str, typer.Option("--python", help="Interpreter that has tensorrt_llm (runs "
                                        "convert_checkpoint.py and the TensorRT-LLM probe).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an OUT that dsv3ctl did not write.")]


def _raw_log(sink: Sink):  # type: ignore[no-untyped-def]
    con = sink.err if sink.json else sink.out

    def log(line: str) -> None:
        con.print(line, markup=False, highlight=False)

    return log


def _findings(sink: Sink, pf: Any) -> None:
    for f in pf.findings:
        if f.level == "warning":
            sink.info("[yellow]warn[/] " + _esc(f"[{f.check}] {f.message}"))


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="With --dry-run: fail (exit 2 for a spec error, 1 otherwise) when the preflight finds an "
                     "error, after printing the command; without --strict a dry run prints the findings and exits 0.")]


def _dry(sink: Sink, step: str, argv: list[str], pf: Any, out: Path, strict: bool = False) -> None:
    from dsv3ctl.adapters.trtllm import partial_dir

    data = {"step": step, "argv": argv, "command": shlex.join(argv), "workers": pf.workers,
            "writes": str(partial_dir(out.absolute())), "renames_to": str(out.absolute()), "preflight": pf.to_json()}

    def human(con) -> None:  # type: ignore[no-untyped-def]
        con.print(shlex.join(argv), markup=False, highlight=False)
        con.print(f"# writes {data['writes']}, renamed to {data['renames_to']} on success", markup=False)
        for f in pf.findings:
            con.print(f"# {f.level} [{f.check}] {f.message}", markup=False, highlight=False)

    sink.emit(data, human)
    if strict:
        pf.raise_errors()


def _done(sink: Sink, res: Any) -> None:
    sink.emit(res.to_json(), lambda con: con.print(
        f"{res.step}: {'up to date' if res.skipped else 'done'} -> {res.out} (TensorRT-LLM "
        f"{res.tensorrt_llm_version}, fingerprint {res.fingerprint[:12]}, {res.workers} workers)", markup=False))


def convert(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face checkpoint (FP8, or BF16 after `weights cast-bf16`).")],
    out: Annotated[Path, typer.Argument(help="TensorRT-LLM checkpoint directory to write (llmapi mode: where "
                                             "extra-llm-api-options.yaml goes).")],
    spec: SpecOpt = None,
    workers: WorkersOpt = 0,
    python: PythonOpt = "python3",
    convert_script: Annotated[str, typer.Option("--convert-script", help="The deepseek branch's convert_checkpoint.py.")] =
        "/opt/tensorrt_llm/examples/deepseek_v3/convert_checkpoint.py",
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    strict: StrictOpt = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Convert a DeepSeek-V3 checkpoint with convert_checkpoint.py (engine mode): preflight, streamed log,
    rank progress, fingerprinted and idempotent, validated output. llmapi mode: nothing to convert; writes
    OUT/extra-llm-api-options.yaml instead."""
    from dsv3ctl.fsutil import atomic_write_text

    s = load(spec)
    sink = Sink(output)
    if s.serving.mode != "engine":
        from dsv3ctl.render.model_repo import EXTRA_OPTIONS_FILE, llmapi_files

        text = llmapi_files(s, str(model_dir))[EXTRA_OPTIONS_FILE]
        dest = out / EXTRA_OPTIONS_FILE
        data = {"step": "convert", "mode": "llmapi", "converted": False, "wrote": str(dest), "dry_run": dry_run}
        sink.info("serving.mode=llmapi: no conversion is needed (the PyTorch backend reads the Hugging Face "
                  "checkpoint directly); " + ("would write " if dry_run else "writing ") + _esc(str(dest)))
        if dry_run:
            data["content"] = text
        else:
            atomic_write_text(dest, text)
        sink.emit(data, lambda con: con.print(text, markup=False) if dry_run else None)
        return
    from dsv3ctl.adapters import trtllm as T
    from dsv3ctl.render.trtllm import convert_argv

    pf = T.preflight_convert(s, model_dir, out, workers, python, convert_script)
    exe = T.shutil.which(python) or python
    argv = convert_argv(s, model_dir.absolute(), T.partial_dir(out.absolute()), max(pf.workers, 1),
                        python=exe, script=convert_script)
    if not dry_run and Path(convert_script).is_file():
        T.check_accepts(pf, "convert_checkpoint.py", [exe, convert_script, "--help"], argv,
                        "build the engine image from a TensorRT-LLM commit whose converter has these flags "
                        "(image.trtllm_commit: deepseek; dsv3ctl/data/trtllm_commits.json), or change "
                        "model.precision")
    if dry_run:
        _dry(sink, "convert", argv, pf, out, strict)
        return
    _findings(sink, pf)
    res = T.run_step("convert", s, out, argv, pf, T.validate_checkpoint, ".safetensors", _raw_log(sink), force)
    _done(sink, res)


def build_engine(
    ckpt_dir: Annotated[Path, typer.Argument(help="TensorRT-LLM checkpoint written by `dsv3ctl convert`.")],
    out: Annotated[Path, typer.Argument(help="Engine directory to write (rank*.engine + config.json).")],
    spec: SpecOpt = None,
    workers: WorkersOpt = 0,
    python: PythonOpt = "python3",
    trtllm_build: Annotated[str, typer.Option("--trtllm-build", help="trtllm-build executable (name on PATH or path).")] =
        "trtllm-build",
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    strict: StrictOpt = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Build TensorRT engines with trtllm-build from a converted checkpoint (engine mode): preflight (SM90
    GPUs, TensorRT-LLM with DeepSeek-V3, memory, disk, checkpoint mapping), streamed log, rank progress,
    fingerprinted and idempotent, validated output with the TensorRT-LLM version recorded."""
    from dsv3ctl.errors import SpecError

    s = load(spec)
    sink = Sink(output)
    if s.serving.mode != "engine":
        raise SpecError("serving.mode=llmapi: no engine is built (the PyTorch backend serves the Hugging Face "
                        "checkpoint); skip build-engine, or set serving.mode: engine")
    from dsv3ctl.adapters import trtllm as T
    from dsv3ctl.render.trtllm import build_argv

    exe = T.shutil.which(trtllm_build)
    pf = T.preflight_build(s, ckpt_dir, out, workers, python)
    if exe is None:
        pf.error("trtllm-build", f"--trtllm-build={trtllm_build}: not found on PATH",
                 "run inside the engine image (it installs trtllm-build) or pass --trtllm-build PATH")
    argv = build_argv(s, ckpt_dir.absolute(), T.partial_dir(out.absolute()), max(pf.workers, 1),
                      exe=exe or trtllm_build)
    if not dry_run and exe:
        T.check_accepts(pf, "trtllm-build", [exe, "--help"], argv,
                        "use the engine image built from image.trtllm_commit (the trtllm-build of that commit), "
                        "or change the serving options that add the flag")
    if dry_run:
        _dry(sink, "build-engine", argv, pf, out, strict)
        return
    _findings(sink, pf)
    res = T.run_step("build-engine", s, out, argv, pf, T.validate_engine, ".engine", _raw_log(sink), force)
    _done(sink, res)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("build-engine")(build_engine)
