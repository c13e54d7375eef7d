# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are for the scripts that source this file
# Shared settings of the kind e2e scripts (sourced, not run).
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
CLUSTER=${TIERPLACE_KIND_CLUSTER:-tierplace-e2e}
ARTIFACTS=${TIERPLACE_E2E_ARTIFACTS:-$REPO/.artifacts/e2e-kind}
KUBECONFIG_FILE=$ARTIFACTS/kubeconfig
MODELS_DIR=$ARTIFACTS/models
NAMESPACE=${TIERPLACE_E2E_NAMESPACE:-tierplace}
VERSION=0.1.0
IMAGE_TIERPLACE=tierplace/tierplace:$VERSION
IMAGE_TRITON=tierplace/triton-cpu:$VERSION
IMAGE_TRAINER=tierplace/trainer:$VERSION
PYTHON=${PYTHON:-$REPO/.venv/bin/python}

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || {
      log "missing '$tool' (see e2e/README.md)"
      exit 1
    }
  done
}

helm_bin() { bash "$REPO/scripts/install-helm.sh" | tail -n 1; }

kube() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }
