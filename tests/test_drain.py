"""Graceful drain (``dsv3ctl launch drain``, the pods' preStop hook): requests in flight are read from Triton's
Prometheus text, and the wait ends when two reads in a row show none, or at the deadline."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time

import pytest
import yaml

from dsv3ctl.adapters.drain import drain, in_flight

# exposition text in the shape Triton serves: families named as in triton-inference-server/core
# (nv_inference_pending_request_count, a gauge per model/version) and tensorrtllm_backend's custom metrics reporter
# (nv_trt_llm_request_metrics with request_type active/max/scheduled/context)
TEXT = """# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{{model="ensemble",version="1"}} {pending}
nv_inference_pending_request_count{{model="tensorrt_llm",version="1"}} 0
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{{model="tensorrt_llm",request_type="active",version="1"}} {active}
nv_trt_llm_request_metrics{{model="tensorrt_llm",request_type="max",version="1"}} 64
nv_trt_llm_request_metrics{{model="tensorrt_llm",request_type="scheduled",version="1"}} {active}
"""


def test_in_flight_counts_pending_and_active_only():
    assert in_flight(TEXT.format(pending=2, active=5)) == 7  # not max (64) nor scheduled
    assert in_flight(TEXT.format(pending=0, active=0)) == 0
    assert in_flight("") == 0


class _Clock:
    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_drain_waits_for_two_empty_reads():
    c, seq = _Clock(), iter([3, 1, 0, 2, 0, 0])
    r = drain("u", timeout_s=60, settle_s=5, poll_s=1, clock=c.now, sleep=c.sleep,
              fetch=lambda u: TEXT.format(pending=0, active=next(seq)))
    assert r.drained and r.last_in_flight == 0 and r.seconds == pytest.approx(10)  # 5 s settle + 5 polls


def test_drain_ends_at_the_deadline_with_requests_in_flight():
    c = _Clock()
    r = drain("u", timeout_s=20, settle_s=5, poll_s=1, clock=c.now, sleep=c.sleep,
              fetch=lambda u: TEXT.format(pending=1, active=4))
    assert not r.drained and r.last_in_flight == 5 and r.seconds <= 20
    assert "5 request(s) still in flight at the drain deadline of 20 s" in r.message


def test_drain_of_a_server_that_is_gone_returns_at_once():
    r = drain("http://127.0.0.1:9/metrics", timeout_s=30, settle_s=0)
    assert r.drained and r.seconds < 10 and "does not answer" in r.message


def test_launch_drain_against_a_metrics_endpoint_that_empties(tmp_path):
    """The real command against a local HTTP endpoint whose active count falls to 0 after ~1.5 s."""
    t0 = time.monotonic()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            active = 3 if time.monotonic() - t0 < 1.5 else 0
            body = TEXT.format(pending=0, active=active).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/metrics"
        r = subprocess.run([sys.executable, "-m", "dsv3ctl", "launch", "drain", "--url", url, "--timeout", "30",
                            "--settle", "0"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "no request in flight after" in r.stdout + r.stderr
        assert time.monotonic() - t0 >= 1.5
    finally:
        srv.shutdown()


def test_every_pod_of_the_group_drains_before_sigterm(run_cli, tmp_path):
    r = run_cli("render", "--out", tmp_path / "o")
    assert r.code == 0, r.err
    lws = next(yaml.safe_load(f.read_text()) for f in sorted((tmp_path / "o").glob("*-leaderworkerset-*.yaml")))
    tpl = lws["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        spec = tpl[role]["spec"]
        cmd = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert cmd[:3] == ["dsv3ctl", "launch", "drain"], cmd
        assert int(cmd[cmd.index("--timeout") + 1]) == spec["terminationGracePeriodSeconds"] - 10
