#!/usr/bin/env bash
# Off-domain sentiment text for the domain-shift replay (issue 18): the human-rated snippets of
# Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
# Media Text" (ICWSM 2014), shipped inside the vaderSentiment==3.3.2 SOURCE package on PyPI
# (additional_resources/hutto_ICWSM_2014.tar.gz; the wheel does not carry them). The sdist is
# fetched once with pip, verified by sha256, and the four *_GroundTruth.txt files are extracted
# OUTSIDE the repository; tierplace.model.domains reads them.
#
# Idempotent and quiet: does nothing when the extracted files are there. Prints their folder on
# its last line.
#   TIERPLACE_CACHE   cache root (default ~/.cache/tierplace)
#   PIP               the pip to download with (default: pip of the interpreter on PATH)
set -euo pipefail

VERSION=3.3.2
SHA256=5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9
CACHE=${TIERPLACE_CACHE:-$HOME/.cache/tierplace}
SDIST=$CACHE/downloads/vaderSentiment-$VERSION.tar.gz
DEST=$CACHE/data/vaderSentiment-$VERSION
FILES=(tweets amazonReviewSnippets nytEditorialSnippets movieReviewSnippets)
PIP=${PIP:-pip}

complete() {
  [[ -f $DEST/.sha256 && $(<"$DEST/.sha256") == "$SHA256" ]] || return 1
  for f in "${FILES[@]}"; do [[ -s $DEST/${f}_GroundTruth.txt ]] || return 1; done
}

verified() {
  [[ -f $1 ]] && echo "$SHA256  $1" | sha256sum --check --status
}

if complete; then
  echo "$DEST"
  exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if ! verified "$SDIST"; then
  if ! $PIP download --quiet --no-deps --no-binary :all: "vaderSentiment==$VERSION" \
    -d "$WORK/dl" >"$WORK/pip.log" 2>&1; then
    cat "$WORK/pip.log" >&2
    echo "fetch-domain-data: pip could not download vaderSentiment==$VERSION (sdist)" >&2
    exit 1
  fi
  if ! verified "$WORK/dl/vaderSentiment-$VERSION.tar.gz"; then
    echo "fetch-domain-data: sha256 mismatch for vaderSentiment-$VERSION.tar.gz" \
      "(expected $SHA256)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$SDIST")"
  mv -f "$WORK/dl/vaderSentiment-$VERSION.tar.gz" "$SDIST.tmp.$$"
  mv -f "$SDIST.tmp.$$" "$SDIST"
fi

tar -xzf "$SDIST" -C "$WORK" \
  "vaderSentiment-$VERSION/additional_resources/hutto_ICWSM_2014.tar.gz"
members=()
for f in "${FILES[@]}"; do members+=("hutto_ICWSM_2014/${f}_GroundTruth.txt"); done
tar -xzf "$WORK/vaderSentiment-$VERSION/additional_resources/hutto_ICWSM_2014.tar.gz" \
  -C "$WORK" "${members[@]}" hutto_ICWSM_2014/_README_.txt
chmod 0644 "$WORK"/hutto_ICWSM_2014/*
echo "$SHA256" >"$WORK/hutto_ICWSM_2014/.sha256"
mkdir -p "$(dirname "$DEST")"
# Atomic: a reader never sees a half-extracted folder.
rm -rf "$DEST.old.$$"
[[ -e $DEST ]] && mv "$DEST" "$DEST.old.$$"
mv "$WORK/hutto_ICWSM_2014" "$DEST"
rm -rf "$DEST.old.$$"
echo "fetch-domain-data: extracted the VADER ground-truth snippets into $DEST" >&2
echo "$DEST"
