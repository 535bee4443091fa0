"""The spec: embedded default, strict keys with "did you mean", field-naming errors."""

from __future__ import annotations

import pytest
import yaml

from dsv3ctl.core.spec import default_spec_text, load_spec, parse_spec
from dsv3ctl.errors import SpecError


def test_default_is_the_fp8_example_of_the_trtllm_readme():
    s = load_spec(None)
    assert s.model.repo == "deepseek-ai/DeepSeek-V3"
    assert s.model.precision == "fp8"
    assert s.serving.mode == "engine"
    assert (s.parallelism.nodes, s.parallelism.gpus_per_node, s.parallelism.tp, s.parallelism.pp) == (2, 8, 16, 1)
    assert s.hardware.gpu == "H100-80GB"
    assert (s.serving.max_batch_size, s.serving.max_input_len, s.serving.max_seq_len) == (4, 2048, 4096)
    assert s.serving.paged_context_fmha is True


def test_starter_file_equals_defaults():
    """The commented starter spec and the model defaults agree (nothing in the file overrides a default)."""
    assert parse_spec(yaml.safe_load(default_spec_text())) == parse_spec({})


def test_unknown_key_did_you_mean():
    with pytest.raises(SpecError) as e:
        parse_spec({"parallelism": {"tensor_parallel": 8}}, "x.yaml")
    assert "parallelism.tensor_parallel: unknown key" in e.value.message
    e2 = pytest.raises(SpecError, parse_spec, {"serving": {"max_batch": 8}})
    assert "did you mean 'serving.max_batch_size'" in e2.value.message


def test_unknown_top_level_key():
    with pytest.raises(SpecError, match="did you mean 'parallelism'"):
        parse_spec({"paralelism": {}})


def test_bad_enum_names_field_and_values():
    with pytest.raises(SpecError) as e:
        parse_spec({"model": {"precision": "int4"}})
    assert "model.precision='int4'" in e.value.message
    assert "fp8" in e.value.message and "bf16" in e.value.message


def test_unknown_gpu_suggests():
    with pytest.raises(SpecError, match="did you mean 'H100-80GB'"):
        parse_spec({"hardware": {"gpu": "H100-80G"}})


def test_input_len_must_leave_room():
    with pytest.raises(SpecError, match="max_input_len=4096 must be < max_seq_len=4096"):
        parse_spec({"serving": {"max_input_len": 4096, "max_seq_len": 4096}})


def test_missing_file_says_how_to_create(tmp_path):
    with pytest.raises(SpecError, match="dsv3ctl init"):
        load_spec(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(p)


def test_top_level_must_be_mapping():
    with pytest.raises(SpecError, match="mapping"):
        parse_spec([1, 2])


def test_range_errors_name_rule_and_alternative():
    with pytest.raises(SpecError) as e:
        parse_spec({"serving": {"max_batch_size": 0}})
    assert "serving.max_batch_size=0: must be >= 1; use 1 or more" in e.value.message
    with pytest.raises(SpecError, match="parallelism.nodes='two': must be a whole number"):
        parse_spec({"parallelism": {"nodes": "two"}})


def test_gpu_error_names_the_field_and_matches_case():
    with pytest.raises(SpecError) as e:
        parse_spec({"hardware": {"gpu": "h100"}})
    assert "hardware.gpu='h100'" in e.value.message and "did you mean 'H100-80GB'" in e.value.message


def test_yaml_error_names_the_file_and_directory_is_refused(tmp_path):
    p = tmp_path / "syn.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert "syn.yaml" in e.value.message.split(":", 1)[1]
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_unknown_platform_names_the_field_and_the_choices():
    with pytest.raises(SpecError) as e:
        parse_spec({"deploy": {"platform": "openshift"}})
    msg = e.value.message
    assert "deploy.platform='openshift'" in msg
    for choice in ("generic", "gke", "eks", "aks", "network-operator"):
        assert f"'{choice}'" in msg


@pytest.mark.parametrize("key", ["name_override", "fullname_override"])
@pytest.mark.parametrize("bad", ["Serving", "serving-", "-serving", "a_b", "x" * 41])
def test_name_overrides_are_dns_labels_of_at_most_40(key, bad):
    """The chart truncates object base names to 40 characters; an override it would cut or Kubernetes would
    reject is a spec error naming the key."""
    with pytest.raises(SpecError, match=f"deploy.{key}"):
        parse_spec({"deploy": {key: bad}})
    assert getattr(parse_spec({"deploy": {key: "x" * 40}}).deploy, key) == "x" * 40
