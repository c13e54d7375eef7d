#!/usr/bin/env bash
# Builds the project's images from images/*.Dockerfile with podman, without a registry or a
# Docker engine, and saves each as a docker-archive tar that a node's containerd imports.
# A user with Docker builds the very same Dockerfiles (images/README.md); only the inputs
# that a registry-less machine lacks are supplied here, as build arguments and build mounts:
#   - the base image (python:3.11-slim-bookworm cannot be pulled): made by mmdebstrap from
#     Debian packages and imported under a local name, passed as PYTHON_IMAGE;
#   - the CPU torch wheel (PyPI's x86_64 torch is the CUDA build): the host's pip resolves
#     torch==2.13.0 to the CPU build on disk; a small file:// index of it is TORCH_INDEX_URL;
#   - the host's CA bundle, mounted read-only at build time (outgoing TLS is re-signed here).
#
# Cached outside the repository, keyed by the content of everything that goes into an image:
# an unchanged tree rebuilds nothing, and podman's layer cache keeps the slow pip layers when
# only the tierplace sources changed. Prints "NAME=REF" lines and the archive paths at the end
# (also written to $CACHE/images/current.env).
#   TIERPLACE_CACHE   cache root (default ~/.cache/tierplace)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TIERPLACE_CACHE:-$HOME/.cache/tierplace}
OUT=$CACHE/images
VERSION=0.1.0
BASE=localhost/tierplace/python:3.11-bookworm
mkdir -p "$OUT"

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

for tool in podman mmdebstrap gcc; do
  command -v "$tool" >/dev/null || {
    log "missing '$tool': run scripts/install-system-deps.sh"
    exit 1
  }
done

# podman with runc (crun fails on this machine's hybrid cgroups) and ulimits a build can raise.
export CONTAINERS_CONF=$OUT/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF

# The key: every file that any image copies or installs from, by content.
key=$(
  cd "$REPO" &&
    find images operator model-repo pyproject.toml README.md requirements-packaged.txt \
      -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12
)
TAG=$VERSION-$key
TIERPLACE_REF=docker.io/tierplace/tierplace:$TAG
TRITON_REF=docker.io/tierplace/triton-cpu:$TAG
# The pod sandbox image: no registry to pull one from, so images/pause/pause.c, static.
PAUSE_REF=docker.io/tierplace/pause:3.4

have() { podman image exists "$1"; }

# 1. The base image, once: minbase Debian with Python 3.11, pip, venv, the CA bundle and
#    libpython (the Triton Python-backend stub links the shared libpython).
if ! have "$BASE"; then
  log "making the base image $BASE from Debian packages (about a minute, once)"
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  mirrors=()
  while read -r uri suite; do mirrors+=("deb $uri $suite main"); done < <(
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
      sort -u
  )
  ((${#mirrors[@]})) || mirrors=("deb http://deb.debian.org/debian bookworm main")
  mmdebstrap --variant=minbase --format=directory \
    --include=python3,python3-venv,python3-pip,ca-certificates,libpython3.11 \
    --customize-hook='ln -sf /usr/bin/python3 "$1/usr/local/bin/python3"' \
    --customize-hook='ln -sf /usr/bin/python3 "$1/usr/local/bin/python"' \
    bookworm "$rootfs" "${mirrors[@]}"
  tar -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# 2. A file:// index holding the CPU torch and its dependencies, as the host's pip resolves them.
WHEELS=$OUT/wheelhouse
if [[ ! -f $WHEELS/simple/torch/index.html ]]; then
  log "collecting the CPU torch wheel and its dependencies"
  python3 -m pip download --quiet --only-binary=:all: --python-version 3.11 \
    -d "$WHEELS/files" torch==2.13.0
  rm -rf "$WHEELS/simple"
  for whl in "$WHEELS"/files/*.whl; do
    file=$(basename "$whl")
    project=$(echo "${file%%-*}" | tr 'A-Z_.' 'a-z--')
    mkdir -p "$WHEELS/simple/$project"
    printf '<a href="../../files/%s">%s</a>\n' "$file" "$file" >>"$WHEELS/simple/$project/index.html"
  done
fi

build() { # REF DOCKERFILE [TARGET]
  local ref=$1 file=$2 target=${3:-} args=()
  [[ -n $target ]] && args+=(--target "$target")
  if have "$ref"; then
    log "$ref is up to date"
    return
  fi
  log "building $ref from $file${target:+ (target $target)}"
  podman build --network=host --layers \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    -v "$WHEELS":/wheels:ro \
    --build-arg PYTHON_IMAGE="$BASE" \
    --build-arg TORCH_INDEX_URL=file:///wheels/simple \
    -f "$REPO/$file" "${args[@]}" -t "$ref" "$REPO"
}

start=$(date +%s)
if ! have "$PAUSE_REF"; then
  log "making $PAUSE_REF"
  mkdir -p "$OUT/pause"
  gcc -Os -static -Wall -Werror -o "$OUT/pause/pause" "$REPO/images/pause/pause.c"
  tar -C "$OUT/pause" -c pause |
    podman import --change 'ENTRYPOINT ["/pause"]' - "$PAUSE_REF" >/dev/null
fi
build "$TIERPLACE_REF" images/tierplace.Dockerfile
build "$TRITON_REF" images/triton-cpu.Dockerfile triton
# Also under the chart's appVersion, the tag examples/ and the kind scripts name.
podman tag "$TIERPLACE_REF" "docker.io/tierplace/tierplace:$VERSION"
podman tag "$TRITON_REF" "docker.io/tierplace/triton-cpu:$VERSION"
# Earlier keys' images are never needed again (the layer cache keeps what a rebuild reuses).
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' |
  grep -E '^docker.io/tierplace/(tierplace|triton-cpu):'"$VERSION"'-' || true); do
  [[ $old == "$TIERPLACE_REF" || $old == "$TRITON_REF" ]] || podman rmi "$old" >/dev/null
done

# 3. Archives for `ctr images import`, one per image and key.
save() { # NAME TAG REF...
  local name=$1 tag=$2 tar=$OUT/$1-$2.tar
  shift 2
  if [[ ! -s $tar ]]; then
    log "saving $* to $tar"
    rm -f "$tar.part"
    podman save --format docker-archive --multi-image-archive -o "$tar.part" "$@"
    mv "$tar.part" "$tar"
  fi
  # Older archives of the same image are of no use any more.
  find "$OUT" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$tag.tar" -delete
  echo "$tar"
}
pause_tar=$(save pause 3.4 "$PAUSE_REF")
tierplace_tar=$(save tierplace "$TAG" "$TIERPLACE_REF")
triton_tar=$(save triton-cpu "$TAG" "$TRITON_REF")
log "images ready in $(($(date +%s) - start)) s"
cat >"$OUT/current.env" <<EOF
TIERPLACE_TAG=$TAG
TIERPLACE_IMAGE=$TIERPLACE_REF
TIERPLACE_TRITON_IMAGE=$TRITON_REF
TIERPLACE_IMAGE_TAR=$tierplace_tar
TIERPLACE_TRITON_IMAGE_TAR=$triton_tar
TIERPLACE_PAUSE_IMAGE=$PAUSE_REF
TIERPLACE_PAUSE_IMAGE_TAR=$pause_tar
EOF
cat "$OUT/current.env"
