#!/bin/sh
# tritonserver from the nvidia-pytriton wheel, as the tiers' pods start it (args come from the
# operator: --model-repository=..., --load-model=..., ports). Sets up what the wheel's binary
# needs (docs: shared/notes/environment.md) and adds the CPU defaults, then execs it.
set -eu
repo=/models
for arg in "$@"; do
  case $arg in --model-repository=*) repo=${arg#--model-repository=} ;; esac
done
# The trained weights live on the same volume as the model repository.
export TIERPLACE_HOME="${TIERPLACE_HOME:-$repo/.tierplace}"
# The stub finds its Python packages through python3 on PATH (PYTHONPATH is ignored).
export PATH="${TIERPLACE_VENV:-/opt/venv}/bin:$PATH"
libdir=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
wheel_libs=$(python3 -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs")')
export LD_LIBRARY_PATH="$libdir:$wheel_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
root=${TIERPLACE_TRITON_ROOT:-/opt/tritonserver}
exec "$root/bin/tritonserver" \
  --backend-directory="$root/backends" \
  --pinned-memory-pool-byte-size=0 \
  --cuda-memory-pool-byte-size=0:0 \
  --allow-gpu-metrics=false \
  --exit-timeout-secs=5 \
  "$@"
