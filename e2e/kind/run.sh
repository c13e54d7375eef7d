#!/usr/bin/env bash
# The whole kind e2e: up, the pytest e2e suite against the cluster, and ALWAYS log collection
# and teardown (KEEP_CLUSTER=1 keeps the cluster for debugging). Exit status: the suite's.
# Extra arguments go to pytest, e.g. `e2e/kind/run.sh -k degraded`.
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"

finish() {
  local status=$?
  bash "$E2E_DIR/collect-logs.sh"
  if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
    log "keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG_FILE)"
  else
    bash "$E2E_DIR/down.sh" || true
  fi
  log "logs in $ARTIFACTS/logs; exit $status"
  exit "$status"
}
trap finish EXIT

bash "$E2E_DIR/up.sh"
cd "$REPO"
TIERPLACE_E2E_KUBECONFIG=$KUBECONFIG_FILE TIERPLACE_E2E_NAMESPACE=$NAMESPACE \
  "$REPO/.venv/bin/pytest" -m e2e tests/e2e -p no:cacheprovider -rs "$@"
