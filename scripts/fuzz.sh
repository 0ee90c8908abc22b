#!/usr/bin/env bash
# Build and run one fuzzer for a given time:  scripts/fuzz.sh NAME SECONDS [libFuzzer args...]
#
#   ring   libFuzzer (clang-14, -fsanitize=fuzzer,address,undefined): the C ring walker and
#          virtio-blk parse/complete over fuzzed guest RAM and ring state (fuzz/ring_fuzz.c)
#   vhost  atheris: the vhost-user message parser, bytes plus fd counts in, events out
#          (fuzz/vhost_fuzz.py)
#
# The seed corpus is fuzz/corpus/NAME (read only); new inputs go to build/fuzz/corpus-NAME,
# crashes to build/fuzz/ (crash-*, the libFuzzer default names).  Exits non-zero on a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/fuzz.sh ring|vhost SECONDS [libFuzzer args...]}
secs=${2:?usage: scripts/fuzz.sh ring|vhost SECONDS [libFuzzer args...]}
shift 2
out=build/fuzz
mkdir -p "$out/corpus-$name"
case "$name" in
ring)
    cc=${CLANG:-clang-14}
    command -v "$cc" >/dev/null || { echo "fuzz.sh: $cc is not installed (scripts/install-deps.sh)" >&2; exit 2; }
    "$cc" -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined -Icsrc/spec -Icsrc/device -o "$out/ring_fuzz.$$" \
        fuzz/ring_fuzz.c csrc/device/{dp_vq,dp_blk,dp_bounce,dp_narr,dp_mem}.c
    mv "$out/ring_fuzz.$$" "$out/ring_fuzz" # a rename: a run still going keeps its binary
    exec "$out/ring_fuzz" -max_total_time="$secs" -max_len=65600 -rss_limit_mb=1024 \
        -artifact_prefix="$out/" -print_final_stats=1 "$@" "$out/corpus-$name" fuzz/corpus/ring
    ;;
vhost)
    py=${PYTHON:-.venv/bin/python}
    exec "$py" fuzz/vhost_fuzz.py -max_total_time="$secs" -artifact_prefix="$out/" \
        -print_final_stats=1 "$@" "$out/corpus-$name" fuzz/corpus/vhost
    ;;
*)
    echo "fuzz.sh: unknown fuzzer '$name' (ring, vhost)" >&2
    exit 2
    ;;
esac
