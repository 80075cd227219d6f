#!/bin/sh
# Builds the webhook fuzzer (libFuzzer + ASan + UBSan) into build/webhook_fuzz and runs
# it for FUZZ_SECONDS (default 20) over a scratch copy of tests/fuzz/corpus, so new
# inputs never land in the repository. Exits non-zero on any crash, leak, sanitizer
# report or property violation; the input that did it is kept in build/fuzz-artifacts/.
#
#   sh tests/fuzz/build_and_run.sh            # 20 s
#   FUZZ_SECONDS=300 sh tests/fuzz/build_and_run.sh
set -eu

cd "$(dirname "$0")/../.."
CLANG=${CLANG:-clang}
SECONDS_TO_RUN=${FUZZ_SECONDS:-20}

mkdir -p build
$CLANG -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
    -Isrc $(pkg-config --cflags json-c) \
    -o build/webhook_fuzz tests/fuzz/webhook_fuzz.c src/webhook.c src/metrics.c src/log.c src/xalloc.c \
    $(pkg-config --libs json-c) -lcrypto

work=$(mktemp -d "${TMPDIR:-/tmp}/webhook_fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/corpus" "$work/artifacts"
cp tests/fuzz/corpus/* "$work/corpus/"

status=0
./build/webhook_fuzz -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log" 2>&1 || status=$?

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
[ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$work/log" | tail -n 1)
if [ "$status" -ne 0 ] || ls "$work/artifacts/"* >/dev/null 2>&1; then
    tail -n 60 "$work/log" >&2
    mkdir -p build/fuzz-artifacts
    cp "$work/artifacts/"* build/fuzz-artifacts/ 2>/dev/null || true
    echo "webhook_fuzz: FAILED (exit $status) after ${runs:-?} runs; inputs in build/fuzz-artifacts/" >&2
    [ "$status" -ne 0 ] || status=1
    exit "$status"
fi
corpus=$(ls "$work/corpus" | wc -l)
echo "webhook_fuzz: ${runs:-?} runs in ${SECONDS_TO_RUN} s, no crash (corpus grew to $corpus inputs)"
