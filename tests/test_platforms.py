"""deploy.platform presets (dsv3ctl.core.platforms, dsv3ctl/data/platforms.json): every value has a source, the
spec's own keys win over the preset, and every preset value is one the spec accepts."""

from __future__ import annotations

import re

import pytest

from dsv3ctl.core.hardware import GPUS
from dsv3ctl.core.platforms import apply_platform, check_platforms_data, platforms_data, preset_keys, user_set
from dsv3ctl.core.spec import PLATFORMS, parse_spec

# a doc URL, or a repository at a full commit with a file path
SOURCE = re.compile(r"https://[a-z0-9.-]+\.[a-z]+/\S+|github\.com/[\w.-]+/[\w.-]+@[0-9a-f]{40} \S+")


def test_every_preset_value_has_a_source():
    assert check_platforms_data() == []
    n = 0
    for name, entry in platforms_data()["platforms"].items():
        for path, spec in entry["keys"].items():
            for leaf in (spec["by_gpu"].values() if "by_gpu" in spec else [spec]):
                assert SOURCE.search(leaf["source"]), f"{name} {path}: {leaf['source']!r} names no URL or repo@commit"
                n += 1
    assert n >= 20
    assert platforms_data()["platforms"]["generic"]["keys"] == {}


def test_data_check_finds_a_value_without_source(monkeypatch):
    import dsv3ctl.core.platforms as mod

    data = {"platforms": {p: {"keys": {}, "notes": []} for p in PLATFORMS}}
    data["platforms"]["eks"]["keys"] = {"deploy.rdma.resource": {"value": "vpc.amazonaws.com/efa", "source": " "},
                                        "deploy.rdma.count": {"by_gpu": {"H999": {"value": 2, "source": "x"}}}}
    monkeypatch.setattr(mod, "platforms_data", lambda: data)
    errs = check_platforms_data()
    assert any("deploy.rdma.resource: needs a value and a source" in e for e in errs)
    assert any("[H999]: unknown GPU" in e for e in errs)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("gpu", list(GPUS))
def test_every_preset_value_is_a_valid_spec_value(platform, gpu):
    spec = parse_spec({"hardware": {"gpu": gpu}, "deploy": {"platform": platform}})
    out, keys = apply_platform(spec)
    assert [k.path for k in keys] == [k.path for k in preset_keys(platform, gpu)]
    assert spec.deploy.rdma.resource == "rdma/ib" and spec.deploy.node_selector == {}  # the input is not changed
    type(out).model_validate(out.model_dump())  # the result is a valid spec as a whole


def test_spec_keys_override_the_preset():
    spec = parse_spec({"hardware": {"gpu": "H200"}, "deploy": {
        "platform": "gke", "rdma": {"resource": "rdma/ib"}, "gpu_product_label": "NVIDIA-H200",
        "pod_annotations": {"networking.gke.io/interfaces": "[]"}}})
    assert user_set(spec, "deploy.rdma.resource") and not user_set(spec, "deploy.rdma.count")
    assert user_set(spec, "deploy.pod_annotations[networking.gke.io/interfaces]")
    assert not user_set(spec, "deploy.pod_annotations[networking.gke.io/default-interface]")
    out, keys = apply_platform(spec)
    set_paths = {k.path for k in keys}
    assert "deploy.rdma.resource" not in set_paths and "deploy.gpu_product_label" not in set_paths
    assert out.deploy.rdma.resource == "rdma/ib" and out.deploy.gpu_product_label == "NVIDIA-H200"
    assert out.deploy.pod_annotations["networking.gke.io/interfaces"] == "[]"
    assert out.deploy.pod_annotations["networking.gke.io/default-interface"] == "eth0"  # the preset's other entry
    assert out.deploy.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h200-141gb"}


def test_generic_sets_nothing():
    spec = parse_spec({})
    out, keys = apply_platform(spec)
    assert keys == [] and out is spec
