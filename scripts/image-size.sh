#!/usr/bin/env bash
# The compressed size of each platform of a pushed image, checked against its budget:
#   image-size.sh REF@DIGEST BUDGET_MIB
# Prints one Markdown table row a platform (for the release's summary) and exits 1 when a
# platform is over the budget. Reads the registry's manifests only (docker buildx imagetools).
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: image-size.sh REF@DIGEST BUDGET_MIB" >&2
  exit 2
fi
ref=$1
budget=$2
repo=${ref%@*}
over=0
index=$(docker buildx imagetools inspect --raw "$ref")
while read -r platform digest; do
  bytes=$(docker buildx imagetools inspect --raw "$repo@$digest" | jq '[.layers[].size] | add')
  mib=$((bytes / 1048576))
  status=ok
  if [ "$mib" -gt "$budget" ]; then
    status="over the budget of ${budget} MiB"
    over=1
  fi
  echo "| ${repo##*/} | $platform | $mib MiB | $status |"
done < <(echo "$index" | jq -r '.manifests[] | select(.platform.os != "unknown") | "\(.platform.os)/\(.platform.architecture) \(.digest)"')
exit "$over"
