#!/usr/bin/env bash
# Lays out the weights volume that every kind node mounts at /srv/tierplace/models:
#   <models>/<variant>/config.pbtxt, 1/model.py   the Triton model repository (model-repo/)
#   <models>/.tierplace/models/<variant>/          trained weights (TIERPLACE_HOME of the pods)
# Weights come from $TIERPLACE_HOME/models when trained there (`make train`, ~40 min), else
# TIERPLACE_E2E_WEIGHTS=tiny makes tiny, quickly trained variants (~1 min; accuracy is poor,
# which is fine for the e2e: answers still climb the cascade).
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"

mode=${TIERPLACE_E2E_WEIGHTS:-trained}
home=${TIERPLACE_HOME:-$HOME/.cache/tierplace}
mkdir -p "$MODELS_DIR/.tierplace/models"
cp -R "$REPO/model-repo/." "$MODELS_DIR/"

case $mode in
  trained)
    for variant in minilm-l2 minilm-l6 mpnet-base; do
      if [[ ! -f $home/models/$variant/tierplace.json ]]; then
        log "no trained $variant in $home/models: run 'make train', or TIERPLACE_E2E_WEIGHTS=tiny"
        exit 1
      fi
      rm -rf "${MODELS_DIR:?}/.tierplace/models/$variant"
      cp -R "$home/models/$variant" "$MODELS_DIR/.tierplace/models/$variant"
    done
    ;;
  tiny)
    log "training tiny variants into $MODELS_DIR/.tierplace"
    "$PYTHON" -c 'import sys; from pathlib import Path; from tierplace.model.tiny import make_tiny_home; make_tiny_home(Path(sys.argv[1]))' \
      "$MODELS_DIR/.tierplace"
    ;;
  *)
    log "TIERPLACE_E2E_WEIGHTS must be 'trained' or 'tiny', not '$mode'"
    exit 1
    ;;
esac
# The pods run as uid 65532 and mount the volume read-only.
chmod -R a+rX "$MODELS_DIR"
log "weights volume ready in $MODELS_DIR ($mode)"
