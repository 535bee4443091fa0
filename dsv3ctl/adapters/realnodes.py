"""Real nodes for the local testbed: containerd + kubelet per node, one kube-proxy and one CoreDNS, all
plain host processes started next to the control plane of :mod:`dsv3ctl.adapters.testbed`.

Layout (``N`` = node index, ``<rd>`` = the testbed run directory)::

    bridge dsv3-nodes     empty bridge holding the node IPs 10.250.0.(N+1) and CoreDNS' 10.250.0.254
    bridge dsv3-cniN      CNI bridge of node N, pods in 10.245.N.0/24 (gateway .1)
    <rd>/real/<node>/     containerd root/state/sockets, kubelet root dir, pod logs, CNI config + IPAM state
    cgroup /dsv3ctl-N     the kubelet's cgroupRoot in every cgroup v1 hierarchy

Both nodes share the host network namespace; the host routes between the CNI bridges (real iptables and
conntrack). Only one testbed with real nodes can run on a host (kube-proxy owns the KUBE-* chains):
``/run/dsv3ctl-realnodes.lock`` names the run directory that holds them.

Teardown (:func:`stop`) undoes every host change, recorded when they are made: processes by PID, mounts
under the run directory, links, iptables chains, cgroups, shared paths the kubelet creates and the sysctls
the kubelet, kube-proxy and the bridge plugin change (values recorded before start, written back after).
:func:`host_snapshot` returns those host facts so a test can compare before and after.

Sources of the facts encoded here are named next to them (repo@tag:path).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from dsv3ctl.errors import RuntimeFailure

NODE_PREFIX = "real-gpu-"
NODE_KIND_LABEL = "dsv3ctl.io/node-kind"
TAINT_KEY = "dsv3ctl.io/real-node"
TOLERATION = {"key": TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
"""What a pod needs to land on a real node (add a node_selector ``dsv3ctl.io/node-kind: real`` too)."""
NODE_SELECTOR = {NODE_KIND_LABEL: "real"}

NODE_BRIDGE = "dsv3-nodes"
NODE_NET = ipaddress.ip_network("10.250.0.0/24")
DNS_IP = "10.250.0.254"
CLUSTER_DNS = "10.96.0.10"
"""ClusterIP of the selector-less ``kube-system/kube-dns`` Service (inside testbed.SERVICE_CIDR)."""
POD_NET = "10.245.0.0/16"
"""Pods of real nodes; not kwok's 10.244.0.0/16, whose fake pod IPs must never be routed."""
KUBELET_PORT = 10250
PAUSE_IMAGE = "localhost/dsv3ctl-pause:3.10.2"
"""Sandbox image: build/pause/linux/pause.c of k8s.io/kubernetes v1.36.3, packed by :func:`pause_archive`."""
RUNC = "/usr/sbin/runc"
"""Debian's runc package (``make sys-deps``)."""
HOST_LOCK = Path("/run/dsv3ctl-realnodes.lock")

HOST_TOOLS = {"runc": RUNC, "iptables": "iptables", "ip6tables": "ip6tables", "iptables-save": "iptables-save",
              "conntrack": "conntrack", "ip": "ip", "mount": "mount", "umount": "umount"}
"""Host commands real nodes need (apt: runc iptables conntrack ebtables ethtool socat iproute2)."""

# kubelet: setupKernelTunables (kubernetes@v1.36.3 pkg/kubelet/cm/container_manager_linux.go) sets vm.overcommit_memory,
# vm.panic_on_oom, kernel.panic, kernel.panic_on_oops, kernel.keys.root_maxkeys/root_maxbytes; the bridge CNI
# plugin (containernetworking/plugins@v1.9.1 plugins/main/bridge/bridge.go, enableIPForward) sets ip_forward;
# kube-proxy may set route_localnet (localhostNodePorts, off here) and the conntrack sysctls (off here: maxPerCore 0,
# timeouts 0), recorded all the same.
SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
           "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.route_localnet",
           "net.bridge.bridge-nf-call-iptables", "net.netfilter.nf_conntrack_max",
           "net.netfilter.nf_conntrack_tcp_timeout_established", "net.netfilter.nf_conntrack_tcp_timeout_close_wait")
# Fixed host paths: kubelet's device-plugin dir (k8s.io/kubelet@v0.36.3 pkg/apis/deviceplugin/v1beta1/constants.go
# DevicePluginPath /var/lib/kubelet/device-plugins/), container log symlinks (kubernetes@v1.36.3
# pkg/kubelet/kuberuntime/kuberuntime_manager.go ContainerLogsDir /var/log/containers), containerd's shim
# sockets (containerd@v2.3.7 pkg/shim/util_unix.go socketRoot /run/containerd), CNI's cache (libcni
# /var/lib/cni) and the default pod log dir.
SHARED_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd", "/var/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def node_name(i: int) -> str:
    return f"{NODE_PREFIX}{i}"


