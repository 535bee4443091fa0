"""Write and check a Triton model repository on disk (``dsv3ctl repo build`` / ``repo check``).

:func:`build_repo` renders the configs (:mod:`dsv3ctl.render.model_repo`), copies the project's own
Python models from ``model_repo/`` and the tokenizer files, writes everything into a temporary directory
next to ``out`` and renames it into place (a reader never sees half a repository).
:func:`check_repo` parses every ``config.pbtxt`` into Triton's ``ModelConfig`` and reports what breaks
real deployments, one ``file: field: problem: fix`` line per problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dsv3ctl.core.spec import Spec
from dsv3ctl.errors import RuntimeFailure, SpecError
from dsv3ctl.render import model_repo as R

MANIFEST = ".dsv3ctl-repo.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SHARED_MODULE = "dsv3_text.py"


def model_repo_source() -> Path:
    """The project's ``model_repo/`` (Python models): ``DSV3CTL_MODEL_REPO_SRC``, else the copy in the
    installed wheel, else the source checkout's (:func:`dsv3ctl.resources.model_repo_dir`)."""
    from dsv3ctl.resources import model_repo_dir

    p = model_repo_dir()
    if not (p / "lib" / SHARED_MODULE).is_file():
        raise RuntimeFailure(f"{p}: the dsv3ctl model_repo/ sources are missing",
                             hint="reinstall dsv3ctl from its wheel (it carries model_repo/), or set DSV3CTL_MODEL_REPO_SRC to a checkout's model_repo/")
    return p


