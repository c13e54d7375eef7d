#!/usr/bin/env bash
# System packages the tests and the embedded cascade need (Debian 12). Idempotent.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
# The local Kubernetes control plane (scripts/build-control-plane.sh builds it; tests run etcd).
command -v etcd >/dev/null || need+=(etcd-server)
command -v go >/dev/null || need+=(golang-go)
for p in rsync jq dpkg-dev golang-github-modern-go-reflect2-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  # The Debian package enables a system service; we run our own instances only.
  $SUDO systemctl disable --now prometheus 2>/dev/null || true
  $SUDO systemctl disable --now etcd 2>/dev/null || true
fi
