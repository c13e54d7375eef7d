#!/usr/bin/env bash
# Builds the three images and loads them into the kind cluster's nodes (no registry needed).
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind

cd "$REPO"
log "building $IMAGE_TIERPLACE"
docker build -f images/tierplace.Dockerfile -t "$IMAGE_TIERPLACE" .
log "building $IMAGE_TRITON"
docker build -f images/triton-cpu.Dockerfile --target triton -t "$IMAGE_TRITON" .
# No aliases under the CRDs' old default names: the chart (ci/kind-values.yaml) has the
# operator give the tiers and routers it creates these very images (TIERPLACE_TRITON_IMAGE,
# TIERPLACE_ROUTER_IMAGE; tests/chart checks they agree with lib.sh).
images=("$IMAGE_TIERPLACE" "$IMAGE_TRITON")
if [[ ${TIERPLACE_E2E_TRAINER:-0} == 1 ]]; then
  log "building $IMAGE_TRAINER"
  docker build -f images/triton-cpu.Dockerfile --target trainer -t "$IMAGE_TRAINER" .
  images+=("$IMAGE_TRAINER")
fi
for image in "${images[@]}"; do
  log "loading $image into kind/$CLUSTER"
  kind load docker-image --name "$CLUSTER" "$image"
done
