#!/usr/bin/env bash
# Creates the kind cluster, builds and loads the images, prepares the weights volume and
# installs the chart (ci/kind-values.yaml). Idempotent: an existing cluster is reused.
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind kubectl

mkdir -p "$ARTIFACTS"
bash "$E2E_DIR/prepare-weights.sh"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  sed "s|__MODELS_DIR__|$MODELS_DIR|g; s|^name: .*|name: $CLUSTER|" \
    "$E2E_DIR/kind-config.yaml" >"$ARTIFACTS/kind-config.yaml"
  kind create cluster --config "$ARTIFACTS/kind-config.yaml" \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
fi
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"

bash "$E2E_DIR/build-images.sh"

HELM=$(helm_bin)
log "installing the chart into namespace $NAMESPACE"
"$HELM" --kubeconfig "$KUBECONFIG_FILE" upgrade --install tierplace "$REPO/charts/tierplace" \
  --namespace "$NAMESPACE" --create-namespace \
  --values "$REPO/charts/tierplace/ci/kind-values.yaml" \
  --wait --timeout 5m
kube -n "$NAMESPACE" rollout status deployment/tierplace-operator --timeout 180s
log "ready: KUBECONFIG=$KUBECONFIG_FILE"
