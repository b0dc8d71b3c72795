#!/usr/bin/env bash
# `make bench`: release builds, then one table of
#   - the criterion benchmarks of the core (medians),
#   - h2load throughput of `nixuv serve` and of the bare-TLS ceiling (benches/ceiling.rs), HTTP/1.1
#     (keep-alive, as kube-apiserver calls webhooks) and HTTP/2, side by side in one run, medians of
#     RUNS runs, and their ratio; nixuv as deployed (the same Pod again and again, as the replicas of
#     one workload arrive: decision-cache hits) and with the cache off (every Pod decided),
#   - latency percentiles at a fixed 1,000 req/s and at saturation (from h2load's per-request log),
#   - RSS idle and under load (/proc), and requests per CPU-second,
#   - materialize cold and warm, with the init container's exact environment from the webhook: a
#     small offline Python env, and numpy + pandas from the package index with a nix derivation
#     (skipped with a message when the index is unreachable), and the app's `import pandas` with
#     and without the bytecode compiled at install (scripts/bench-envs.py).
# Only loopback traffic; every load run is bounded in count or time.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
N=${N:-20000}
CONC=${CONC:-16}

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo "building release binaries..." >&2
cargo build --release --quiet --bin nixuv
ceiling=$(cargo bench --bench ceiling --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ceiling" and m.get("executable")][-1])')
nixuv=target/release/nixuv

echo "criterion (core)..." >&2
cargo bench --quiet --bench core -- --warm-up-time 1 --measurement-time 3 --noplot 2>/dev/null | tee "$work/criterion.txt" >&2 || true

$nixuv certs --out-dir "$work/certs" --dns-name localhost --ip 127.0.0.1 >/dev/null
# The request: a ~5 KB opted-in Pod review (the same body as the criterion benchmark).
python3 - "$work/review.json" <<'PY'
import json, sys
env = [{"name": f"SETTING_{i}", "value": f"value-{i}"} for i in range(8)]
c = {"name": "main", "image": "python:3.12-slim", "command": ["python", "-m", "app"], "env": env,
     "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
     "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}]}
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"generateName": "etl-7d9f8b6c5-", "namespace": "team-a",
                    "labels": {"nixuv.io/inject": "true", "app": "etl"},
                    "annotations": {"nixuv.io/system-deps": "gcc, gnumake, ffmpeg-headless, jq, python312Packages.numpy",
                                    "nixuv.io/python-deps": "numpy==1.26.4, pandas>=2,<3, requests[socks], rich, pyarrow>=15"}},
       "spec": {"containers": [c], "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]}}
size = len(json.dumps(pod))
pod["metadata"]["annotations"]["example.com/padding"] = "x" * max(0, 5120 - size)
review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
          "request": {"uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                      "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "team-a",
                      "operation": "CREATE", "userInfo": {"username": "bench"}, "object": pod}}
open(sys.argv[1], "w").write(json.dumps(review))
PY

port_of() { grep -o '127.0.0.1:[0-9]*' "$1" | head -n1; }
# As deployed (deploy/base/deployment.yaml): mimalloc commits memory on demand.
MIMALLOC_ARENA_EAGER_COMMIT=0 $nixuv --log-format json serve --addr 127.0.0.1:0 --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
  --metrics-addr 127.0.0.1:0 2>"$work/nixuv.log" &
pids+=($!); nixuv_pid=$!
# The same server with the decision cache off: every request is decided from scratch.
MIMALLOC_ARENA_EAGER_COMMIT=0 $nixuv --log-format json serve --addr 127.0.0.1:0 --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
  --metrics-addr 127.0.0.1:0 --decision-cache-mib 0 2>"$work/nocache.log" &
pids+=($!); nocache_pid=$!
$ceiling --serve 127.0.0.1:0 "$work/certs/tls.crt" "$work/certs/tls.key" 2>"$work/ceiling.log" &
pids+=($!); ceiling_pid=$!
listening() { grep '"listening"' "$1" | grep -o '127.0.0.1:[0-9]*' | head -n1; }
for _ in $(seq 100); do [ -n "$(listening "$work/nixuv.log")" ] && [ -n "$(listening "$work/nocache.log")" ] && [ -n "$(port_of "$work/ceiling.log")" ] && break; sleep 0.1; done
nixuv_addr=$(listening "$work/nixuv.log")
nocache_addr=$(listening "$work/nocache.log")
ceiling_addr=$(port_of "$work/ceiling.log")
# A second ceiling answering with nixuv's own response bytes for this review (~3.5 KB, the base64
# patch, instead of ~150 bytes): how much of the gap is the size of a real answer.
python3 - "https://$nixuv_addr/mutate" "$work/certs/ca.crt" "$work/review.json" "$work/response.json" <<'PY'
import ssl, sys, urllib.request
url, ca, body, out = sys.argv[1:]
req = urllib.request.Request(url, data=open(body, "rb").read(), headers={"content-type": "application/json"})
open(out, "wb").write(urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca)).read())
PY
$ceiling --serve 127.0.0.1:0 "$work/certs/tls.crt" "$work/certs/tls.key" --response "$work/response.json" 2>"$work/ceiling-bytes.log" &
pids+=($!)
for _ in $(seq 100); do [ -n "$(port_of "$work/ceiling-bytes.log")" ] && break; sleep 0.1; done
bytes_addr=$(port_of "$work/ceiling-bytes.log")

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_idle=$(rss "$nixuv_pid")

