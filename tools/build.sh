#!/usr/bin/env bash
# Build the pinned local-cluster tools from the Go module proxy into a content-addressed cache.
#
#   tools/build.sh            build what is missing, print the bin directory on the last line
#   tools/build.sh --print    print the bin directory (cache key) without building
#
# Cache key: sha256 over the pinned versions, every tools/*/go.mod and go.sum and the Go version, so a
# change of any pinned version gives a new directory and a warm machine never rebuilds.
# Location: $DSV3CTL_TOOLS_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/dsv3ctl/tools/<key>/bin.
# Nothing here is committed: only go.mod/go.sum of the tool modules are.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false"

K8S_VERSION=1.36.3          # tools/k8s/go.mod: k8s.io/kubernetes v1.36.3, staging at v0.36.3
K8S_MINOR=36
HELM4_VERSION=v4.2.4        # tools/helm4/go.mod
HELM3_VERSION=v3.21.4       # tools/helm3/go.mod
CONTAINERD_VERSION=v2.3.7   # tools/containerd/go.mod (real nodes: containerd, ctr, containerd-shim-runc-v2)
CNI_VERSION=v1.9.1          # tools/cni/go.mod (containernetworking/plugins: bridge, host-local, loopback, portmap)
COREDNS_VERSION=v1.14.7     # tools/coredns/go.mod + main.go (a minimal CoreDNS: only the plugins the testbed uses)
PAUSE_VERSION=3.10.2        # build/pause/Makefile TAG in the k8s.io/kubernetes v1.36.3 module; pause.c built with gcc -static

