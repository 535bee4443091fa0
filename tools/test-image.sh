#!/usr/bin/env bash
# The test image: docker/Dockerfile target `test` (Debian 12, Debian's OpenMPI and OpenSSH, dsv3ctl through
# docker/install-dsv3ctl.sh, and a tritonserver TEST DOUBLE; no model, no GPU), built without any registry:
#   1. a Debian 12 rootfs from Debian's package mirror (mmdebstrap), committed as an OCI archive (buildah);
#   2. `buildah build --isolation chroot --target test` with TEST_BASE=oci-archive:<that archive>;
#   3. `buildah push` to a docker-archive tar of localhost/dsv3ctl:test (import it with
#      `ctr -n k8s.io images import <tar>`, or run its rootfs with runc).
# Prints the path of the docker-archive tar on stdout (everything else goes to stderr). The result is cached
# under ~/.cache/dsv3ctl/test-image, keyed by a hash of only what goes into the image (the Dockerfile, the
# install script, .dockerignore, the package sources it copies, the two doubles and this script), so an edit
# of README.md or docs/ does not rebuild it. buildah uses its own --root/--runroot there, never the system's.
# Needs root, buildah and mmdebstrap (`make sys-deps`). DSV3CTL_TEST_IMAGE_REBUILD=1 ignores the cache;
# DSV3CTL_CACHE_DIR moves the cache (default ~/.cache/dsv3ctl). `--inputs` lists the files the key hashes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${DSV3CTL_CACHE_DIR:-$HOME/.cache/dsv3ctl}/test-image
IMAGE=localhost/dsv3ctl:test
SUITE=bookworm                       # Debian 12
MIRROR=http://deb.debian.org/debian
BASE_RECIPE="mmdebstrap --variant=minbase --include=ca-certificates $SUITE"
# what goes into the image (docker/Dockerfile's COPY lines for the test target, plus the recipe here)
INPUTS=(docker/Dockerfile docker/install-dsv3ctl.sh .dockerignore constraints.txt pyproject.toml setup.py
        MANIFEST.in dsv3ctl helm/dsv3 model_repo tests/doubles/triton_server.py
        tests/doubles/tritonserver_standin.py tools/test-image.sh)

die() { echo "test-image: $*" >&2; exit 1; }
input_files() {
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -co --exclude-standard -- "${INPUTS[@]}"
  else
    (cd "$ROOT" && find "${INPUTS[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*')
  fi | LC_ALL=C sort
}
case "${1:-}" in
  --inputs) input_files; exit 0 ;;
  "") ;;
  *) echo "usage: tools/test-image.sh [--inputs]" >&2; exit 2 ;;
esac
for t in buildah mmdebstrap; do
  command -v "$t" >/dev/null || die "$t is not installed: run \`make sys-deps\` (apt: buildah mmdebstrap)"
done
[ "$(id -u)" = 0 ] || die "needs root (buildah --isolation chroot and mmdebstrap as root)"

key=$(cd "$ROOT" && input_files | while read -r f; do [ -f "$f" ] && sha256sum "$f"; done | sha256sum | cut -c1-16)
base_key=$(printf '%s\n' "$BASE_RECIPE" "$MIRROR" | sha256sum | cut -c1-16)
OUT_DIR=$CACHE/$key
OUT=$OUT_DIR/dsv3ctl-test.docker.tar
BASE=$CACHE/base-$base_key.oci.tar
STORE=(--root "$CACHE/buildah/root" --runroot "$CACHE/buildah/runroot" --storage-driver overlay)

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 1800 9 || die "another test-image build holds $CACHE/.lock for more than 30 min"

if [ -s "$OUT" ] && [ -z "${DSV3CTL_TEST_IMAGE_REBUILD:-}" ]; then
  echo "test-image: cached (key $key, inputs unchanged)" >&2
  echo "$OUT"
  exit 0
fi

