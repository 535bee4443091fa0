"""Graceful drain of the leader pod: wait until the server has no request in flight, or a deadline.

Run as the leader container's ``preStop`` hook (``dsv3ctl launch drain``). Kubernetes runs the hook when the pod
is deleted (rollout, scale-down, eviction, ``helm uninstall``) and sends SIGTERM only after it returns; the pod is
already removed from the Service's ready endpoints, so no new request arrives while the hook waits. The whole wait
is bounded by the pod's ``terminationGracePeriodSeconds`` (sized by :func:`dsv3ctl.core.deploy_rules.termination_grace_s`).

Requests in flight, read from Triton's Prometheus endpoint (``launch.metrics_port``, ``/metrics``):

- ``nv_inference_pending_request_count``: requests queued in Triton core, per model (triton-inference-server/core
  src/metric_model_reporter.cc ``InitializeGauges``: ``kPendingRequestMetric`` -> ``FamilyInferenceQueueSize``);
- ``nv_trt_llm_request_metrics{request_type="active"}``: requests the TensorRT-LLM executor holds (engine mode;
  triton-inference-server/tensorrtllm_backend@27e4bfbd
  inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc: family ``nv_trt_llm_request_metrics``,
  label ``request_type`` = ``active`` for "Active Request Count").

The text is parsed with prometheus_client's text-format parser.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

PENDING = "nv_inference_pending_request_count"
TRTLLM_REQUESTS = "nv_trt_llm_request_metrics"


def in_flight(metrics_text: str) -> int:
    """Requests queued or being generated, summed over models, from Prometheus text exposition format."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(metrics_text):
        for s in fam.samples:
            if s.name == PENDING or (s.name == TRTLLM_REQUESTS and s.labels.get("request_type") == "active"):
                total += s.value
    return int(total)


@dataclass
class DrainResult:
    drained: bool  #: no request in flight at the end
    seconds: float
    last_in_flight: int | None  #: None when the metrics endpoint never answered
    message: str


def drain(url: str, *, timeout_s: float, settle_s: float = 5.0, poll_s: float = 1.0,
          fetch: Callable[[str], str] | None = None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> DrainResult:
    """Wait ``settle_s`` (endpoint removal reaching every kube-proxy), then poll ``url`` every ``poll_s`` until two
    reads in a row show no request in flight, or ``timeout_s`` (seconds, from the start) passes. A metrics endpoint
    that does not answer counts as drained (the server is gone or never started)."""

    def get(u: str) -> str:
        with urllib.request.urlopen(u, timeout=max(1.0, min(5.0, poll_s * 5))) as r:
            return str(r.read().decode("utf-8", "replace"))

    fetch = fetch or get
    start = clock()
    sleep(min(settle_s, timeout_s))
    last: int | None = None
    zero_reads = 0
    while True:
        try:
            last = in_flight(fetch(url))
        except (urllib.error.URLError, OSError, ValueError) as e:
            return DrainResult(True, clock() - start, last, f"metrics endpoint {url} does not answer ({e}): nothing "
                                                             "to wait for")
        zero_reads = zero_reads + 1 if last == 0 else 0
        if zero_reads >= 2:
            return DrainResult(True, clock() - start, 0, f"no request in flight after {clock() - start:.0f} s")
        if clock() - start + poll_s > timeout_s:
            return DrainResult(False, clock() - start, last, f"{last} request(s) still in flight at the drain deadline "
                                                             f"of {timeout_s:.0f} s ({url})")
        sleep(poll_s)
