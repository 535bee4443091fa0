"""A real, local Kubernetes on 127.0.0.1 for tests and the demo: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok (fake GPU nodes) and the LeaderWorkerSet manager with its
webhooks, every one started here as a plain process, tracked by PID and stopped by PID.

Binaries come from ``tools/build.sh`` (pinned Go modules, content-addressed cache; see docs/testbed.md);
the LWS CRDs, the LWS webhook manifest and kwok's default stages are copied by the same script from the Go
module cache into ``<cache>/<key>/share``, so nothing here needs Go or the network at run time.

Run directory (default ``<checkout>/.run/testbed``, or ``$DSV3CTL_TESTBED_DIR``)::

    state.json      ports, PIDs, binary paths, owner ("manual" or "pytest"), node count
    kubeconfig      admin kubeconfig (client certificate in group system:masters), server 127.0.0.1
    logs/<c>.log    one log per component
    pids/<c>.pid    one PID file per component (the same PIDs as state.json)
    pki/            CA, apiserver/webhook serving certs, admin client cert, service-account key
    users/<pid>     pytest sessions using the cluster (see :func:`acquire` / :func:`release`)

Command line: ``python -m dsv3ctl.adapters.testbed up|down|status|env`` (also ``make testbed-*``).

Only loopback is used: every component binds 127.0.0.1; pod IPs that kwok writes are fake and never
contacted.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv3ctl.errors import RuntimeFailure, SpecError
from dsv3ctl.fsutil import atomic_write_text

K8S_VERSION = "v1.36.3"
"""Version the apiserver reports (``tools/k8s/go.mod`` pins k8s.io/kubernetes v1.36.3, stamped by build.sh)."""
HELM4_VERSION = "v4.2.4"
HELM3_VERSION = "v3.21.4"
LWS_VERSION = "v0.9.0"
"""LWS manager and CRDs (tools/lws/go.mod). v0.10.0 is refused by the Go proxy (HTTP 403), see docs/testbed.md."""

DEFAULT_NODES = 2
GPUS_PER_NODE = 8
RDMA_PER_NODE = 8
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
NODE_PREFIX = "kwok-gpu-"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
WEBHOOK_PORT = 9443
"""Preferred LWS webhook port on 127.0.0.1; a free port is taken instead when 9443 is busy."""

LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"

# Start order; stop runs it backwards.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "lws-manager")

_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------- paths


def checkout_root() -> Path:
    """The checkout this package runs from (editable install); holds ``tools/build.sh``."""
    return _ROOT


def default_run_dir() -> Path:
    """``$DSV3CTL_TESTBED_DIR`` or ``<checkout>/.run/testbed`` (git-ignored)."""
    env = os.environ.get("DSV3CTL_TESTBED_DIR")
    return Path(env).resolve() if env else _ROOT / ".run" / "testbed"


def tools_bin_dir() -> Path:
    """The bin directory of the pinned tools: ``$DSV3CTL_TOOLS_BIN``, else ``tools/build.sh --print``.

    Raises :class:`RuntimeFailure` when the script cannot run (no ``go`` on PATH, no checkout).
    """
    env = os.environ.get("DSV3CTL_TOOLS_BIN")
    if env:
        return Path(env).resolve()
    script = _ROOT / "tools" / "build.sh"
    if not script.is_file():
        raise RuntimeFailure(f"{script} not found", hint="set DSV3CTL_TOOLS_BIN to a directory with the built tools")
    try:
        out = subprocess.run([str(script), "--print"], capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeFailure(f"tools/build.sh --print failed: {e}", hint="is go on PATH?") from None
    return Path(out.stdout.strip().splitlines()[-1])


REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                     "kwok", "lws-manager", "helm", "helm3", "kubeconform")


def _check_tools(bin_dir: Path) -> Path:
    missing = [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    share = bin_dir.parent / "share"
    for sub in ("lws/crd", "lws/webhook/manifests.yaml", "kwok/stages"):
        if not (share / sub).exists():
            missing.append(f"share/{sub}")
    if missing:
        raise RuntimeFailure(f"testbed tools missing in {bin_dir.parent}: {', '.join(missing)}",
                             hint="run `make tools` (tools/build.sh) first")
    return share


REAL_NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "ctr", "containerd-shim-runc-v2", "coredns", "pause",
                      "cni/bridge", "cni/host-local", "cni/loopback", "cni/portmap")
MAX_REAL_NODES = 8


def _check_real_tools(bin_dir: Path) -> None:
    missing = [b for b in REAL_NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise RuntimeFailure(f"real-node tools missing in {bin_dir}: {', '.join(missing)}",
                             hint="run `make tools` (tools/build.sh) first")


def default_real_nodes() -> int:
    """``$DSV3CTL_REAL_NODES`` (an integer), else 2: what ``make testbed-up`` starts."""
    v = os.environ.get("DSV3CTL_REAL_NODES", "2")
    try:
        return int(v)
    except ValueError:
        raise SpecError(f"DSV3CTL_REAL_NODES must be an integer, got {v!r}", hint="DSV3CTL_REAL_NODES=2") from None


# --------------------------------------------------------------------------------------------- handle


@dataclass
class Testbed:
    """A running (or about to run) testbed. Paths are absolute.

    ``started`` is True when this process started the cluster (so it may stop it); False when it reused
    one that was already running.
    """

    run_dir: Path
    bin_dir: Path
    started: bool = False
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def share_dir(self) -> Path:
        return self.bin_dir.parent / "share"

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def lws_crd_dir(self) -> Path:
        """Directory with the LWS CRD YAMLs (leaderworkersets + disaggregatedsets) of the pinned LWS tag."""
        return self.share_dir / "lws" / "crd"

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    @property
    def helm3(self) -> Path:
        return self.bin_dir / "helm3"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def kubeconform(self) -> Path:
        return self.bin_dir / "kubeconform"

    @property
    def nodes(self) -> list[str]:
        return [f"{NODE_PREFIX}{i}" for i in range(int(self.state.get("nodes", DEFAULT_NODES)))]

    @property
    def real_nodes(self) -> list[str]:
        """Names of the real (kubelet + containerd) nodes; empty when the testbed has none."""
        from dsv3ctl.adapters import realnodes

        return [realnodes.node_name(i) for i in range(int(self.state.get("real", {}).get("nodes", 0)))]

    def load_image(self, archive: Path) -> list[str]:
        """Import a docker-archive or OCI tar into every real node's containerd (namespace k8s.io), so pods
        with ``imagePullPolicy: Never``/``IfNotPresent`` find it. Returns the image names present on every
        real node afterwards."""
        from dsv3ctl.adapters import realnodes

        if not self.real_nodes:
            raise RuntimeFailure(f"the testbed in {self.run_dir} has no real nodes to load {archive} into",
                                 hint="start it with real nodes: make testbed-up (DSV3CTL_REAL_NODES=2)")
        if not Path(archive).is_file():
            raise RuntimeFailure(f"image archive {archive} not found")
        present: set[str] | None = None
        for i in range(len(self.real_nodes)):
            sock = realnodes.containerd_socket(self.run_dir, i)
            realnodes.import_image(self.bin_dir, sock, Path(archive))
            names = set(realnodes.list_images(self.bin_dir, sock))
            present = names if present is None else present & names
        return sorted(present or ())

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` plus PATH with the tools first and KUBECONFIG: pass to ``subprocess.run(env=...)``."""
        e = dict(os.environ)
        e["PATH"] = f"{self.bin_dir}{os.pathsep}{e.get('PATH', '')}"
        e["KUBECONFIG"] = str(self.kubeconfig)
        return e

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster (imports the kubernetes package lazily)."""
        from kubernetes import config as kconfig

        return kconfig.new_client_from_config(config_file=str(self.kubeconfig))

    def log_tails(self, lines: int = 25) -> str:
        """The last ``lines`` lines of every component log, for failure reports."""
        return log_tails(self.run_dir, lines)


def log_tails(run_dir: Path | None = None, lines: int = 25) -> str:
    """Last ``lines`` lines of each ``<run_dir>/logs/*.log`` as one string (empty when none)."""
    logs = (run_dir or default_run_dir()) / "logs"
    parts = []
    for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        parts.append(f"----- {log} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- state


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "state.json", json.dumps(state, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``<run_dir>/.lock`` so two sessions never start or stop the same cluster at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------- processes


def _proc_alive(pid: int, exe: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if ``exe`` is given, its argv[0] is ``exe``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if exe is not None:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
            return argv0 == exe
        return True
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _stop_pid(pid: int, exe: str, grace_s: float = 10.0) -> bool:
    """SIGTERM ``pid`` (only if it still runs ``exe``), SIGKILL after ``grace_s``. True if it was running."""
    if not _proc_alive(pid, exe):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _proc_alive(pid):
            _reap(pid)  # it may have exited between the two calls: leave no zombie behind
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not _proc_alive(pid):
            _reap(pid)
            break
        time.sleep(0.1)
    return True


def _spawn(run_dir: Path, state: dict[str, Any], name: str, argv: list[str],
           env: dict[str, str] | None = None, into: dict[str, Any] | None = None) -> int:
    """Start one component detached (own session), log to logs/<name>.log, record its PID at once
    (in ``into`` when given, a part of ``state`` such as the real nodes' record; else in ``state``)."""
    log = open(run_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    log.write(f"\n=== {_dt.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)}\n".encode())
    log.flush()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=run_dir, env=env, start_new_session=True)
    log.close()
    rec = state if into is None else into
    rec.setdefault("pids", {})[name] = proc.pid
    rec.setdefault("exes", {})[name] = argv[0]
    _write_state(run_dir, state)
    atomic_write_text(run_dir / "pids" / f"{name}.pid", f"{proc.pid}\n")
    return proc.pid


def _free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- PKI


def _make_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), webhook serving cert, SA key.

    All EC P-256, valid 30 days; written as PEM under ``pki``. Uses the ``cryptography`` package.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=30)

    def key_pem(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("dsv3ctl-testbed-ca")).issuer_name(name("dsv3ctl-testbed-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(key_pem(ca_key))

    issue_cert(pki, "apiserver", "kube-apiserver", None, True,
               ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
                "localhost"], ["127.0.0.1", "10.96.0.1"])
    issue_cert(pki, "admin", "dsv3ctl-testbed-admin", "system:masters", False)
    # the apiserver's client cert towards kubelets (logs, exec, port-forward on real nodes)
    issue_cert(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", False)
    webhook = pki / "webhook"
    webhook.mkdir(exist_ok=True)
    issue_cert(pki, "webhook/tls", "lws-webhook", None, True, ["localhost"], ["127.0.0.1"])
    sa = ec.generate_private_key(ec.SECP256R1())
    (pki / "sa.key").write_bytes(key_pem(sa))
    (pki / "sa.pub").write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def issue_cert(pki: Path, stem: str, cn: str, org: str | None, server: bool, dns: list[str] | None = None,
               ips: list[str] | None = None) -> None:
    """A leaf cert ``<pki>/<stem>.crt`` + key signed by the testbed CA (``pki/ca.{crt,key}``), EC P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key: Any = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    k = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca.subject).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + _dt.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if dns or ips:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / f"{stem}.key").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))


def _b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def _write_kubeconfig(run_dir: Path, api_port: int) -> None:
    pki = run_dir / "pki"
    write_kubeconfig(run_dir / "kubeconfig", api_port, pki / "admin.crt", pki / "admin.key", pki)


def write_kubeconfig(path: Path, api_port: int, crt: Path, key: Path, pki: Path) -> None:
    """A kubeconfig for ``https://127.0.0.1:<api_port>`` with the client cert ``crt``/``key`` (mode 0600)."""
    import yaml

    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "dsv3ctl-testbed", "preferences": {},
        "clusters": [{"name": "dsv3ctl-testbed", "cluster": {
            "server": f"https://127.0.0.1:{api_port}", "certificate-authority-data": _b64(pki / "ca.crt")}}],
        "users": [{"name": "dsv3ctl-testbed-admin", "user": {
            "client-certificate-data": _b64(crt), "client-key-data": _b64(key)}}],
        "contexts": [{"name": "dsv3ctl-testbed", "context": {
            "cluster": "dsv3ctl-testbed", "user": "dsv3ctl-testbed-admin", "namespace": "default"}}],
    }
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False), mode=0o600)


# --------------------------------------------------------------------------------------------- health


def _http_ok(url: str, run_dir: Path | None = None, timeout: float = 2.0) -> tuple[bool, str]:
    """GET ``url``; https to the apiserver uses the testbed CA and admin cert, other https skips verify."""
    ctx: ssl.SSLContext | None = None
    if url.startswith("https://"):
        if run_dir is not None:
            pki = run_dir / "pki"
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        else:
            ctx = ssl._create_unverified_context()  # noqa: S323 - self-signed loopback component certs
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:  # noqa: S310 - loopback only
            return r.status == 200, r.read(200).decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - any failure means "not healthy yet"
        return False, str(e)


def _tls_listening(port: int, timeout: float = 2.0) -> bool:
    ctx = ssl._create_unverified_context()  # noqa: S323
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s, \
                ctx.wrap_socket(s, server_hostname="127.0.0.1"):
            return True
    except OSError:
        return False


def _health_urls(state: dict[str, Any]) -> dict[str, str]:
    p = state.get("ports", {})
    return {
        "etcd": f"http://127.0.0.1:{p.get('etcd')}/health",
        "kube-apiserver": f"https://127.0.0.1:{p.get('apiserver')}/readyz",
        "kube-controller-manager": f"https://127.0.0.1:{p.get('kcm')}/healthz",
        "kube-scheduler": f"https://127.0.0.1:{p.get('scheduler')}/healthz",
        "kwok": f"http://127.0.0.1:{p.get('kwok')}/healthz",
        "lws-manager": f"http://127.0.0.1:{p.get('lws_health')}/readyz",
    }


def _component_health(run_dir: Path, state: dict[str, Any], name: str) -> tuple[bool, str]:
    pid = state.get("pids", {}).get(name)
    exe = state.get("exes", {}).get(name)
    if not pid or not _proc_alive(int(pid), exe):
        return False, "not running"
    url = _health_urls(state)[name]
    ok, detail = _http_ok(url, run_dir if name == "kube-apiserver" else None)
    if ok and name == "lws-manager" and not _tls_listening(int(state["ports"]["webhook"])):
        return False, "webhook port not serving"
    return ok, f"pid {pid}" if ok else f"pid {pid}: {detail[:120]}"


def _wait(what: str, check: Any, timeout_s: float, run_dir: Path, pids: dict[str, int] | None = None,
          state: dict[str, Any] | None = None, interval: float = 0.25) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail early if a watched process exited."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # noqa: BLE001 - keep polling; report the last error on timeout
            last = e
        else:
            if last:
                return last
        for name, pid in (pids or {}).items():
            if not _proc_alive(pid):
                raise RuntimeFailure(f"testbed: {name} (pid {pid}) exited while waiting for {what}\n"
                                     + log_tails(run_dir, 30))
        time.sleep(interval)
    raise RuntimeFailure(f"testbed: timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})\n"
                         + log_tails(run_dir, 30))


# --------------------------------------------------------------------------------------------- objects


def node_manifest(index: int, gpus: int = GPUS_PER_NODE) -> dict[str, Any]:
    """A kwok-managed fake GPU node: 8x H100 80GB (``nvidia.com/gpu``), ``rdma/ib``, 2 TiB memory."""
    name = f"{NODE_PREFIX}{index}"
    resources = {"cpu": "192", "memory": "2Ti", "pods": "110", "ephemeral-storage": "7Ti",
                 "nvidia.com/gpu": str(gpus), "rdma/ib": str(RDMA_PER_NODE)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "node-role.kubernetes.io/agent": "", "type": "kwok",
                "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(gpus), "nvidia.com/gpu.memory": "81559",
                "feature.node.kubernetes.io/rdma.available": "true",
            },
        },
        "spec": {},
        "status": {"capacity": resources, "allocatable": dict(resources),
                   # fake addresses (kwok keeps them; pods report them as hostIP); never contacted
                   "addresses": [{"type": "InternalIP", "address": f"10.255.{index // 250}.{index % 250 + 1}"},
                                 {"type": "Hostname", "address": name}]},
    }


def _webhook_configs(share: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """The LWS tag's own webhook manifest, rewritten to ``url: https://127.0.0.1:<port>/...`` + caBundle.

    Pod webhooks get ``objectSelector: leaderworkerset.sigs.k8s.io/name Exists`` (as the upstream
    kustomize patches do) so pods that are not LWS pods never depend on the manager.
    """
    import yaml

    out = []
    for doc in yaml.safe_load_all((share / "lws" / "webhook" / "manifests.yaml").read_text()):
        if not doc:
            continue
        doc["metadata"] = {"name": f"lws-{doc['metadata']['name']}", "labels": {"app.kubernetes.io/part-of": "dsv3ctl-testbed"}}
        for wh in doc.get("webhooks", []):
            path = wh["clientConfig"]["service"]["path"]
            wh["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            wh["timeoutSeconds"] = 10
            if any("pods" in r.get("resources", []) for r in wh.get("rules", [])):
                wh["objectSelector"] = {"matchExpressions": [{"key": LWS_NAME_LABEL, "operator": "Exists"}]}
        out.append(doc)
    return out


def _lws_config(run_dir: Path, webhook_port: int, health_port: int) -> Path:
    import yaml

    cfg = {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1", "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(run_dir / "pki" / "webhook")},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
    }
    p = run_dir / "lws-config.yaml"
    atomic_write_text(p, yaml.safe_dump(cfg, sort_keys=False))
    return p


def _kwok_config(run_dir: Path, share: Path) -> Path:
    """kwok's default fast stages (node-initialize, node-heartbeat-with-lease, pod-ready/complete/delete)."""
    docs = [f.read_text() for f in sorted((share / "kwok" / "stages").glob("*.yaml"))]
    p = run_dir / "kwok-stages.yaml"
    atomic_write_text(p, "\n---\n".join(d.strip() for d in docs) + "\n")
    return p


# --------------------------------------------------------------------------------------------- up / down


def healthy(run_dir: Path | None = None) -> bool:
    """True when every component of the testbed in ``run_dir`` runs and answers its health check."""
    run_dir = run_dir or default_run_dir()
    state = _read_state(run_dir)
    if not state.get("up"):
        return False
    real = state.get("real", {})
    if any(not _proc_alive(int(pid), real.get("exes", {}).get(n)) for n, pid in real.get("pids", {}).items()):
        return False
    return all(_component_health(run_dir, state, c)[0] for c in COMPONENTS)


def up(nodes: int = DEFAULT_NODES, run_dir: Path | None = None, bin_dir: Path | None = None,
       timeout_s: float = 300.0, owner: str = "manual", register_user: bool = False,
       real_nodes: int = 0) -> Testbed:
    """Start the testbed (or reuse a healthy one in ``run_dir``) and wait until every node is Ready.

    ``nodes`` fake GPU nodes (8 ``nvidia.com/gpu`` each); ``timeout_s`` bounds the whole start (seconds).
    Returns a :class:`Testbed` with ``started=True`` only if this call started the processes.
    Raises :class:`SpecError` for a bad node count, :class:`RuntimeFailure` when tools are missing or a
    component fails (the message carries the component log tails). With ``register_user`` this process is
    recorded under ``<run_dir>/users/<pid>`` while still holding the lock (see :func:`acquire`).
    """
    if not 1 <= nodes <= 64:
        raise SpecError(f"testbed nodes must be between 1 and 64, got {nodes}")
    if not 0 <= real_nodes <= MAX_REAL_NODES:
        raise SpecError(f"testbed real nodes must be between 0 and {MAX_REAL_NODES}, got {real_nodes}",
                        hint="--real-nodes 2 (the default of `make testbed-up`) or 0 for kwok nodes only")
    run_dir = (run_dir or default_run_dir()).resolve()
    bin_dir = (bin_dir or tools_bin_dir()).resolve()
    with _locked(run_dir):
        if healthy(run_dir):
            state = _read_state(run_dir)
            if int(state.get("nodes", 0)) != nodes:
                raise RuntimeFailure(f"a testbed with {state.get('nodes')} nodes already runs in {run_dir}, "
                                     f"{nodes} wanted", hint="make testbed-down, or set DSV3CTL_TESTBED_DIR")
            if int(state.get("real_nodes", 0)) < real_nodes:
                raise RuntimeFailure(f"a testbed with {state.get('real_nodes', 0)} real nodes already runs in "
                                     f"{run_dir}, {real_nodes} wanted",
                                     hint="make testbed-down first (or DSV3CTL_TESTBED_DIR for another cluster)")
            tb = Testbed(run_dir, Path(state.get("bin_dir", bin_dir)), started=False, state=state)
        else:
            _stop_all(run_dir)
            share = _check_tools(bin_dir)
            try:
                if real_nodes:
                    _check_real_tools(bin_dir)
                state = _start(run_dir, bin_dir, share, nodes, timeout_s, owner, real_nodes)
            except BaseException:
                _stop_all(run_dir)
                raise
            tb = Testbed(run_dir, bin_dir, started=True, state=state)
        if register_user:
            (run_dir / "users").mkdir(exist_ok=True)
            (run_dir / "users" / str(os.getpid())).write_text(f"{'started' if tb.started else 'reused'}\n")
        return tb


def _start(run_dir: Path, bin_dir: Path, share: Path, nodes: int, timeout_s: float, owner: str,
           real_nodes: int = 0) -> dict[str, Any]:
    t0 = time.monotonic()
    deadline = t0 + timeout_s

    def left() -> float:
        return max(5.0, deadline - time.monotonic())

    for sub in ("logs", "pids", "users"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    for log in (run_dir / "logs").glob("*.log"):
        log.unlink()
    for sub in ("etcd-data", "pki"):
        _rmtree(run_dir / sub)
    _make_pki(run_dir / "pki")
    pki = run_dir / "pki"
    ports = {"etcd": _free_port(), "etcd_peer": _free_port(), "apiserver": _free_port(), "kcm": _free_port(),
             "scheduler": _free_port(), "kwok": _free_port(), "webhook": _free_port(WEBHOOK_PORT),
             "lws_health": _free_port()}
    state: dict[str, Any] = {"up": False, "owner": owner, "nodes": nodes, "real_nodes": real_nodes,
                             "bin_dir": str(bin_dir),
                             "ports": ports, "pids": {}, "exes": {}, "k8s_version": K8S_VERSION,
                             "created": _dt.datetime.now().isoformat(timespec="seconds")}
    _write_state(run_dir, state)
    _write_kubeconfig(run_dir, ports["apiserver"])
    kubeconfig = str(run_dir / "kubeconfig")
    b = {n: str(bin_dir / n) for n in REQUIRED_BINARIES}
    clean_env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "HTTPS_PROXY", "HTTP_PROXY",
                                                                     "https_proxy", "http_proxy")}
    clean_env["NO_PROXY"] = clean_env["no_proxy"] = "127.0.0.1,localhost"

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    pid = _spawn(run_dir, state, "etcd", [
        b["etcd"], "--name=testbed", f"--data-dir={run_dir / 'etcd-data'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=testbed={peer_url}", "--initial-cluster-state=new",
        "--unsafe-no-fsync=true", "--quota-backend-bytes=4294967296", "--log-level=warn",
    ], env=clean_env)
    _wait("etcd /health", lambda: _http_ok(f"{etcd_url}/health")[0], left(), run_dir, {"etcd": pid})

    pid_api = _spawn(run_dir, state, "kube-apiserver", [
        b["kube-apiserver"], f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
        f"--cert-dir={pki / 'apiserver-generated'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=RBAC", "--allow-privileged=true",
        "--endpoint-reconciler-type=none", "--profiling=false", "--v=1",
        # front-proxy settings (unused; without them kcm/scheduler log an error every few seconds)
        f"--requestheader-client-ca-file={pki / 'ca.crt'}", "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        # towards real kubelets (logs/exec/port-forward): connect to the node IP, never resolve node names
        # through the host's DNS; client cert the kubelets accept, their serving certs checked against the CA
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
    ], env=clean_env)
    _wait("kube-apiserver /readyz", lambda: _http_ok(_health_urls(state)["kube-apiserver"], run_dir)[0],
          left(), run_dir, {"etcd": pid, "kube-apiserver": pid_api})
    t_api = time.monotonic() - t0

    common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
              f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", "--leader-elect=false",
              "--v=1"]
    pids = {"etcd": pid, "kube-apiserver": pid_api}
    pids["kube-controller-manager"] = _spawn(run_dir, state, "kube-controller-manager", [
        b["kube-controller-manager"], *common, f"--secure-port={ports['kcm']}",
        f"--cert-dir={pki / 'kcm-generated'}",
        f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--use-service-account-credentials=false",
    ], env=clean_env)
    pids["kube-scheduler"] = _spawn(run_dir, state, "kube-scheduler", [
        b["kube-scheduler"], *common, f"--secure-port={ports['scheduler']}",
        f"--cert-dir={pki / 'scheduler-generated'}",
    ], env=clean_env)
    pids["kwok"] = _spawn(run_dir, state, "kwok", [
        b["kwok"], f"--kubeconfig={kubeconfig}", f"--config={_kwok_config(run_dir, share)}",
        "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--cidr={POD_CIDR}", "--node-lease-duration-seconds=40",
        f"--server-address=127.0.0.1:{ports['kwok']}",
    ], env=clean_env)

    api = Testbed(run_dir, bin_dir, state=state).api_client()
    from kubernetes import client as k

    core: Any = k.CoreV1Api(api)  # dict bodies; the client's stubs want model objects
    ext: Any = k.ApiextensionsV1Api(api)
    import yaml

    crd_names = []
    for f in sorted((share / "lws" / "crd").glob("*.yaml")):
        crd = yaml.load(f.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB+ files
        ext.create_custom_resource_definition(crd)
        crd_names.append(crd["metadata"]["name"])
    for i in range(nodes):
        core.create_node(node_manifest(i))

    def crds_established() -> bool:
        for n in crd_names:
            conds = ext.read_custom_resource_definition(n).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conds):
                return False
        return True

    _wait("LWS CRDs Established", crds_established, left(), run_dir, pids)
    lws_env = dict(clean_env, KUBECONFIG=kubeconfig)
    pids["lws-manager"] = _spawn(run_dir, state, "lws-manager", [
        b["lws-manager"], f"--config={_lws_config(run_dir, ports['webhook'], ports['lws_health'])}",
        "--zap-log-level=info",
    ], env=lws_env)
    _wait("lws-manager readyz and webhook port",
          lambda: _http_ok(_health_urls(state)["lws-manager"])[0] and _tls_listening(ports["webhook"]),
          left(), run_dir, pids)
    adm: Any = k.AdmissionregistrationV1Api(api)
    for cfg in _webhook_configs(share, ports["webhook"], _b64(pki / "ca.crt")):
        if cfg["kind"] == "MutatingWebhookConfiguration":
            adm.create_mutating_webhook_configuration(cfg)
        else:
            adm.create_validating_webhook_configuration(cfg)

    def all_ready() -> bool:
        items = core.list_node(label_selector="type=kwok").items
        ready = [n for n in items if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])]
        return len(ready) == nodes

    _wait(f"{nodes} kwok nodes Ready", all_ready, left(), run_dir, pids)
    _wait("default service account", lambda: core.read_namespaced_service_account("default", "default"),
          left(), run_dir, pids)
    for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
        _wait(f"{name} healthz", lambda n=name: _component_health(run_dir, state, n)[0], left(), run_dir, pids)
    api.close()
    state["seconds_to_control_plane"] = round(time.monotonic() - t0, 1)
    if real_nodes:
        from dsv3ctl.adapters import realnodes

        realnodes.make_node_pki(pki, real_nodes)
        realnodes.start(run_dir, bin_dir, state, real_nodes, ports["apiserver"], spawn=_spawn, wait=_wait,
                        free_port=_free_port, write_state=_write_state, deadline=deadline,
                        gpu_product=GPU_PRODUCT, gpus=GPUS_PER_NODE, rdma=RDMA_PER_NODE)
    state["up"] = True
    state["seconds_to_apiserver"] = round(t_api, 1)
    state["seconds_to_ready"] = round(time.monotonic() - t0, 1)
    _write_state(run_dir, state)
    return state


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


def _stop_all(run_dir: Path) -> list[str]:
    state = _read_state(run_dir)
    stopped = []
    if state.get("real"):
        from dsv3ctl.adapters import realnodes

        stopped += realnodes.stop(run_dir, state, _stop_pid, _write_state)
    pids = state.get("pids", {})
    exes = state.get("exes", {})
    for name in reversed(COMPONENTS):
        if name in pids and _stop_pid(int(pids[name]), exes.get(name, "")):
            stopped.append(name)
    if state:
        state.update(up=False, pids={}, exes={})
        _write_state(run_dir, state)
    for f in (run_dir / "pids").glob("*.pid") if (run_dir / "pids").is_dir() else []:
        f.unlink()
    _rmtree(run_dir / "etcd-data")
    return stopped


def stop_real_nodes(run_dir: Path) -> list[str]:
    """Stop only the real nodes of a running testbed and undo their host changes (the control plane and
    kwok nodes stay). Returns what was stopped."""
    from dsv3ctl.adapters import realnodes

    with _locked(run_dir):
        state = _read_state(run_dir)
        return realnodes.stop(run_dir, state, _stop_pid, _write_state)


def start_real_nodes(run_dir: Path, nodes: int, timeout_s: float = 120.0) -> dict[str, Any]:
    """Add ``nodes`` real nodes to a running testbed that has none. Returns the timing figures (seconds)."""
    from dsv3ctl.adapters import realnodes

    with _locked(run_dir):
        state = _read_state(run_dir)
        if not state.get("up"):
            raise RuntimeFailure(f"no testbed runs in {run_dir}", hint="make testbed-up")
        if state.get("real", {}).get("pids"):
            raise RuntimeFailure(f"the testbed in {run_dir} already has real nodes")
        bin_dir = Path(state["bin_dir"])
        _check_real_tools(bin_dir)
        realnodes.make_node_pki(run_dir / "pki", nodes)
        try:
            secs = realnodes.start(run_dir, bin_dir, state, nodes, int(state["ports"]["apiserver"]), spawn=_spawn,
                                   wait=_wait, free_port=_free_port, write_state=_write_state,
                                   deadline=time.monotonic() + timeout_s, gpu_product=GPU_PRODUCT,
                                   gpus=GPUS_PER_NODE, rdma=RDMA_PER_NODE)
        except BaseException:
            realnodes.stop(run_dir, state, _stop_pid, _write_state)
            raise
        state["real_nodes"] = nodes
        _write_state(run_dir, state)
        return secs


def down(run_dir: Path | None = None) -> list[str]:
    """Stop every component recorded in ``run_dir`` by PID (SIGTERM, SIGKILL after 10 s); keep the logs.

    A PID is signalled only if its argv[0] is still the recorded binary (no harm from recycled PIDs).
    Returns the names of the components that were running.
    """
    run_dir = (run_dir or default_run_dir()).resolve()
    with _locked(run_dir):
        return _stop_all(run_dir)


def status(run_dir: Path | None = None) -> dict[str, Any]:
    """Per-component ``{"ok": bool, "detail": str}`` plus ``nodes_ready`` and ``kubeconfig``; never raises."""
    run_dir = (run_dir or default_run_dir()).resolve()
    state = _read_state(run_dir)
    comps = {}
    for c in COMPONENTS:
        ok, detail = _component_health(run_dir, state, c) if state.get("pids") else (False, "not running")
        comps[c] = {"ok": ok, "detail": detail}
    result: dict[str, Any] = {"run_dir": str(run_dir), "kubeconfig": str(run_dir / "kubeconfig"),
                              "owner": state.get("owner"), "components": comps, "nodes_ready": None,
                              "seconds_to_ready": state.get("seconds_to_ready")}
    if comps["kube-apiserver"]["ok"]:
        try:
            from kubernetes import client as k

            api = Testbed(run_dir, Path(state["bin_dir"]), state=state).api_client()
            nodes: Any = k.CoreV1Api(api).list_node().items
            result["nodes_ready"] = sum(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
                                        for n in nodes)
            result["nodes"] = len(nodes)
            api.close()
        except Exception as e:  # noqa: BLE001 - status reports, never raises
            result["nodes_error"] = str(e)
    result["healthy"] = bool(state.get("up")) and all(v["ok"] for v in comps.values())
    return result


def status_line(s: dict[str, Any]) -> str:
    """The last line of ``status``: nodes Ready, or why they are unknown (never "None")."""
    comps = s["components"]
    if not any(v["ok"] for v in comps.values()):
        return f"testbed not running (run dir {s['run_dir']}); start it with `make testbed-up`"
    if s.get("nodes_ready") is None:
        why = s.get("nodes_error") or "kube-apiserver is down"
        return f"nodes: unknown ({why}); restart with `make testbed-down testbed-up`"
    return f"nodes Ready: {s['nodes_ready']} of {s.get('nodes', s['nodes_ready'])}  kubeconfig: {s['kubeconfig']}"


# --------------------------------------------------------------------------------------------- pytest use


def acquire(nodes: int = DEFAULT_NODES, run_dir: Path | None = None, timeout_s: float = 300.0,
            real_nodes: int = 0) -> Testbed:
    """Use the testbed from a test session: reuse a healthy one or start one (owner "pytest").

    Registers this process under ``<run_dir>/users/<pid>``; pair with :func:`release`. Errors as :func:`up`.
    """
    return up(nodes=nodes, run_dir=run_dir, timeout_s=timeout_s, owner="pytest", register_user=True,
              real_nodes=real_nodes)


def release(tb: Testbed) -> bool:
    """Unregister this process; stop the cluster if it was started by a test session (owner "pytest"), no
    other live session uses it and ``DSV3CTL_TESTBED_KEEP`` is not set. A cluster started by
    ``make testbed-up`` (owner "manual") is never stopped here. Returns True if it stopped the cluster.
    """
    with _locked(tb.run_dir):
        users = tb.run_dir / "users"
        (users / str(os.getpid())).unlink(missing_ok=True)
        live = [u for u in users.iterdir() if u.name.isdigit() and _proc_alive(int(u.name))] if users.is_dir() else []
        state = _read_state(tb.run_dir)
        if live or state.get("owner") != "pytest" or os.environ.get("DSV3CTL_TESTBED_KEEP"):
            return False
        _stop_all(tb.run_dir)
        return True


# --------------------------------------------------------------------------------------------- CLI


def env_exports(run_dir: Path | None = None, bin_dir: Path | None = None) -> str:
    """Shell lines ``export PATH=<bin>:$PATH`` and ``export KUBECONFIG=<run_dir>/kubeconfig``."""
    import shlex

    run_dir = (run_dir or default_run_dir()).resolve()
    bin_dir = bin_dir or tools_bin_dir()
    return (f"export PATH={shlex.quote(str(bin_dir))}:\"$PATH\"\n"
            f"export KUBECONFIG={shlex.quote(str(run_dir / 'kubeconfig'))}\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m dsv3ctl.adapters.testbed up|down|status|env|load-image`` (exit 0 ok, 1 failure, 2 usage)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dsv3ctl.adapters.testbed", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: %(default)s → .run/testbed)")
    sub = p.add_subparsers(dest="cmd", required=True)
    pu = sub.add_parser("up", help="start (or reuse) the cluster; wait until all nodes are Ready")
    pu.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    pu.add_argument("--real-nodes", type=int, default=None,
                    help="real kubelet+containerd nodes next to the kwok ones (default $DSV3CTL_REAL_NODES or 2)")
    pu.add_argument("--timeout", type=float, default=300.0, help="seconds")
    sub.add_parser("down", help="stop every component by PID")
    ps = sub.add_parser("status", help="health of every component; exit 1 if not healthy")
    ps.add_argument("--json", action="store_true")
    sub.add_parser("env", help="print export lines for PATH and KUBECONFIG")
    pl = sub.add_parser("load-image", help="import a docker-archive/OCI tar into every real node's containerd")
    pl.add_argument("archive", type=Path)
    a = p.parse_args(argv)
    try:
        if a.cmd == "up":
            t0 = time.monotonic()
            real = default_real_nodes() if a.real_nodes is None else a.real_nodes
            tb = up(nodes=a.nodes, run_dir=a.run_dir, timeout_s=a.timeout, owner="manual", real_nodes=real)
            how = "started" if tb.started else "already running, reused"
            print(f"testbed {how}: {len(tb.nodes)} kwok GPU nodes + {len(tb.real_nodes)} real nodes Ready in "
                  f"{time.monotonic() - t0:.1f} s; KUBECONFIG={tb.kubeconfig}")
            if tb.started:
                secs = tb.state.get("real", {}).get("seconds") or {}
                print(f"  control plane {tb.state.get('seconds_to_control_plane')} s"
                      + "".join(f"; {k.replace('_', ' ')} {v} s" for k, v in secs.items()))
            print('use it from a shell: eval "$(make -s testbed-env)"')
        elif a.cmd == "down":
            stopped = down(a.run_dir)
            print(f"testbed stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        elif a.cmd == "status":
            s = status(a.run_dir)
            if a.json:
                print(json.dumps(s, indent=2))
            else:
                for c, v in s["components"].items():
                    print(f"{'ok ' if v['ok'] else 'DOWN'} {c:24} {v['detail']}")
                print(status_line(s))
            return 0 if s["healthy"] else 1
        elif a.cmd == "env":
            sys.stdout.write(env_exports(a.run_dir))
        elif a.cmd == "load-image":
            run_dir = a.run_dir or default_run_dir()
            state = _read_state(run_dir)
            if not healthy(run_dir):
                raise RuntimeFailure(f"no healthy testbed in {run_dir}", hint="make testbed-up")
            tb = Testbed(run_dir, Path(state["bin_dir"]), state=state)
            names = tb.load_image(a.archive)
            print(f"imported into {len(tb.real_nodes)} real node(s): {', '.join(names)}")
    except (SpecError, RuntimeFailure) as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
