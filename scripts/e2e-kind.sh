#!/usr/bin/env bash
# `make e2e`: nixuv on a real cluster. A kind cluster (deploy/e2e/kind.yaml), both images built
# and loaded, nixuv installed from deploy/ as docs/install.md says (the self-managed overlay and
# the kind stores for team-a), then the Pods of deploy/e2e/pods.yaml: one running ffmpeg and numpy
# from a stock image, a Deployment of three sharing one env, a typo'd label that `nixuv check`
# explains; then the webhook is scaled to zero while a Pod is created (failurePolicy: Fail refuses
# it) and its certificate is rotated. Then the image store (docs/install.md, "Image store"): a
# registry beside the cluster, nixuv switched to it, the same Pod's env requested, built by the
# builder Job and published, and the next Pod started from the image volume with no init
# container. Cold and warm start times go to $GITHUB_STEP_SUMMARY (or stdout). Needs a Docker engine, kind and kubectl; exits 1 with a message where one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
summary=${GITHUB_STEP_SUMMARY:-/dev/stdout}
die() {
  echo "make e2e: $*" >&2
  exit 1
}
{ command -v docker && docker info; } >/dev/null 2>&1 || die "needs a running Docker engine (none here); run it where docker works (the CI job e2e does)"
command -v kind >/dev/null 2>&1 || die "needs kind (https://kind.sigs.k8s.io) on PATH"
command -v kubectl >/dev/null 2>&1 || die "needs kubectl on PATH"

