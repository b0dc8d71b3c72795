#!/bin/sh
# Ships a stripped binary and keeps its debug info apart: strip.sh BINARY OUT_BINARY OUT_DEBUG.
# OUT_DEBUG holds the DWARF (for symbolising a crash or a profile); OUT_BINARY has none, only a
# .gnu_debuglink naming OUT_DEBUG, so debuggers find it when it sits beside the binary. The images
# ship OUT_BINARY; the release workflow keeps OUT_DEBUG as an artifact.
set -eu
if [ "$#" -ne 3 ]; then
  echo "usage: strip.sh BINARY OUT_BINARY OUT_DEBUG" >&2
  exit 2
fi
objcopy --only-keep-debug "$1" "$3"
objcopy --strip-debug --strip-unneeded --add-gnu-debuglink="$3" "$1" "$2"