def node_ip(i: int) -> str:
    return str(NODE_NET.network_address + i + 1)


def cni_bridge(i: int) -> str:
    return f"dsv3-cni{i}"


def cgroup_name(i: int) -> str:
    return f"dsv3ctl-{i}"


def node_dir(run_dir: Path, i: int) -> Path:
    return run_dir / "real" / node_name(i)


def containerd_socket(run_dir: Path, i: int) -> Path:
    return node_dir(run_dir, i) / "containerd.sock"


# --------------------------------------------------------------------------------------------- host facts


def _run(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    out = {}
    for s in SYSCTLS:
        with contextlib.suppress(OSError):
            out[s] = _sysctl_path(s).read_text().strip()
    return out


def _iptables_rules(cmd: str) -> list[str]:
    """``<cmd>-save`` without counters and comments: one line per chain/rule, each prefixed by its table.

    Built-in chains with policy ACCEPT and no rules are left out: with the nf_tables backend the first
    iptables call creates the empty built-in tables, which ``iptables`` cannot delete and which filter nothing.
    """
    try:
        text = _run([cmd], timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    lines, table = [], ""
    for line in text.splitlines():
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            continue
        if line.startswith(":"):  # ":CHAIN POLICY [pkts:bytes]" -> drop the counters
            chain, policy = line[1:].split()[:2]
            if policy == "ACCEPT" and not any(f"-A {chain} " in r for r in text.splitlines()):
                continue
            line = f":{chain} {policy}"
        lines.append(f"{table} {line}")
    return lines


def _cgroups() -> list[str]:
    """Top-level cgroup directories of every v1 hierarchy (what a kubelet's cgroupRoot adds)."""
    out = []
    for h in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        if h.is_dir() and not h.is_symlink():
            out += [f"{h.name}/{d.name}" for d in sorted(h.iterdir()) if d.is_dir()]
    return out


def _mounts(under: tuple[str, ...] | None = None) -> list[str]:
    """Mount points (all, or those at or below one of ``under``)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = (line.split()[4] for line in lines)
    if under is None:
        return sorted(points)
    return sorted(m for m in points if any(m == u or m.startswith(u.rstrip("/") + "/") for u in under))


def _links() -> list[str]:
    try:
        out = _run(["ip", "-o", "link", "show"]).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines() if ":" in line)


def _procs_of(bin_dir: Path, run_dir: Path) -> list[str]:
    """``pid exe`` of every process of this testbed: a binary from ``bin_dir`` whose working directory or
    command line is in ``run_dir`` (other testbeds may use the same tools), or runc."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            exe = os.readlink(p / "exe")
            if exe == RUNC:
                out.append(f"{p.name} {exe}")
                continue
            if not exe.startswith(str(bin_dir) + "/"):
                continue
            cwd = os.readlink(p / "cwd")
            cmd = (p / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd == str(run_dir) or cwd.startswith(f"{run_dir}/") or str(run_dir) in cmd:
            out.append(f"{p.name} {exe}")
    return sorted(out)


def host_snapshot(bin_dir: Path, run_dir: Path) -> dict[str, Any]:
    """The host facts real nodes change: this testbed's processes, mounts under ``run_dir``, the shared
    paths and /run/netns (mounts of unrelated programs elsewhere are not looked at), links, iptables rules
    (v4 and v6), top-level cgroups, the recorded sysctls and which shared paths exist."""
    return {
        "processes": _procs_of(bin_dir, run_dir),
        "mounts": _mounts((str(run_dir), *SHARED_PATHS, "/run/netns", "/var/run/netns")), "links": _links(),
        "iptables": _iptables_rules("iptables-save"), "ip6tables": _iptables_rules("ip6tables-save"),
        "cgroups": _cgroups(), "sysctls": read_sysctls(),
        "paths": {p: os.path.lexists(p) for p in SHARED_PATHS},
    }


def preflight() -> list[str]:
    """What is missing for real nodes on this host (empty when they can start)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("real nodes need root (network bridges, iptables, mounts, cgroups)")
    for name, cmd in HOST_TOOLS.items():
        if not shutil.which(cmd):
            problems.append(f"{name} not found (`make sys-deps` installs it)")
    if not (CGROUP_ROOT / "memory").is_dir() and not (CGROUP_ROOT / "cgroup.controllers").is_file():
        problems.append(f"no cgroup hierarchy under {CGROUP_ROOT}")
    return problems


# --------------------------------------------------------------------------------------------- images


def oci_archive(out: Path, name: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str],
                env: list[str] | None = None, symlinks: dict[str, str] | None = None,
                dirs: tuple[str, ...] = ()) -> Path:
    """Write a one-layer OCI image archive (image-spec v1.1 layout: ``oci-layout``, ``index.json`` with the
    ``org.opencontainers.image.ref.name`` and ``io.containerd.image.name`` annotations, blobs under
    ``blobs/sha256``) for ``ctr images import``.

    ``files`` maps a path in the image to ``(content, mode)``; ``symlinks`` maps a path to its target.
    """
    import gzip
    import hashlib
    import io
    import tarfile

    def add_dir(tf: tarfile.TarFile, path: str, seen: set[str]) -> None:
        parts = path.strip("/").split("/")
        for k in range(1, len(parts) + 1):
            d = "/".join(parts[:k])
            if d and d not in seen:
                seen.add(d)
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                tf.addfile(ti)

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        seen: set[str] = set()
        for d in dirs:
            add_dir(tf, d, seen)
        for path, (data, mode) in sorted(files.items()):
            add_dir(tf, str(Path(path.strip("/")).parent), seen)
            ti = tarfile.TarInfo(path.strip("/"))
            ti.size, ti.mode, ti.mtime = len(data), mode, 0
            tf.addfile(ti, io.BytesIO(data))
        for path, target in sorted((symlinks or {}).items()):
            add_dir(tf, str(Path(path.strip("/")).parent), seen)
            ti = tarfile.TarInfo(path.strip("/"))
            ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, target, 0o777, 0
            tf.addfile(ti)
    layer_tar = raw.getvalue()
    layer_gz = gzip.compress(layer_tar, mtime=0)

    def digest(b: bytes) -> str:
        return "sha256:" + hashlib.sha256(b).hexdigest()

    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": env or ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
        "created": "1970-01-01T00:00:00Z",
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer_gz),
                    "size": len(layer_gz)}],
    }, sort_keys=True).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest),
                       "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": tag}}],
    }, sort_keys=True).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tf:
        def put(path: str, data: bytes) -> None:
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            tf.addfile(ti, io.BytesIO(data))
        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("index.json", index)
        for blob in (config, manifest, layer_gz):
            put(f"blobs/sha256/{digest(blob).split(':')[1]}", blob)
    tmp.replace(out)
    return out


def pause_archive(bin_dir: Path, out: Path) -> Path:
    """The sandbox image :data:`PAUSE_IMAGE`: the statically linked ``pause`` from tools/build.sh."""
    return oci_archive(out, PAUSE_IMAGE, {"/pause": ((bin_dir / "pause").read_bytes(), 0o755)}, ["/pause"])


def import_image(bin_dir: Path, socket: Path, archive: Path, timeout_s: float = 300.0) -> str:
    """``ctr -n k8s.io images import`` of a docker-archive or OCI tar into one node's containerd."""
    # ctr@v2.3.7 cmd/ctr/commands/images/import.go: unpacks for the default snapshotter (overlayfs here)
    # unless --no-unpack, so the kubelet finds the image at once; ctr needs the socket as an absolute path.
    argv = [str(bin_dir / "ctr"), "--address", str(socket.resolve()), "-n", "k8s.io", "images", "import",
            str(archive.resolve())]
    try:
        r = _run(argv, timeout=timeout_s)
    except subprocess.CalledProcessError as e:
        raise RuntimeFailure(f"importing {archive} into {socket} failed: {e.stderr.strip()[-400:]}") from None
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"importing {archive} into {socket} took longer than {timeout_s:.0f} s") from None
    return r.stdout


def list_images(bin_dir: Path, socket: Path) -> list[str]:
    """Image names (not bare digests) in one node's containerd, namespace k8s.io."""
    r = _run([str(bin_dir / "ctr"), "--address", str(socket.resolve()), "-n", "k8s.io", "images", "ls", "-q"],
             check=False, timeout=60)
    return sorted(n for n in r.stdout.split() if not n.startswith("sha256:"))


# --------------------------------------------------------------------------------------------- configs


def _containerd_config(run_dir: Path, i: int) -> str:
    """containerd v2 config (version 3 schema; containerd@v2.3.7 internal/cri/config/config.go)."""
    nd = node_dir(run_dir, i)
    q = json.dumps  # TOML basic strings accept JSON string escapes for these paths
    return f"""version = 3
root = {q(str(nd / "containerd" / "root"))}
state = {q(str(nd / "containerd" / "state"))}

[grpc]
  address = {q(str(containerd_socket(run_dir, i)))}
[ttrpc]
  address = {q(str(containerd_socket(run_dir, i)) + ".ttrpc")}
[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = {q(PAUSE_IMAGE)}
  [plugins."io.containerd.cri.v1.runtime"]
    # no CAP_SYS_RESOURCE on some VMs: runc cannot lower oom_score_adj below containerd's own
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = [{q(str(nd / "cni-bin"))}]
      conf_dir = {q(str(nd / "cni-conf"))}
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = {q(RUNC)}
          Root = {q(str(nd / "runc"))}
          SystemdCgroup = false
"""


def _cni_conflist(run_dir: Path, i: int) -> dict[str, Any]:
    """bridge + host-local, portmap, loopback (containernetworking/plugins@v1.9.1 plugins/main/bridge)."""
    net = ipaddress.IPv4Network(f"{ipaddress.IPv4Network(POD_NET).network_address + 256 * i}/24")
    return {
        "cniVersion": "1.0.0", "name": f"dsv3ctl-{i}",
        "plugins": [
            {"type": "bridge", "bridge": cni_bridge(i), "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(net), "gateway": str(net.network_address + 1)}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(node_dir(run_dir, i) / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def _kubelet_config(run_dir: Path, i: int, pki: Path, healthz_port: int) -> dict[str, Any]:
    """KubeletConfiguration v1beta1 (k8s.io/kubelet@v0.36.3 config/v1beta1/types.go)."""
    nd = node_dir(run_dir, i)
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": node_ip(i), "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(pki / f"{node_name(i)}-serving.crt"),
        "tlsPrivateKeyFile": str(pki / f"{node_name(i)}-serving.key"),
        "authentication": {"x509": {"clientCAFile": str(pki / "ca.crt")}, "webhook": {"enabled": True},
                           "anonymous": {"enabled": False}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{containerd_socket(run_dir, i)}",
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{cgroup_name(i)}", "failCgroupV1": False,
        "failSwapOn": False, "clusterDNS": [CLUSTER_DNS], "clusterDomain": "cluster.local",
        "podLogsDir": str(nd / "pod-logs"), "resolvConf": str(nd / "resolv.conf"),
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
        "serializeImagePulls": False, "maxPods": 50,
    }


def _node_labels(gpu_product: str, gpus: int) -> dict[str, str]:
    return {NODE_KIND_LABEL: "real", "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": gpu_product,
            "nvidia.com/gpu.count": str(gpus), "feature.node.kubernetes.io/rdma.available": "true"}


def _kubeproxy_config(kubeconfig: Path, healthz: int, metrics: int) -> dict[str, Any]:
    """KubeProxyConfiguration v1alpha1 (k8s.io/kube-proxy@v0.36.3 config/v1alpha1/types.go)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)}, "mode": "iptables",
        "hostnameOverride": node_name(0), "clusterCIDR": POD_NET,
        "healthzBindAddress": f"127.0.0.1:{healthz}", "metricsBindAddress": f"127.0.0.1:{metrics}",
        "nodePortAddresses": [str(NODE_NET)],
        # masqueradeAll: a Service hop between two pods on one CNI bridge returns through the host
        # (no br_netfilter needed); localhostNodePorts off: route_localnet stays untouched
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def _corefile(kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """cluster.local from the API (plugin/kubernetes), NXDOMAIN for every other name (plugin/template);
    coredns@v1.14.7 plugin/*/README.md."""
    return f"""cluster.local:53 {{
    bind {DNS_IP}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 5
    }}
}}
.:53 {{
    bind {DNS_IP}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


# --------------------------------------------------------------------------------------------- PKI


def make_node_pki(pki: Path, nodes: int) -> None:
    """Per node a client cert (O=system:nodes, CN=system:node:<name>) and a serving cert for its IP; a
    kube-proxy client cert (CN=system:kube-proxy, bound by the default system:node-proxier binding)."""
    from dsv3ctl.adapters.testbed import issue_cert

    for i in range(nodes):
        issue_cert(pki, f"{node_name(i)}-client", f"system:node:{node_name(i)}", "system:nodes", server=False)
        issue_cert(pki, f"{node_name(i)}-serving", f"system:node:{node_name(i)}", "system:nodes", server=True,
                   dns=[node_name(i)], ips=[node_ip(i)])
    issue_cert(pki, "kube-proxy", "system:kube-proxy", None, server=False)


# --------------------------------------------------------------------------------------------- start


def _ip(*args: str, check: bool = True) -> None:
    try:
        _run(["ip", *args], check=check)
    except subprocess.CalledProcessError as e:
        raise RuntimeFailure(f"`ip {' '.join(args)}` failed: {e.stderr.strip()}") from None


def _cgroup_dirs(name: str) -> list[Path]:
    return [h / name for h in sorted(CGROUP_ROOT.iterdir())
            if h.is_dir() and not h.is_symlink() and (h / "cgroup.procs").exists()]


def _acquire_host_lock(run_dir: Path) -> None:
    if HOST_LOCK.exists():
        holder = HOST_LOCK.read_text().strip()
        if holder and holder != str(run_dir) and (Path(holder) / "state.json").exists():
            st = json.loads((Path(holder) / "state.json").read_text() or "{}")
            if st.get("real", {}).get("pids"):
                raise RuntimeFailure(f"real nodes already run for the testbed in {holder}; only one testbed per "
                                     "host can have real nodes (kube-proxy owns the host's KUBE-* chains)",
                                     hint=f"stop it: python -m dsv3ctl.adapters.testbed --run-dir {holder} down")
    HOST_LOCK.write_text(f"{run_dir}\n")


def start(run_dir: Path, bin_dir: Path, state: dict[str, Any], nodes: int, api_port: int,
          spawn: Any, wait: Any, free_port: Any, write_state: Any, deadline: float,
          gpu_product: str, gpus: int, rdma: int) -> dict[str, Any]:
    """Start ``nodes`` real nodes against the running apiserver; returns timing figures (seconds).

    ``spawn``/``wait``/``free_port``/``write_state`` are the testbed's own helpers (PID tracking, deadlines).
    Every host change is recorded in ``state["real"]`` before it is made, so :func:`stop` can undo a
    half-finished start.
    """
    problems = preflight()
    if problems:
        raise RuntimeFailure("real nodes cannot start: " + "; ".join(problems),
                             hint="run `make sys-deps` as root, or start with --real-nodes 0")
    for i in range(nodes):
        sock = str(containerd_socket(run_dir, i)) + ".ttrpc"
        if len(sock) > 100:
            raise RuntimeFailure(f"socket path {sock} is longer than a unix socket allows (108 bytes)",
                                 hint="use a shorter run directory (DSV3CTL_TESTBED_DIR)")
    _acquire_host_lock(run_dir)
    t0 = time.monotonic()

    def left() -> float:
        return max(5.0, deadline - time.monotonic())

    real: dict[str, Any] = {"nodes": nodes, "bin_dir": str(bin_dir), "pids": {}, "exes": {},
                            "host_before": host_snapshot(bin_dir, run_dir), "sysctls_before": read_sysctls(),
                            "links": [], "cgroups": [], "ports": {}}
    state["real"] = real
    write_state(run_dir, state)
    pki = run_dir / "pki"
    from dsv3ctl.adapters.testbed import write_kubeconfig

    # network: the node bridge with the node IPs and CoreDNS' IP
    real["links"].append(NODE_BRIDGE)
    write_state(run_dir, state)
    _ip("link", "add", NODE_BRIDGE, "type", "bridge")
    for i in range(nodes):
        _ip("addr", "add", f"{node_ip(i)}/{NODE_NET.prefixlen}", "dev", NODE_BRIDGE)
    _ip("addr", "add", f"{DNS_IP}/{NODE_NET.prefixlen}", "dev", NODE_BRIDGE)
    _ip("link", "set", NODE_BRIDGE, "up")
    real["links"] += [cni_bridge(i) for i in range(nodes)]  # created by the bridge plugin with the first pod
    write_state(run_dir, state)

    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "KUBECONFIG"}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin"
    pids: dict[str, int] = {}
    for i in range(nodes):
        nd = node_dir(run_dir, i)
        shutil.rmtree(nd, ignore_errors=True)
        for sub in ("cni-bin", "cni-conf", "ipam", "pod-logs", "kubelet", "runc"):
            (nd / sub).mkdir(parents=True, exist_ok=True)
        for p in ("bridge", "host-local", "loopback", "portmap"):
            shutil.copy2(bin_dir / "cni" / p, nd / "cni-bin" / p)
        (nd / "cni-conf" / "10-dsv3ctl.conflist").write_text(json.dumps(_cni_conflist(run_dir, i), indent=2))
        (nd / "resolv.conf").write_text(f"nameserver {DNS_IP}\n")
        (nd / "containerd.toml").write_text(_containerd_config(run_dir, i))
        for cg in _cgroup_dirs(cgroup_name(i)):
            real["cgroups"].append(str(cg))
            write_state(run_dir, state)
            cg.mkdir(exist_ok=True)
        name = f"containerd-{i}"
        pids[name] = spawn(run_dir, state, name, [str(bin_dir / "containerd"), f"--config={nd / 'containerd.toml'}",
                                                  "--log-level=warn"], env=env, into=real)
        write_state(run_dir, state)
    t_ctd = time.monotonic()
    for i in range(nodes):
        wait(f"containerd-{i} socket", containerd_socket(run_dir, i).exists, left(), run_dir, pids)
    archive = run_dir / "real" / "pause.oci.tar"
    pause_archive(bin_dir, archive)
    for i in range(nodes):
        import_image(bin_dir, containerd_socket(run_dir, i), archive)
    t_ctd = time.monotonic() - t_ctd

    from kubernetes import client as k
    from kubernetes import config as kconfig

    api = kconfig.new_client_from_config(config_file=str(run_dir / "kubeconfig"))
    core: Any = k.CoreV1Api(api)
    _node_rbac(api)
    t_kl = time.monotonic()
    for i in range(nodes):
        nd = node_dir(run_dir, i)
        kc = nd / "kubeconfig"
        write_kubeconfig(kc, api_port, pki / f"{node_name(i)}-client.crt", pki / f"{node_name(i)}-client.key", pki)
        hz = free_port()
        real["ports"][f"kubelet-{i}"] = hz
        import yaml

        (nd / "kubelet.yaml").write_text(yaml.safe_dump(_kubelet_config(run_dir, i, pki, hz), sort_keys=False))
        labels = ",".join(f"{k}={v}" for k, v in _node_labels(gpu_product, gpus).items())
        name = f"kubelet-{i}"
        pids[name] = spawn(run_dir, state, name, [
            str(bin_dir / "kubelet"), f"--config={nd / 'kubelet.yaml'}", f"--kubeconfig={kc}",
            f"--root-dir={nd / 'kubelet'}", f"--hostname-override={node_name(i)}", f"--node-ip={node_ip(i)}",
            f"--node-labels={labels}", "--v=1"], env=env, into=real)
        write_state(run_dir, state)

    def ready(i: int) -> bool:
        try:
            n = core.read_node(node_name(i))
        except Exception:  # noqa: BLE001 - not registered yet
            return False
        return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])

    for i in range(nodes):
        wait(f"real node {node_name(i)} Ready", lambda i=i: ready(i), left(), run_dir, pids)
    t_kl = time.monotonic() - t_kl
    # extended resources: JSON patch of node status capacity (the kubelet keeps them and derives allocatable;
    # https://kubernetes.io/docs/tasks/administer-cluster/extended-resource-node/)
    for i in range(nodes):
        core.patch_node_status(node_name(i), [
            {"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(gpus)},
            {"op": "add", "path": "/status/capacity/rdma~1ib", "value": str(rdma)}])

    def allocatable(i: int) -> bool:
        a = core.read_node(node_name(i)).status.allocatable or {}
        return a.get("nvidia.com/gpu") == str(gpus) and a.get("rdma/ib") == str(rdma)

    for i in range(nodes):
        wait(f"{node_name(i)} allocatable nvidia.com/gpu={gpus}", lambda i=i: allocatable(i), left(), run_dir, pids)

    # kube-proxy (one for all nodes: they share the host network namespace)
    kc = run_dir / "real" / "kube-proxy.kubeconfig"
    write_kubeconfig(kc, api_port, pki / "kube-proxy.crt", pki / "kube-proxy.key", pki)
    hz, metrics = free_port(), free_port()
    real["ports"].update({"kube-proxy": hz, "kube-proxy-metrics": metrics})
    import yaml

    (run_dir / "real" / "kube-proxy.yaml").write_text(yaml.safe_dump(_kubeproxy_config(kc, hz, metrics)))
    pids["kube-proxy"] = spawn(run_dir, state, "kube-proxy", [
        str(bin_dir / "kube-proxy"), f"--config={run_dir / 'real' / 'kube-proxy.yaml'}", "--v=1"], env=env, into=real)
    write_state(run_dir, state)
    # CoreDNS on the host, reached through a selector-less kube-dns Service with a manual EndpointSlice
    dh, dr = free_port(), free_port()
    real["ports"].update({"coredns-health": dh, "coredns-ready": dr})
    (run_dir / "real" / "Corefile").write_text(_corefile(run_dir / "kubeconfig", dh, dr))
    pids["coredns"] = spawn(run_dir, state, "coredns", [
        str(bin_dir / "coredns"), "-conf", str(run_dir / "real" / "Corefile")], env=env, into=real)
    write_state(run_dir, state)
    _dns_objects(api)
    import urllib.request

    def http_ok(port: int, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:  # noqa: S310
                return bool(r.status == 200)
        except Exception:  # noqa: BLE001
            return False

    wait("kube-proxy healthz", lambda: http_ok(hz, "/healthz"), left(), run_dir, pids)
    wait("coredns ready", lambda: http_ok(dr, "/ready"), left(), run_dir, pids)
    api.close()
    real["seconds"] = {"containerd_up_and_pause_imported": round(t_ctd, 2), "kubelets_ready": round(t_kl, 2),
                       "total": round(time.monotonic() - t0, 2)}
    write_state(run_dir, state)
    return dict(real["seconds"])


def _node_rbac(api: Any) -> None:
    """RBAC only (no Node authorizer): bind the system:node ClusterRole to group system:nodes, as
    https://kubernetes.io/docs/reference/access-authn-authz/rbac/#core-component-roles describes for it."""
    from kubernetes import client as k

    rbac: Any = k.RbacAuthorizationV1Api(api)
    with contextlib.suppress(Exception):  # exists when the same apiserver had real nodes before
        rbac.create_cluster_role_binding({
            "metadata": {"name": "dsv3ctl-testbed:system:nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]})


def _dns_objects(api: Any) -> None:
    from kubernetes import client as k

    core: Any = k.CoreV1Api(api)
    disc: Any = k.DiscoveryV1Api(api)
    from kubernetes.client.exceptions import ApiException

    def create(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ApiException as e:
            # already there (the same apiserver had real nodes before): 409, or 422 for the Service whose
            # ClusterIP is allocated to the existing kube-dns
            if e.status not in (409, 422) or (e.status == 422 and "already allocated" not in str(e.body)):
                raise

    create(core.create_namespace, {"metadata": {"name": "kube-system"}})
    create(core.create_namespaced_service, "kube-system", {
        "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": CLUSTER_DNS, "ports": [{"name": "dns", "protocol": "UDP", "port": 53},
                                                     {"name": "dns-tcp", "protocol": "TCP", "port": 53}]}})
    create(disc.create_namespaced_endpoint_slice, "kube-system", {
        "metadata": {"name": "kube-dns-host", "labels": {"kubernetes.io/service-name": "kube-dns",
                                                         "endpointslice.kubernetes.io/managed-by": "dsv3ctl-testbed"}},
        "addressType": "IPv4", "endpoints": [{"addresses": [DNS_IP], "conditions": {"ready": True}}],
        "ports": [{"name": "dns", "protocol": "UDP", "port": 53}, {"name": "dns-tcp", "protocol": "TCP", "port": 53}]})


# --------------------------------------------------------------------------------------------- stop


def _alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
        return st.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _kill_cgroup_procs(dirs: list[Path], timeout_s: float = 15.0) -> None:
    """SIGKILL every process in the cgroups under ``dirs`` until they are empty (containers, pause)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = set()
        for d in dirs:
            for f in d.rglob("cgroup.procs") if d.is_dir() else []:
                with contextlib.suppress(OSError):
                    pids |= {int(x) for x in f.read_text().split()}
        pids = {p for p in pids if _alive(p)}
        if not pids:
            return
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.2)


def _shims_of(bin_dir: Path, sockets: list[str]) -> list[int]:
    """PIDs of containerd-shim-runc-v2 processes started by one of our containerds (``-address <sock>``)."""
    shim = str(bin_dir / "containerd-shim-runc-v2")
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if os.readlink(p / "exe") != shim:
                continue
            argv = (p / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a in sockets for a in argv):
            out.append(int(p.name))
    return out


def _unmount_under(root: Path) -> list[str]:
    """Unmount every mount point at or below ``root`` (deepest first); lazy when busy."""
    done = []
    for _ in range(5):
        points = sorted({m for m in _mounts() if m == str(root) or m.startswith(str(root) + "/")},
                        key=lambda m: (-m.count("/"), m))
        if not points:
            break
        for m in points:
            if _run(["umount", m], check=False).returncode != 0:
                _run(["umount", "-l", m], check=False)
            done.append(m)
    return done


def _iptables_cleanup(before: dict[str, list[str]]) -> None:
    """Remove every chain that is not in ``before`` and every rule that jumps to one, per table."""
    for cmd, key in (("iptables", "iptables"), ("ip6tables", "ip6tables")):
        if not shutil.which(cmd):
            continue
        old = set(before.get(key, []))
        new_chains: dict[str, list[str]] = {}
        jumps: list[tuple[str, str]] = []
        for entry in _iptables_rules(f"{cmd}-save"):
            if entry in old:
                continue
            table, line = entry.split(" ", 1)
            if line.startswith(":") and line.split()[0][1:] not in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING",
                                                                   "POSTROUTING"):
                new_chains.setdefault(table, []).append(line[1:].split()[0])
            elif line.startswith("-A "):
                jumps.append((table, line))
        for table, line in jumps:  # rules added to chains (new ones are flushed below anyway)
            argv = shlex.split(line)
            _run([cmd, "-w", "-t", table, "-D", *argv[1:]], check=False)
        for table, chains in new_chains.items():
            for c in chains:
                _run([cmd, "-w", "-t", table, "-F", c], check=False)
            for c in chains:
                _run([cmd, "-w", "-t", table, "-X", c], check=False)


def stop(run_dir: Path, state: dict[str, Any], stop_pid: Any, write_state: Any) -> list[str]:
    """Undo everything :func:`start` did (also a half-finished start). Returns what was stopped."""
    real = state.get("real")
    if not real:
        return []
    bin_dir = Path(real.get("bin_dir", ""))
    stopped = []
    pids, exes = real.get("pids", {}), real.get("exes", {})
    order = ["coredns", "kube-proxy", *sorted(n for n in pids if n.startswith("kubelet-"))]
    for name in order:
        if name in pids and stop_pid(int(pids[name]), exes.get(name, "")):
            stopped.append(name)
    cgroups = [Path(c) for c in real.get("cgroups", [])]
    _kill_cgroup_procs(cgroups)
    nodes = int(real.get("nodes", 0))
    sockets = [str(containerd_socket(run_dir, i)) for i in range(nodes)]
    for pid in _shims_of(bin_dir, sockets):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for name in sorted(n for n in pids if n.startswith("containerd-")):
        if stop_pid(int(pids[name]), exes.get(name, "")):
            stopped.append(name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_shims_of(bin_dir, sockets)
                                           or any(_alive(int(p)) for p in pids.values())):
        time.sleep(0.1)
    # any process of this run directory's real nodes still there (its cwd or command line is in run_dir):
    # SIGKILL it by PID and wait until it is gone, so the caller sees a settled host
    names = {str(bin_dir / n) for n in ("containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy", "coredns")}
    deadline = time.monotonic() + 15
    while True:
        left_over = [int(e.split()[0]) for e in _procs_of(bin_dir, run_dir) if e.split(" ", 1)[1] in names]
        if not left_over:
            break
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"testbed: processes {left_over} of the real nodes did not exit after SIGKILL")
        for p in left_over:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.2)
    _unmount_under(run_dir / "real")
    before = real.get("host_before", {})
    # shared paths the kubelet/containerd created (first unmount what lies below them)
    for shared in SHARED_PATHS:
        if not before.get("paths", {}).get(shared, True):
            _unmount_under(Path(shared))
            shutil.rmtree(shared, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(shared)
    for link in reversed(real.get("links", [])):
        if link not in before.get("links", []):
            _run(["ip", "link", "del", link], check=False)
    # veths whose peer lived in a pod netns vanish with it; a leftover one would be in the links diff
    if shutil.which("kube-proxy") or (bin_dir / "kube-proxy").exists():
        _run([str(bin_dir / "kube-proxy"), "--cleanup"], check=False)
    _iptables_cleanup(before)
    for cg in sorted(cgroups, key=lambda c: -len(c.parts)):
        if cg.is_dir():
            for d in sorted((x for x in cg.rglob("*") if x.is_dir()), key=lambda x: -len(x.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()
    for name, value in real.get("sysctls_before", {}).items():
        with contextlib.suppress(OSError):
            if _sysctl_path(name).read_text().strip() != value:
                _sysctl_path(name).write_text(value + "\n")
    shutil.rmtree(run_dir / "real", ignore_errors=True)
    with contextlib.suppress(OSError):
        if HOST_LOCK.read_text().strip() == str(run_dir):
            HOST_LOCK.unlink()
    real.update(pids={}, exes={}, stopped=_dt.datetime.now().isoformat(timespec="seconds"))
    state["real"] = {"nodes": 0, "last": real.get("seconds", {})}
    write_state(run_dir, state)
    return stopped
