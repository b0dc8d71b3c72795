#!/bin/sh
# The interpreters the init image carries, so that `nixuv materialize` installs Python offline.
#
#   python-downloads.sh fetch RELEASE ARCH DIR MINORS
#       downloads, from python-build-standalone release RELEASE, the newest `install_only` build
#       of each of MINORS (comma-separated, e.g. 3.12,3.13) for ARCH (amd64/x86_64 or
#       arm64/aarch64) into DIR, each checked against the release's SHA256SUMS; then writes the
#       index as below, with file:// URLs.
#   python-downloads.sh index DIR URL_PREFIX
#       writes DIR/downloads.json, uv's download list (UV_PYTHON_DOWNLOADS_JSON_URL) for every
#       cpython-X.Y.Z+BUILD-ARCH-unknown-linux-gnu-install_only.tar.gz in DIR, each entry's URL
#       URL_PREFIX/<file> (file:///opt/nixuv/python in the image) with its SHA-256.
set -eu

index() {
  dir=$1 prefix=$2
  out="$dir/downloads.json.tmp"
  printf '{' >"$out"
  sep=
  for f in "$dir"/cpython-*-unknown-linux-gnu-install_only.tar.gz; do
    [ -f "$f" ] || continue
    name=$(basename "$f")
    # cpython-3.12.7+20241016-x86_64-unknown-linux-gnu-install_only.tar.gz
    fields=$(printf '%s\n' "$name" | sed -n 's/^cpython-\([0-9]*\)\.\([0-9]*\)\.\([0-9]*\)+\([0-9]*\)-\(x86_64\|aarch64\)-unknown-linux-gnu-install_only\.tar\.gz$/\1 \2 \3 \4 \5/p')
    if [ -z "$fields" ]; then
      echo "python-downloads: skipping $name (not a python-build-standalone install_only name)" >&2
      continue
    fi
    # shellcheck disable=SC2086 # five words, from the pattern above
    set -- $fields
    sha=$(sha256sum "$f" | cut -d' ' -f1)
    printf '%s"cpython-%s.%s.%s-linux-%s-gnu":{"name":"cpython","arch":{"family":"%s","variant":null},"os":"linux","libc":"gnu","major":%s,"minor":%s,"patch":%s,"prerelease":"","url":"%s/%s","sha256":"%s","variant":null,"build":"%s"}' \
      "$sep" "$1" "$2" "$3" "$5" "$5" "$1" "$2" "$3" "$prefix" "$name" "$sha" "$4" >>"$out"
    sep=,
  done
  printf '}\n' >>"$out"
  mv "$out" "$dir/downloads.json"
}

fetch() {
  release=$1 dir=$3 minors=$4
  case "$2" in
    amd64 | x86_64) arch=x86_64 ;;
    arm64 | aarch64) arch=aarch64 ;;
    *) echo "python-downloads: unsupported architecture $2" >&2; exit 1 ;;
  esac
  base="https://github.com/astral-sh/python-build-standalone/releases/download/$release"
  mkdir -p "$dir"
  curl -fsSL "$base/SHA256SUMS" -o "$dir/SHA256SUMS"
  for minor in $(printf '%s' "$minors" | tr ',' ' '); do
    # The newest patch release of MINOR in this release (sorted by version).
    file=$(awk '{print $2}' "$dir/SHA256SUMS" \
      | grep -E "^cpython-${minor}\.[0-9]+\+${release}-${arch}-unknown-linux-gnu-install_only\.tar\.gz$" \
      | sort -V | tail -n 1)
    if [ -z "$file" ]; then
      echo "python-downloads: release $release has no install_only build of Python $minor for $arch" >&2
      exit 1
    fi
    curl -fsSL "$base/$(printf '%s' "$file" | sed 's/+/%2B/')" -o "$dir/$file"
    (cd "$dir" && grep " $file\$" SHA256SUMS | sha256sum -c -)
  done
  rm "$dir/SHA256SUMS"
}

case "${1:-}" in
  index) shift; index "$@" ;;
  fetch) shift; fetch "$@"; index "$3" "file://$3" ;;
  *) echo "usage: $0 fetch RELEASE ARCH DIR MINORS | index DIR URL_PREFIX" >&2; exit 2 ;;
esac