# h2load ARGS... -> req/s of one run
rate() { h2load "$@" -d "$work/review.json" -H 'content-type: application/json' 2>/dev/null | awk '/^finished in/ {gsub(",", "", $4); print $4}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# failures of the last h2load run in LOG
failed() { awk '/^requests:/ {print $10 + $12}' "$1"; }

# The servers take turns within each run, so that drift in the machine's speed hits them alike.
echo "throughput..." >&2
declare -A tput addr=([nixuv]=$nixuv_addr [nocache]=$nocache_addr [ceiling]=$ceiling_addr [bytes]=$bytes_addr)
# The server's own CPU (user + system ticks) over all its runs of a protocol, per request: unlike
# the rates, it does not depend on how the client shares the CPUs.
declare -A pid=([nixuv]=$nixuv_pid [nocache]=$nocache_pid [ceiling]=$ceiling_pid) cpu_us
for proto in h1 h2; do
  flags=(-n "$N" -c "$CONC")
  if [ "$proto" = h1 ]; then flags+=(--h1); else flags+=(-m 10); fi
  declare -A samples=() ticks=()
  for _ in $(seq "$RUNS"); do
    for s in nixuv nocache ceiling bytes; do
      t0=$([ -n "${pid[$s]:-}" ] && cpu_ticks "${pid[$s]}" || echo 0)
      r=$(rate "${flags[@]}" "https://${addr[$s]}/mutate")
      t1=$([ -n "${pid[$s]:-}" ] && cpu_ticks "${pid[$s]}" || echo 0)
      samples[$s]+="${r:-0}"$'\n'
      ticks[$s]=$((${ticks[$s]:-0} + t1 - t0))
    done
  done
  for s in nixuv nocache ceiling bytes; do tput[$s-$proto]=$(printf '%s' "${samples[$s]}" | median); done
  for s in nixuv nocache ceiling; do
    cpu_us[$s-$proto]=$(awk -v t="${ticks[$s]}" -v hz="$(getconf CLK_TCK)" -v n=$((N * RUNS)) 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  done
done

# Latency: per-request durations from --log-file -> p50 p99 p99.9 in ms.
pct() { awk '{print $3}' "$1" | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f %.2f", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000, a[int(NR*0.999)]/1000}'; }
echo "latency at 1,000 req/s and at saturation..." >&2
# 10 HTTP/1.1 connections x 100 req/s each, 15 s.
h2load --h1 -c 10 --rps 100 -D 15 --warm-up-time 2 -d "$work/review.json" -H 'content-type: application/json' \
  --log-file "$work/fixed.log" "https://$nixuv_addr/mutate" >"$work/fixed.out" 2>&1 || true
read -r f50 f99 f999 <<<"$(pct "$work/fixed.log")"
fixed_failed=$(failed "$work/fixed.out")
ticks0=$(cpu_ticks "$nixuv_pid")
rss_peak=0
h2load --h1 -n "$((N * 2))" -c "$CONC" -d "$work/review.json" -H 'content-type: application/json' \
  --log-file "$work/sat.log" "https://$nixuv_addr/mutate" >"$work/sat.out" 2>&1 &
load=$!
while kill -0 "$load" 2>/dev/null; do r=$(rss "$nixuv_pid"); [ "$r" -gt "$rss_peak" ] && rss_peak=$r; sleep 0.05; done
wait "$load" || true
ticks1=$(cpu_ticks "$nixuv_pid")
read -r s50 s99 s999 <<<"$(pct "$work/sat.log")"
sat_failed=$(failed "$work/sat.out")
sat_reqs=$(wc -l <"$work/sat.log")
hz=$(getconf CLK_TCK)
per_cpu=$(awk -v n="$sat_reqs" -v t=$((ticks1 - ticks0)) -v hz="$hz" 'BEGIN {printf "%.0f", n / (t / hz)}')

echo "materialize and imports (real uv and nix)..." >&2
envs_rows=$(python3 scripts/bench-envs.py "$nixuv" "$work/envs")

crit() { grep -E -A1 "^$1( |$)" "$work/criterion.txt" | grep -o 'time: *\[[^]]*\]' | awk '{print $4, $5}' | head -n1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }

cat <<TABLE

nixuv benchmark — $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); medians of $RUNS runs, $N requests, $CONC connections
| measure | value |
|---|---|
| core: parse + decide + patch + encode, small Pod | $(crit "mutate/pod/small") |
| core: ~5 KB Pod (5 system + 5 Python deps) | $(crit "mutate/pod/5KB") |
| core: ~5 KB Pod, first of its declaration (memo empty) | $(crit "mutate/pod/5KB-new-declaration") |
| core: ~5 KB Pod, image store, env Ready (image volume, no init container) | $(crit "mutate/pod/5KB-image") |
| core: ~100 KB Pod | $(crit "mutate/pod/100KB") |
| core: 1 / 4 / 16 / 64 containers | $(crit "containers/1") / $(crit "containers/4") / $(crit "containers/16") / $(crit "containers/64") |
| HTTP/1.1 keep-alive: nixuv / ceiling req/s | ${tput[nixuv-h1]} / ${tput[ceiling-h1]} = $(ratio "${tput[nixuv-h1]}" "${tput[ceiling-h1]}") |
| HTTP/1.1, decision cache off: nixuv / ceiling req/s | ${tput[nocache-h1]} / ${tput[ceiling-h1]} = $(ratio "${tput[nocache-h1]}" "${tput[ceiling-h1]}") |
| HTTP/2 (10 streams/conn): nixuv / ceiling req/s | ${tput[nixuv-h2]} / ${tput[ceiling-h2]} = $(ratio "${tput[nixuv-h2]}" "${tput[ceiling-h2]}") |
| HTTP/2, decision cache off: nixuv / ceiling req/s | ${tput[nocache-h2]} / ${tput[ceiling-h2]} = $(ratio "${tput[nocache-h2]}" "${tput[ceiling-h2]}") |
| ceiling answering nixuv's response bytes / ceiling, HTTP/1.1 and HTTP/2 | $(ratio "${tput[bytes-h1]}" "${tput[ceiling-h1]}") and $(ratio "${tput[bytes-h2]}" "${tput[ceiling-h2]}") |
| latency at 1,000 req/s (HTTP/1.1): p50 / p99 / p99.9 | $f50 / $f99 / $f999 ms (failed: ${fixed_failed:-?}) |
| latency at saturation (HTTP/1.1, $CONC conns): p50 / p99 / p99.9 | $s50 / $s99 / $s999 ms (failed: ${sat_failed:-?}) |
| RSS idle / peak under load | $((rss_idle / 1024)) MiB / $((rss_peak / 1024)) MiB |
| requests per CPU-second (saturation) | $per_cpu |
| server CPU per request, HTTP/1.1: as deployed / every Pod new / ceiling | ${cpu_us[nixuv-h1]} / ${cpu_us[nocache-h1]} / ${cpu_us[ceiling-h1]} µs |
| server CPU per request, HTTP/2: as deployed / every Pod new / ceiling | ${cpu_us[nixuv-h2]} / ${cpu_us[nocache-h2]} / ${cpu_us[ceiling-h2]} µs |
$envs_rows
TABLE
