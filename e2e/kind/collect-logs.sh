#!/usr/bin/env bash
# Collects everything needed to debug a run into $ARTIFACTS/logs; never fails the caller.
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"
set +e

out=$ARTIFACTS/logs
mkdir -p "$out"
log "collecting logs into $out"
if [[ -f $KUBECONFIG_FILE ]]; then
  kube get nodes -o wide --show-labels >"$out/nodes.txt" 2>&1
  kube get all,inferencetiers,inferencecascades,pvc,pdb -A -o wide >"$out/resources.txt" 2>&1
  kube get inferencetiers,inferencecascades -A -o yaml >"$out/custom-resources.yaml" 2>&1
  kube get events -A --sort-by=.lastTimestamp >"$out/events.txt" 2>&1
  kube -n "$NAMESPACE" describe pods >"$out/describe-pods.txt" 2>&1
  kube -n "$NAMESPACE" logs deployment/tierplace-operator --all-containers \
    >"$out/operator.log" 2>&1
  for pod in $(kube -n "$NAMESPACE" get pods -o name 2>/dev/null); do
    kube -n "$NAMESPACE" logs "$pod" --all-containers --prefix >"$out/${pod#pod/}.log" 2>&1
  done
fi
if command -v kind >/dev/null && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind export logs --name "$CLUSTER" "$out/kind" >/dev/null 2>&1
fi
exit 0
