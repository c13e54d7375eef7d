#!/usr/bin/env bash
# Deletes the kind cluster (the weights volume under .artifacts stays for the next run).
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need kind
kind delete cluster --name "$CLUSTER"
rm -f "$KUBECONFIG_FILE"
