#!/usr/bin/env bash
# System packages the tests and the embedded cascade need (Debian 12). Idempotent.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
# The local Kubernetes control plane (scripts/build-control-plane.sh builds it; tests run etcd).
command -v etcd >/dev/null || need+=(etcd-server)
command -v go >/dev/null || need+=(golang-go)
command -v npm >/dev/null || need+=(npm)
# helm comes from an npm package (scripts/install-helm.sh). The real-node tier (tests/nodes):
# containerd, runc and the CNI plugins run the pods; podman/buildah build the images from
# images/*.Dockerfile on a base that mmdebstrap makes from Debian packages; iptables and
# conntrack for kube-proxy; iproute2 for the sealed network namespace; dnsmasq-base answers
# the test cluster's Service names (what CoreDNS does in kind).
for p in rsync jq dpkg-dev golang-github-modern-go-reflect2-dev unzip \
  containerd runc containernetworking-plugins podman buildah mmdebstrap iptables conntrack \
  iproute2 uidmap gcc libc6-dev dnsmasq-base; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  # The Debian package enables a system service; we run our own instances only.
  $SUDO systemctl disable --now prometheus 2>/dev/null || true
  $SUDO systemctl disable --now etcd 2>/dev/null || true
  $SUDO systemctl disable --now containerd 2>/dev/null || true
fi
