#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: Debian packages (after apt-get update) and
# PyPI tools. Safe to run repeatedly; does nothing when everything is present.
set -euo pipefail

need_apt=()
command -v nix >/dev/null 2>&1 || need_apt+=(nix-bin)
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v patchelf >/dev/null 2>&1 || need_apt+=(patchelf)  # tests/support/make_python_dist.py
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "install-tools: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

py_need=()
command -v uv >/dev/null 2>&1 || py_need+=(uv)
python3 -c 'import kubernetes_validate' >/dev/null 2>&1 || py_need+=(kubernetes-validate)
if [ ${#py_need[@]} -gt 0 ]; then
  echo "install-tools: pip install ${py_need[*]}"
  python3 -m pip install -q --disable-pip-version-check "${py_need[@]}"
fi

cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
echo "install-tools: ok (nix $(nix --version | awk '{print $3}'), uv $(uv --version | awk '{print $2}'))"