def read_engine_config(engine_dir: Path) -> dict[str, Any]:
    p = Path(engine_dir) / "config.json"
    if not p.is_file():
        raise SpecError(f"--engine-dir={engine_dir}: no config.json; pass the directory trtllm-build wrote "
                        "(or `dsv3ctl repo engine-skeleton DIR` for a labelled skeleton)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpecError(f"{p}: not valid JSON: {err}") from None


def _check_tokenizer_dir(tdir: Path) -> None:
    missing = [f for f in TOKENIZER_FILES if not (tdir / f).is_file()]
    if missing:
        raise SpecError(f"--tokenizer-dir={tdir}: missing {', '.join(missing)}; pass the model's Hugging Face "
                        "directory (it holds tokenizer.json and tokenizer_config.json)")


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # the tokenizer is copied three times: share the bytes when possible
    except OSError:
        shutil.copy2(src, dst)


def _render(spec: Spec, mode: str, engine_dir: Path | None, tokenizer_dir: Path | None, engine_mount: str,
            model_path: str | None) -> tuple[dict[str, bytes], dict[str, Path], list[str], dict[str, Any]]:
    """Returns (generated files, files copied from disk, empty dirs, summary)."""
    src = model_repo_source()
    files: dict[str, bytes] = {}
    copies: dict[str, Path] = {}
    summary: dict[str, Any] = {"mode": mode}
    if mode == "engine":
        if engine_dir is None or tokenizer_dir is None:
            raise SpecError("engine mode needs --engine-dir DIR and --tokenizer-dir DIR")
        _check_tokenizer_dir(tokenizer_dir)
        info = R.EngineInfo.from_config(read_engine_config(engine_dir), str(engine_dir / "config.json"))
        par = spec.parallelism
        if (info.tp_size, info.pp_size) != (par.tp, par.pp):
            raise SpecError(
                f"--engine-dir={engine_dir}: the engine was built for tp {info.tp_size} x pp {info.pp_size} = "
                f"{info.tp_size * info.pp_size} ranks (config.json pretrained_config.mapping) but the spec's "
                f"parallelism is tp {par.tp} x pp {par.pp} = {par.tp * par.pp}: the pods would start "
                f"{par.tp * par.pp} MPI ranks against {info.tp_size * info.pp_size} rank*.engine files",
                hint=f"build the engine for this spec (`{spec.command('build-engine')} CKPT ENGINES`), or set "
                     f"parallelism.tp: {info.tp_size} and pp: {info.pp_size} (with nodes x gpus_per_node to match)")
        if spec.serving.max_batch_size != info.max_batch_size:
            summary["note"] = (f"spec serving.max_batch_size={spec.serving.max_batch_size} differs from the "
                               f"engine's {info.max_batch_size}; the repository uses the engine's")
        for name, cfg in R.engine_configs(spec, info, engine_mount).items():
            files[f"{name}/config.pbtxt"] = R.to_pbtxt(cfg).encode()
        for name in R.PYTHON_MODELS:
            copies[f"{name}/1/model.py"] = src / name / "1" / "model.py"
            copies[f"{name}/1/{SHARED_MODULE}"] = src / "lib" / SHARED_MODULE
            for f in TOKENIZER_FILES:
                copies[f"{name}/1/{R.TOKENIZER_SUBDIR}/{f}"] = tokenizer_dir / f
        dirs = ["ensemble/1", "tensorrt_llm/1"]
        summary.update(models=list(R.ENGINE_MODELS), max_batch_size=info.max_batch_size,
                       world_size=info.world_size, engine_mount=engine_mount, placeholder_engine=info.placeholder)
    elif mode == "llmapi":
        # the checkpoint where the pods mount it (launch.model_dir), not the Hugging Face id: with the id the
        # LLM API would download 163 shards from the hub at every pod start
        path = model_path or spec.launch.model_dir
        for rel, text in R.llmapi_files(spec, path).items():
            files[rel] = text.encode()
        copies[f"{R.LLMAPI_MODEL}/1/model.py"] = src / "llmapi" / "1" / "model.py"
        dirs = []
        summary.update(models=[R.LLMAPI_MODEL], model=path, extra_llm_api_options=R.EXTRA_OPTIONS_FILE,
                       trtllm_version=R.TRTLLM_LLMAPI_VERSION)
    else:
        raise SpecError(f"--mode={mode!r}: use engine or llmapi")
    for rel, p in copies.items():
        if not p.is_file():
            raise RuntimeFailure(f"{p}: missing source file for {rel}")
    return files, copies, dirs, summary


def _digest(files: dict[str, bytes], copies: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for rel in sorted(set(files) | set(copies)):
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(files[rel] if rel in files else copies[rel].read_bytes()).digest())
    return h.hexdigest()


def build_repo(spec: Spec, out: Path, mode: str = "engine", engine_dir: Path | None = None,
               tokenizer_dir: Path | None = None, engine_mount: str = R.DEFAULT_ENGINE_MOUNT,
               model_path: str | None = None, force: bool = False) -> dict[str, Any]:
    """Build the repository at ``out`` atomically (temp dir + rename). An existing ``out`` with different
    content is replaced only with ``force`` (SpecError otherwise); identical content is left as is.
    Returns a summary dict (mode, models, max_batch_size, ..., ``changed``)."""
    out = Path(out)
    files, copies, dirs, summary = _render(spec, mode, engine_dir, tokenizer_dir, engine_mount, model_path)
    digest = _digest(files, copies)
    manifest: dict[str, Any] = {"generator": "dsv3ctl repo build", "mode": mode, "digest": digest}
    if mode == "engine":  # what `repo check --engine-dir` compares the engine directory against
        manifest.update(tp=spec.parallelism.tp, pp=spec.parallelism.pp)
    summary["out"] = str(out)
    if out.exists():
        if not out.is_dir():
            raise SpecError(f"--out={out}: exists and is not a directory; choose another path")
        old = None
        try:
            old = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            pass
        if old and old.get("digest") == digest:
            summary["changed"] = False
            return summary
        if any(out.iterdir()) and not force:
            what = "a different dsv3ctl repository" if old else "files not written by dsv3ctl"
            raise SpecError(f"--out={out}: already holds {what}",
                            hint="pass --force to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        for rel, src in copies.items():
            _place(src, tmp / rel)
        for d in dirs:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        backup = None
        if out.exists():
            backup = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, backup)
        os.replace(tmp, out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["changed"] = True
    return summary


# --------------------------------------------------------------------------------------------- check
def _dtype_name(dt: int) -> str:
    from tritonclient.grpc import model_config_pb2 as pb

    return pb.DataType.Name(dt)


def check_repo(repo: Path, engine_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """Check a repository; returns (problems, notes). Each problem is ``file: field: problem: fix``.

    Rules: every ``config.pbtxt`` parses as ModelConfig; no ``${...}`` left anywhere; no duplicate tensor
    names; every ensemble step maps tensors that exist in the step's model with the same dtype and feeds
    every required input; decoupled is the same on tensorrt_llm and tensorrt_llm_bls; with the engine
    directory (``--engine-dir``): max_batch_size and max_beam_width never exceed the engine's, and
    ``mapping.world_size`` = tp x pp = the number of ``rank*.engine`` files (non-empty unless the directory is
    a labelled dsv3ctl skeleton); each Python model's tokenizer dir holds tokenizer.json and
    tokenizer_config.json and its eos/pad tokens are id 1 (DeepSeek-V3 ``eos_token_id``); llmapi model.yaml
    and extra options use only LlmArgs keys of the pinned TensorRT-LLM.
    """
    from google.protobuf import text_format

    repo = Path(repo)
    problems: list[str] = []
    notes: list[str] = []
    if not repo.is_dir():
        raise SpecError(f"{repo}: not a directory; pass the repository `dsv3ctl repo build --out` wrote")
    configs: dict[str, Any] = {}
    broken: dict[str, str] = {}  # model -> its config.pbtxt that is missing or does not parse
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        f = d / "config.pbtxt"
        rel = f"{d.name}/config.pbtxt"
        if not f.is_file():
            problems.append(f"{d.name}/: config.pbtxt: missing: every model directory needs one (Triton is run "
                            "with --disable-auto-complete-config); rebuild with `dsv3ctl repo build`")
            broken[d.name] = rel
            continue
        text = f.read_text(encoding="utf-8")
        if "${" in text:
            problems.append(f"{rel}: (text): unfilled template placeholder ${{...}}: rebuild with `dsv3ctl repo build`")
        try:
            cfg = R.parse_pbtxt(text)
        except text_format.ParseError as err:
            problems.append(f"{rel}: (syntax): not a valid ModelConfig: {err}: rebuild with `dsv3ctl repo build`")
            broken[d.name] = rel
            continue
        if cfg.name and cfg.name != d.name:
            problems.append(f"{rel}: name: {cfg.name!r} differs from the directory {d.name!r}: set name: \"{d.name}\"")
        configs[d.name] = cfg
        for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
            seen: set[str] = set()
            for t in tensors:
                if t.name in seen:
                    problems.append(f"{rel}: {kind} {t.name}: duplicate tensor name: remove one declaration")
                seen.add(t.name)
    if not configs:
        if not broken:
            problems.append(f"{repo}: (repository): no models: build one with `dsv3ctl repo build`")
        return problems, notes

    def skipped(what: str, names: list[str]) -> None:
        """Rules that need a config which did not parse are skipped (a note), not reported as problems."""
        notes.append(f"{what}: skipped: {', '.join(broken[n] for n in names)} could not be read (see its problem "
                     "above); fix it and rerun `dsv3ctl repo check`")

    # ensemble wiring
    for name, cfg in configs.items():
        if cfg.platform != "ensemble":
            continue
        rel = f"{name}/config.pbtxt"
        unread = sorted({st.model_name for st in cfg.ensemble_scheduling.step if st.model_name in broken})
        if unread:  # its steps' tensors are unknown: checking the wiring would only report follow-on errors
            skipped(f"{rel}: ensemble wiring checks", unread)
            continue
        ens_in = {t.name: t.data_type for t in cfg.input}
        ens_out = {t.name: t.data_type for t in cfg.output}
        produced: dict[str, tuple[int, str]] = {}
        for i, step in enumerate(cfg.ensemble_scheduling.step):
            m = configs.get(step.model_name)
            field = f"ensemble_scheduling.step[{i}]({step.model_name})"
            if m is None:
                problems.append(f"{rel}: {field}: model {step.model_name!r} is not in the repository: add it or fix model_name")
                continue
            m_in = {t.name: t for t in m.input}
            m_out = {t.name: t for t in m.output}
            for key, ens_tensor in step.input_map.items():
                if key not in m_in:
                    problems.append(f"{rel}: {field}.input_map[{key}]: {step.model_name} has no input {key!r}: "
                                    f"map one of {', '.join(sorted(m_in))}")
                    continue
                want = m_in[key].data_type
                have = ens_in.get(ens_tensor, produced.get(ens_tensor, (None, ""))[0])
                if have is None:
                    problems.append(f"{rel}: {field}.input_map[{key}]: {ens_tensor!r} is neither an ensemble input "
                                    "nor produced by an earlier step: map an existing tensor")
                elif have != want:
                    problems.append(f"{rel}: {field}.input_map[{key}]: dtype {_dtype_name(have)} of {ens_tensor!r} "
                                    f"!= {_dtype_name(want)} of {step.model_name}.{key}: make both {_dtype_name(want)}")
            mapped = set(step.input_map)
            for t in m.input:
                if not t.optional and t.name not in mapped:
                    problems.append(f"{rel}: {field}.input_map: required input {step.model_name}.{t.name} is not "
                                    "fed: map it from an ensemble input or an earlier step's output")
            for key, ens_tensor in step.output_map.items():
                if key not in m_out:
                    problems.append(f"{rel}: {field}.output_map[{key}]: {step.model_name} has no output {key!r}: "
                                    f"map one of {', '.join(sorted(m_out))}")
                    continue
                produced[ens_tensor] = (m_out[key].data_type, step.model_name)
                if ens_tensor in ens_out and ens_out[ens_tensor] != m_out[key].data_type:
                    problems.append(f"{rel}: output {ens_tensor}: dtype {_dtype_name(ens_out[ens_tensor])} != "
                                    f"{_dtype_name(m_out[key].data_type)} of {step.model_name}.{key}: make both "
                                    f"{_dtype_name(m_out[key].data_type)}")
        for o in ens_out:
            if o not in produced:
                problems.append(f"{rel}: output {o}: no step produces it: map it in a step's output_map or remove it")

    # decoupled consistency
    pair = ["tensorrt_llm", "tensorrt_llm_bls"]
    if any(n in broken for n in pair) and any(n in configs or n in broken for n in pair):
        skipped("decoupled consistency check of tensorrt_llm and tensorrt_llm_bls", [n for n in pair if n in broken])
    elif "tensorrt_llm" in configs and "tensorrt_llm_bls" in configs:
        a = configs["tensorrt_llm"].model_transaction_policy.decoupled
        b = configs["tensorrt_llm_bls"].model_transaction_policy.decoupled
        if a != b:
            problems.append(f"tensorrt_llm_bls/config.pbtxt: model_transaction_policy.decoupled: {str(b).lower()} but "
                            f"tensorrt_llm has {str(a).lower()} (the BLS must call it the same way): set both to "
                            "true (streaming) with serving.decoupled in the spec")

    # engine limits
    if engine_dir is not None:
        if broken:
            skipped("engine limit checks (max_batch_size, max_beam_width) of those models", sorted(broken))
        problems += _check_engine(Path(engine_dir), configs, notes)
        problems += _check_engine_ranks(repo, Path(engine_dir))

    # tokenizers
    for name, cfg in configs.items():
        if cfg.backend != "python" or "tokenizer_dir" not in cfg.parameters:
            continue
        problems += _check_tokenizer(repo / name, cfg.parameters["tokenizer_dir"].string_value, name)

    # llmapi files
    import yaml

    for rel, allow_triton in ((f"{R.LLMAPI_MODEL}/1/model.yaml", True), (R.EXTRA_OPTIONS_FILE, False)):
        p = repo / rel
        if p.is_file():
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as err:
                problems.append(f"{rel}: (syntax): not valid YAML: {err}: rebuild with `dsv3ctl repo build --mode llmapi`")
                continue
            problems += R.llmapi_key_problems(data, rel, allow_triton)
    return problems, notes


def _check_engine_ranks(repo: Path, engine_dir: Path) -> list[str]:
    """The tp x pp the repository was built for (its manifest) against the engine's mapping."""
    try:
        built = json.loads((repo / MANIFEST).read_text())
        info = R.EngineInfo.from_config(read_engine_config(engine_dir), str(engine_dir / "config.json"))
    except (OSError, ValueError, SpecError):
        return []  # no manifest (not built by dsv3ctl) or no readable engine config: reported elsewhere
    if "tp" not in built or (int(built["tp"]), int(built.get("pp", 1))) == (info.tp_size, info.pp_size):
        return []
    return [f"{MANIFEST}: tp x pp: the repository was built for a spec with tp {built['tp']} x pp {built.get('pp', 1)} "
            f"but {engine_dir}/config.json maps tp {info.tp_size} x pp {info.pp_size}: the pods start one MPI rank "
            "per GPU of the spec: rebuild the repository and the engine from one spec"]


def _check_engine(engine_dir: Path, configs: dict[str, Any], notes: list[str]) -> list[str]:
    problems: list[str] = []
    cfg_path = engine_dir / "config.json"
    raw = read_engine_config(engine_dir)
    info = R.EngineInfo.from_config(raw, str(cfg_path))
    for name, cfg in configs.items():
        if cfg.max_batch_size > info.max_batch_size:
            problems.append(f"{name}/config.pbtxt: max_batch_size: {cfg.max_batch_size} exceeds the engine's "
                            f"build_config.max_batch_size {info.max_batch_size}: set max_batch_size: "
                            f"{info.max_batch_size} (or rebuild the engine with --max_batch_size "
                            f"{cfg.max_batch_size})")
        if "max_beam_width" in cfg.parameters:
            bw = cfg.parameters["max_beam_width"].string_value
            if not bw.isdigit() or int(bw) > info.max_beam_width:
                problems.append(f"{name}/config.pbtxt: parameters.max_beam_width: {bw!r} exceeds the engine's "
                                f"{info.max_beam_width}: set it to {info.max_beam_width}")
    if info.world_size != info.tp_size * info.pp_size:
        problems.append(f"{cfg_path}: pretrained_config.mapping.world_size: {info.world_size} != tp_size x pp_size = "
                        f"{info.tp_size} x {info.pp_size}: rebuild the checkpoint with a consistent mapping")
    ranks = sorted(engine_dir.glob("rank*.engine"))
    expected = {f"rank{r}.engine" for r in range(info.tp_size * info.pp_size)}
    present = {p.name for p in ranks}
    for missing in sorted(expected - present, key=lambda n: int(n[4:-7])):
        problems.append(f"{engine_dir}: {missing}: missing (mapping.world_size = tp {info.tp_size} x pp "
                        f"{info.pp_size} = {info.tp_size * info.pp_size} ranks need rank0..rank"
                        f"{info.tp_size * info.pp_size - 1}.engine): rerun trtllm-build for every rank")
    for extra in sorted(present - expected):
        problems.append(f"{engine_dir}: {extra}: not a rank of world_size {info.tp_size * info.pp_size}: remove it "
                        "or rebuild the engine with the matching tp/pp")
    build_info = engine_dir / ".dsv3ctl" / "build-info.json"  # written by `dsv3ctl build-engine`
    if build_info.is_file():
        try:
            built_by = json.loads(build_info.read_text()).get("tensorrt_llm_version")
        except (ValueError, AttributeError):
            built_by = None
        if built_by:
            notes.append(f"{engine_dir}: built by TensorRT-LLM {built_by} ({build_info}); the serving image's "
                         "TensorRT-LLM and backend must be that same build (engines load only there)")
    if info.placeholder:
        notes.append(f"{engine_dir}: labelled dsv3ctl skeleton: the rank*.engine files are empty placeholders; "
                     "tritonserver cannot load it")
    else:
        for p in ranks:
            if p.stat().st_size == 0:
                problems.append(f"{engine_dir}: {p.name}: empty file: rebuild the engine with trtllm-build")
    return problems


def _check_tokenizer(model_dir: Path, tdir_param: str, name: str) -> list[str]:
    rel = f"{name}/config.pbtxt"
    tdir = Path(tdir_param) if os.path.isabs(tdir_param) else model_dir / "1" / tdir_param
    missing = [f for f in TOKENIZER_FILES if not (tdir / f).is_file()]
    if missing:
        if os.path.isabs(tdir_param) and not tdir.exists():
            return [f"{rel}: parameters.tokenizer_dir: {tdir_param} does not exist here (an absolute path must "
                    "exist in the pod): use a path relative to the model's version dir, as `repo build` writes"]
        return [f"{rel}: parameters.tokenizer_dir: {tdir} lacks {', '.join(missing)}: copy them from the model's "
                "Hugging Face directory (rebuild with --tokenizer-dir)"]
    from tokenizers import Tokenizer

    from dsv3ctl.core.model import DeepSeekV3Config

    eos_expected = DeepSeekV3Config.default().eos_token_id
    problems = []
    try:
        tc = json.loads((tdir / "tokenizer_config.json").read_text(encoding="utf-8"))
        tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    except Exception as err:  # a corrupt tokenizer file: report, never a traceback
        return [f"{rel}: parameters.tokenizer_dir: {tdir} cannot be loaded ({err}): copy the model's tokenizer files again"]
    for key in ("eos_token", "pad_token"):
        tokv = tc.get(key)
        content = tokv.get("content") if isinstance(tokv, dict) else tokv
        if key == "pad_token" and content is None:
            content = tc.get("eos_token", {}).get("content") if isinstance(tc.get("eos_token"), dict) else tc.get("eos_token")
        tid = tok.token_to_id(content) if content else None
        if tid != eos_expected:
            problems.append(f"{rel}: {tdir.name}/tokenizer_config.json {key}: {content!r} has id {tid}, but DeepSeek-V3's "
                            f"end_id/pad_id is {eos_expected} (config.json eos_token_id): use the DeepSeek-V3 tokenizer")
    return problems
