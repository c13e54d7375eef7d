#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler (Kubernetes 1.20.2) from
# Debian bookworm's `kubernetes` source package, offline, with Debian's Go. No registry ships
# these binaries; the integration tests start them on loopback (e2e/tierplace_harness/controlplane.py).
#
# Idempotent: the binaries are cached OUTSIDE the repository and the build is skipped when all
# three exist. Prints the bin directory on its last line.
#   TIERPLACE_CACHE   cache root (default ~/.cache/tierplace)
#   KEEP_SOURCE=1     keep the ~2 GB source/build tree after a successful build
set -euo pipefail

CACHE=${TIERPLACE_CACHE:-$HOME/.cache/tierplace}
ROOT=$CACHE/kube-1.20
BIN=$ROOT/bin
# kubelet and kube-proxy run the real pool nodes (the nodes test tier); kubectl is what the
# README and the tests call (a fresh Debian 12 has none).
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

have_all() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $BIN/$b ]] || return 1; done
}

if have_all; then
  # The tests run etcd from Debian; make sure it is there even when the binaries are cached.
  command -v etcd >/dev/null || bash "$(dirname "$0")/install-system-deps.sh"
  echo "control plane already built" >&2
  echo "$BIN"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
HERE=$(cd "$(dirname "$0")" && pwd)
# golang-go, etcd-server, rsync, jq, dpkg-dev and the reflect2 sources come from there.
bash "$HERE/install-system-deps.sh"

# 1. A deb-src entry mirroring the machine's Debian entries (deb822 or one-line format).
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      | $SUDO tee /etc/apt/sources.list.d/tierplace-deb-src.sources >/dev/null
  elif [[ -f /etc/apt/sources.list ]]; then
    grep -E '^deb ' /etc/apt/sources.list | sed -E 's/^deb /deb-src /' \
      | $SUDO tee /etc/apt/sources.list.d/tierplace-deb-src.list >/dev/null
  else
    echo "no Debian apt entry found to mirror as deb-src" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
fi

# 2. The source package (1.20.2 with vendor/), fetched once into the cache.
WORK=$ROOT/work
mkdir -p "$WORK"
SRC=$(find "$WORK" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
if [[ -z $SRC ]]; then
  (cd "$WORK" && apt-get source -qq kubernetes)
  SRC=$(find "$WORK" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
fi
[[ -n $SRC && -d $SRC/vendor ]] || { echo "apt-get source kubernetes gave no tree" >&2; exit 1; }

# 3. REQUIRED: the vendored reflect2 1.0.1 breaks on Go 1.19 (the apiserver crashes on the first
#    custom resource). Replace it with Debian's reflect2 1.0.2 sources.
R2=$SRC/vendor/github.com/modern-go/reflect2
R2SYS=$(dpkg -L golang-github-modern-go-reflect2-dev | grep -E '/reflect2/[^/]+\.go$' | head -n1)
R2SYS=$(dirname "$R2SYS")
rm -f "$R2"/*.go "$R2"/*.s
cp "$R2SYS"/*.go "$R2"/
cp "$R2SYS"/*.s "$R2"/ 2>/dev/null || true
rm -f "$R2"/*_test.go

# 4. GOPATH layout expected by the Makefile, then an offline build.
GOP=$ROOT/go
mkdir -p "$GOP/src/k8s.io"
ln -sfn "$SRC" "$GOP/src/k8s.io/kubernetes"
start=$(date +%s)
(
  cd "$GOP/src/k8s.io/kubernetes"
  export GOPATH=$GOP GOPROXY=off CGO_ENABLED=0
  export GOCACHE=$ROOT/gocache
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy cmd/kubectl"
)
mkdir -p "$BIN"
for b in "${BINARIES[@]}"; do
  f=$(find "$SRC/_output" -type f -name "$b" -perm -u+x | head -n1)
  [[ -n $f ]] || { echo "build produced no $b" >&2; exit 1; }
  install -m 0755 "$f" "$BIN/$b"
done
echo "built in $(($(date +%s) - start)) s" >&2
if [[ ${KEEP_SOURCE:-0} != 1 ]]; then rm -rf "$WORK" "$GOP" "$ROOT/gocache"; fi
have_all
echo "$BIN"