t0=$(date +%s)
disk0=$(du -sxk "$CACHE" | cut -f1)
peak_file=$(mktemp)
echo "$disk0" > "$peak_file"
( while sleep 3; do
    d=$(du -sxk "$CACHE" 2>/dev/null | cut -f1) || continue
    [ "$d" -gt "$(cat "$peak_file")" ] && echo "$d" > "$peak_file"
  done ) &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true; rm -f "$peak_file"' EXIT

if [ ! -s "$BASE" ]; then
  echo "test-image: Debian $SUITE rootfs from $MIRROR ($BASE_RECIPE)" >&2
  work=$(mktemp -d "$CACHE/base.XXXXXX")
  mmdebstrap --quiet --variant=minbase --include=ca-certificates "$SUITE" "$work/rootfs.tar" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb http://deb.debian.org/debian-security $SUITE-security main" >&2
  ctr=$(buildah "${STORE[@]}" from scratch)
  buildah "${STORE[@]}" add "$ctr" "$work/rootfs.tar" / >/dev/null
  buildah "${STORE[@]}" config --cmd /bin/bash --label org.opencontainers.image.title="debian-$SUITE-minbase" "$ctr"
  buildah "${STORE[@]}" commit -q "$ctr" "oci-archive:$work/base.oci.tar" >/dev/null
  buildah "${STORE[@]}" rm "$ctr" >/dev/null
  mv "$work/base.oci.tar" "$BASE"
  rm -rf "$work"
fi
t_base=$(date +%s)

vcs=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
version=$(cd "$ROOT" && sed -n 's/^__version__ = "\(.*\)"/\1/p' dsv3ctl/__init__.py)
# RUN steps see the host's CA bundle (a TLS-intercepting proxy's CA reaches pip that way); it is bind-mounted
# for the build only (`buildah build --volume`), never written into the image.
ca=()
[ -s /etc/ssl/certs/ca-certificates.crt ] && ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
echo "test-image: buildah build --target test (key $key)" >&2
# --format docker: buildah ignores SHELL (bash -o pipefail) in the OCI format (it says so and warns)
buildah "${STORE[@]}" build --isolation chroot --format docker --layers "${ca[@]}" --target test \
  --file "$ROOT/docker/Dockerfile" --tag "$IMAGE" --build-arg "TEST_BASE=oci-archive:$BASE" \
  --build-arg "DSV3CTL_VERSION=$version" --build-arg "VCS_REF=$vcs" "$ROOT" >&2
mkdir -p "$OUT_DIR"
rm -f "$OUT.tmp"
buildah "${STORE[@]}" push -q "$IMAGE" "docker-archive:$OUT.tmp:$IMAGE" >&2
mv "$OUT.tmp" "$OUT"
# keep only this result and the layers it uses
for d in "$CACHE"/*/; do
  case "$d" in "$OUT_DIR/"|"$CACHE/buildah/") ;; *) [ -f "$d/dsv3ctl-test.docker.tar" ] && rm -rf "$d" ;; esac
done
# buildah 1.28 leaves a working container (and its overlay mount) behind for the `FROM oci-archive:` base
# (one per build, seen here), and a failed build leaves its own: this storage is this script's alone (under
# the lock), so remove them all
buildah "${STORE[@]}" rm --all >/dev/null
buildah "${STORE[@]}" rmi --prune >/dev/null 2>&1 || true
t1=$(date +%s)
kill "$sampler" 2>/dev/null || true
peak=$(cat "$peak_file")
now=$(du -sxk "$CACHE" | cut -f1)
{
  echo "key=$key built=$(date -u +%FT%TZ)"
  echo "base_s=$((t_base - t0)) image_s=$((t1 - t_base)) total_s=$((t1 - t0))"
  echo "peak_extra_disk_mib=$(((peak - disk0) / 1024)) cache_mib=$((now / 1024)) image_tar_mib=$(($(stat -c %s "$OUT") / 1048576))"
} > "$OUT_DIR/build.txt"
sed 's/^/test-image: /' "$OUT_DIR/build.txt" >&2
echo "$OUT"