# The key covers what changes the binaries (pinned modules, versions stamped in, Go), not this script's
# other lines: editing the share-copy step below must not trigger a 30-minute rebuild.
key=$( { echo "k8s=$K8S_VERSION helm4=$HELM4_VERSION helm3=$HELM3_VERSION containerd=$CONTAINERD_VERSION"
         echo "cni=$CNI_VERSION coredns=$COREDNS_VERSION pause=$PAUSE_VERSION"
         for f in "$here"/*/go.mod "$here"/*/go.sum "$here"/*/main.go; do echo "${f#"$here"/}"; cat "$f"; done; go version; } \
       | sha256sum | cut -c1-16)
root=${DSV3CTL_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dsv3ctl/tools}
bin="$root/$key/bin"

if [[ ${1:-} == --print ]]; then echo "$bin"; exit 0; fi
mkdir -p "$bin" "$root/$key/logs"

step() {  # step NAME OUTPUTS... -- COMMAND...: skip when every output exists
  local name=$1; shift; local outs=()
  while [[ $1 != -- ]]; do outs+=("$1"); shift; done; shift
  local missing=0
  for o in "${outs[@]}"; do [[ -x $bin/$o ]] || missing=1; done
  if (( ! missing )); then echo "[tools] $name: cached"; return 0; fi
  echo "[tools] $name: building ..."
  local t0=$SECONDS log="$root/$key/logs/$name.log"
  if ! "$@" >"$log" 2>&1; then
    echo "[tools] $name: FAILED, last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1
  fi
  echo "[tools] $name: built in $((SECONDS - t0)) s"
}

# Each binary is linked to a temporary name then renamed, so an interrupted build never leaves a
# half-written binary that a later run would take as cached.
gobuild() {  # gobuild MODULE_DIR OUT LDFLAGS PACKAGE
  local dir=$1 out=$2 ldf=$3 pkg=$4
  (cd "$here/$dir" && go build -ldflags "$ldf" -o "$bin/.$out.tmp" "$pkg") && mv -f "$bin/.$out.tmp" "$bin/$out"
}

k8s_ldflags="-s -w"
# Version stamping is not optional: unstamped binaries report v0.0.0 and kwokctl picks flags by version.
for kv in gitVersion=v$K8S_VERSION gitMajor=1 gitMinor=$K8S_MINOR gitTreeState=clean gitCommit=none \
          buildDate=2026-01-01T00:00:00Z; do
  k8s_ldflags="$k8s_ldflags -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
done

build_k8s() {
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    gobuild k8s "$c" "$k8s_ldflags" "k8s.io/kubernetes/cmd/$c"
  done
}
helm3_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM3_VERSION \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=36 \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=36"

step etcd etcd -- gobuild etcd etcd "-s -w" go.etcd.io/etcd/server/v3
step helm4 helm -- gobuild helm4 helm "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM4_VERSION" helm.sh/helm/v4/cmd/helm
step helm3 helm3 -- gobuild helm3 helm3 "$helm3_ldflags" helm.sh/helm/v3/cmd/helm
step kubeconform kubeconform -- gobuild kubeconform kubeconform "-s -w" github.com/yannh/kubeconform/cmd/kubeconform
build_kwok() { gobuild kwok kwok "-s -w" sigs.k8s.io/kwok/cmd/kwok && gobuild kwok kwokctl "-s -w" sigs.k8s.io/kwok/cmd/kwokctl; }
step kwok kwok kwokctl -- build_kwok
step lws lws-manager -- gobuild lws lws-manager "-s -w" sigs.k8s.io/lws/cmd
# kubectl comes from the same release as the server, so client and server never skew.
step k8s kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy -- build_k8s

# ---- real nodes (docs/testbed.md "Real nodes") ----
# containerd: build tag no_btrfs (no btrfs headers with CGO off); version stamped as its Makefile does
# (github.com/containerd/containerd v2.3.7 Makefile: -X $(PKG)/version.Version / .Revision / .Package).
ctd_pkg=github.com/containerd/containerd/v2
ctd_ldflags="-s -w -X $ctd_pkg/version.Version=$CONTAINERD_VERSION -X $ctd_pkg/version.Revision=none -X $ctd_pkg/version.Package=$ctd_pkg"
build_containerd() {
  for c in containerd ctr containerd-shim-runc-v2; do
    (cd "$here/containerd" && go build -tags no_btrfs -ldflags "$ctd_ldflags" -o "$bin/.$c.tmp" "$ctd_pkg/cmd/$c") \
      && mv -f "$bin/.$c.tmp" "$bin/$c"
  done
}
step containerd containerd ctr containerd-shim-runc-v2 -- build_containerd
# CNI plugins: version stamp as in containernetworking/plugins v1.9.1 build_linux.sh (pkg/utils/buildversion).
cni_ldflags="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_VERSION"
build_cni() {
  mkdir -p "$bin/cni"
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    local n=${p#*/}
    (cd "$here/cni" && go build -ldflags "$cni_ldflags" -o "$bin/cni/.$n.tmp" "github.com/containernetworking/plugins/plugins/$p") \
      && mv -f "$bin/cni/.$n.tmp" "$bin/cni/$n"
  done
}
step cni cni/bridge cni/host-local cni/loopback cni/portmap -- build_cni
step coredns coredns -- gobuild coredns coredns "-s -w -X github.com/coredns/coredns/coremain.GitCommit=none" .
# pause: the sandbox process of every pod, from the same k8s.io/kubernetes module as kubelet; CFLAGS as in
# its build/pause/Makefile (-Os -Wall -Werror -static -DVERSION=...). Needs gcc and a static libc (libc6-dev).
build_pause() {
  local src
  src=$(cd "$here/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION" -o "$bin/.pause.tmp" "$src" && mv -f "$bin/.pause.tmp" "$bin/pause"
}
step pause pause -- build_pause

# Data the testbed needs at run time, copied from the Go module cache of the same pinned modules so the
# testbed never needs Go or the network: the LWS CRDs and webhook manifest (same tag as lws-manager) and
# kwok's default "fast" stages (what kwokctl would configure).
share="$root/$key/share"
mod_dir() {  # mod_dir TOOL_DIR MODULE: the module's directory in the module cache (downloads if needed)
  (cd "$here/$1" && go mod download "$2" && go list -m -f '{{.Dir}}' "$2")
}
copy_share() {
  local lws kwok tmp="$share.tmp"
  lws=$(mod_dir lws sigs.k8s.io/lws); kwok=$(mod_dir kwok sigs.k8s.io/kwok)
  rm -rf "$tmp"; mkdir -p "$tmp/lws/crd" "$tmp/lws/webhook" "$tmp/kwok/stages"
  cp "$lws"/config/crd/bases/*.yaml "$tmp/lws/crd/"
  cp "$lws/config/webhook/manifests.yaml" "$tmp/lws/webhook/"
  cp "$kwok/kustomize/stage/node/fast/node-initialize.yaml" \
     "$kwok/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
     "$kwok/kustomize/stage/pod/fast/pod-ready.yaml" "$kwok/kustomize/stage/pod/fast/pod-complete.yaml" \
     "$kwok/kustomize/stage/pod/fast/pod-delete.yaml" "$tmp/kwok/stages/"
  chmod -R u+w "$tmp"          # files in the module cache are read-only
  touch "$tmp/.complete"
  rm -rf "$share" && mv "$tmp" "$share"
}
if [[ -f $share/.complete ]]; then echo "[tools] share: cached"
else echo "[tools] share: copying LWS CRDs/webhooks and kwok stages"; copy_share; fi
echo "$bin"