cluster=nixuv-e2e
version=${VERSION:-e2e}
keep=${KEEP_CLUSTER:-}
cleanup() {
  if [ -z "$keep" ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    docker rm -f kind-registry >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# The init image needs nix-portable's checksum; a release records it in versions.env. For this
# throwaway cluster only, take it from the download when it is not recorded yet.
# shellcheck source=/dev/null
. deploy/images/versions.env
arch=$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
var="NIX_PORTABLE_SHA256_$(echo "$arch" | tr '[:lower:]' '[:upper:]')"
if [ -z "${!var}" ]; then
  url="https://github.com/DavHau/nix-portable/releases/download/${NIX_PORTABLE_VERSION}/nix-portable-$(uname -m)"
  sum=$(curl -fsSL "$url" | sha256sum | cut -d' ' -f1)
  export "$var=$sum"
  echo "e2e: nix-portable $NIX_PORTABLE_VERSION for $arch not pinned in versions.env; using $sum (this run only)"
fi

kind create cluster --config deploy/e2e/kind.yaml --wait 120s
make image VERSION="$version" "$var=${!var}"
kind load docker-image --name "$cluster" "ghcr.io/nixuv/nixuv:$version" "ghcr.io/nixuv/nixuv-init:$version"

# Install as docs/install.md says, with the images just built.
work=$(mktemp -d)
cat >"$work/kustomization.yaml" <<KUST
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $PWD/deploy/overlays/self-managed
images:
  - {name: ghcr.io/nixuv/nixuv, newTag: $version}
  - {name: ghcr.io/nixuv/nixuv-init, newTag: $version}
KUST
certs() { # a new CA and serving certificate into the Secret nixuv-tls (docs/install.md)
  rm -rf "$work/certs"
  cargo run -q --bin nixuv -- certs --out-dir "$work/certs" --dns-name nixuv.nixuv-system.svc >/dev/null
  kubectl -n nixuv-system create secret generic nixuv-tls --from-file="$work/certs/ca.crt" \
    --from-file="$work/certs/tls.crt" --from-file="$work/certs/tls.key" --dry-run=client -o yaml | kubectl apply -f -
}
kubectl apply -k "$work"
certs
kubectl -n nixuv-system rollout status deployment/nixuv --timeout=180s
kubectl create namespace team-a --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -k deploy/overlays/kind-stores

seconds_until() { # seconds_until CMD...: runs CMD until it succeeds (at most 15 min)
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    [ $((SECONDS - start)) -lt 900 ] || return 1
    sleep 2
  done
  echo $((SECONDS - start))
}
pod_done() { [ "$(kubectl -n team-a get pod "$1" -o jsonpath='{.status.phase}')" = Succeeded ]; }

start=$SECONDS
kubectl apply -f deploy/e2e/pods.yaml
cold=$(seconds_until pod_done e2e-both) || die "e2e-both did not succeed: $(kubectl -n team-a logs e2e-both -c nixuv-init --tail=20)"
kubectl -n team-a logs e2e-both -c app
kubectl -n team-a rollout status deployment/e2e-shared --timeout=900s
shared=$((SECONDS - start))
# The same env again: the warm path.
kubectl -n team-a delete pod e2e-both --wait
kubectl apply -f deploy/e2e/pods.yaml
warm=$(seconds_until pod_done e2e-both) || die "e2e-both did not succeed warm"
# The typo: allowed unchanged, and explained.
[ -z "$(kubectl -n team-a get pod e2e-typo -o jsonpath='{.spec.initContainers}')" ] || die "e2e-typo was injected"
check=$(cargo run -q --bin nixuv -- check pod e2e-typo -n team-a 2>&1 || true)
echo "$check" | grep -q 'nixuv.io/inject' || die "nixuv check did not name the label: $check"

# The webhook down: with failurePolicy Fail an opted-in Pod is refused, not started without its env.
kubectl -n nixuv-system scale deployment/nixuv --replicas=0
kubectl -n nixuv-system rollout status deployment/nixuv --timeout=60s
if kubectl -n team-a run e2e-down --image=debian:bookworm-slim --labels=nixuv.io/inject=true \
  --annotations=nixuv.io/python-deps=six --restart=Never -- true 2>"$work/down.err"; then
  die "a Pod was admitted while the webhook was down"
fi
grep -q 'failed calling webhook' "$work/down.err" || die "unexpected refusal: $(cat "$work/down.err")"
kubectl -n nixuv-system scale deployment/nixuv --replicas=2
kubectl -n nixuv-system rollout status deployment/nixuv --timeout=180s

# Certificate rotation: a new CA and certificate in the Secret; nixuv reloads them and keeps the
# webhook configuration's caBundle in step, and Pods keep being admitted.
old_ca=$(kubectl get mutatingwebhookconfiguration nixuv -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
certs
rotated() { [ "$(kubectl get mutatingwebhookconfiguration nixuv -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" != "$old_ca" ]; }
rotation=$(seconds_until rotated) || die "the caBundle did not follow the new CA"
kubectl -n team-a delete pod e2e-both --wait
kubectl apply -f deploy/e2e/pods.yaml
seconds_until pod_done e2e-both >/dev/null || die "no Pod admitted after the certificate rotation"

# The image store. A registry beside the cluster on kind's network, as kind-registry:5000 for the
# nodes (containerd reads /etc/containerd/certs.d; plain HTTP) and for Pods (the builder pushes
# there through the cluster DNS, which forwards to the node's resolver).
docker rm -f kind-registry >/dev/null 2>&1 || true
docker run -d --name kind-registry --network kind registry:2 >/dev/null
for node in $(kind get nodes --name "$cluster"); do
  docker exec "$node" mkdir -p /etc/containerd/certs.d/kind-registry:5000
  printf '[host."http://kind-registry:5000"]\n  capabilities = ["pull", "resolve"]\n' |
    docker exec -i "$node" tee /etc/containerd/certs.d/kind-registry:5000/hosts.toml >/dev/null
done
mkdir -p "$work/image"
cat >"$work/image/kustomization.yaml" <<KUST
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ..
components:
  - $PWD/deploy/components/image-store
images:
  - {name: ghcr.io/nixuv/nixuv-init, newTag: $version}
patches:
  - target: {kind: ConfigMap, name: nixuv-config}
    patch: |-
      - op: replace
        path: /data/config.yaml
        value: |
          storage: {mode: pvc}
          imageStore: {repository: "kind-registry:5000/nixuv/envs", insecure: true}
KUST
kubectl apply -k "$work/image"
kubectl -n nixuv-system rollout restart deployment/nixuv
kubectl -n nixuv-system rollout status deployment/nixuv --timeout=180s
kubectl -n team-a delete pod e2e-both --wait
kubectl apply -f deploy/e2e/pods.yaml
env_id=$(kubectl -n team-a get pod e2e-both -o jsonpath='{.metadata.annotations.nixuv\.io/env}')
ready() { [ "$(kubectl get nixuvenv "$env_id" -o jsonpath='{.status.phase}')" = Ready ]; }
published=$(seconds_until ready) || die "env $env_id not published: $(kubectl get nixuvenv "$env_id" -o yaml)"
kubectl get nixuvenvs
seconds_until pod_done e2e-both >/dev/null || die "e2e-both did not succeed on the fallback store"
kubectl -n team-a delete pod e2e-both --wait
kubectl apply -f deploy/e2e/pods.yaml
[ -z "$(kubectl -n team-a get pod e2e-both -o jsonpath='{.spec.initContainers}')" ] || die "e2e-both got an init container although its env is Ready"
kubectl -n team-a get pod e2e-both -o jsonpath='{.spec.volumes[?(@.name=="nixuv-env")].image.reference}' | grep -q '@sha256:' ||
  die "e2e-both has no image volume by digest"
from_image=$(seconds_until pod_done e2e-both) || die "e2e-both did not succeed from the image: $(kubectl -n team-a describe pod e2e-both | tail -20)"
kubectl -n team-a logs e2e-both -c app
docker rm -f kind-registry >/dev/null 2>&1 || true

{
  echo "### nixuv e2e (kind, Kubernetes $(kubectl version -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | tail -1))"
  echo "| | seconds |"
  echo "|---|---|"
  echo "| cold start (ffmpeg-headless + numpy, from nothing) | $cold |"
  echo "| Deployment of 3 sharing one env, all ready | $shared |"
  echo "| warm start (the same env again) | $warm |"
  echo "| certificate rotation, Secret to caBundle | $rotation |"
  echo "| image store: env requested to Ready (builder Job, published) | $published |"
  echo "| image store: Pod start from the image volume (no init container) | $from_image |"
} >>"$summary"
echo "e2e: ok"
