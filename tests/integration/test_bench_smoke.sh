#!/usr/bin/env bash
# test_bench_smoke.sh: runs bench/run with tiny counts against the test
# broker so the benchmark cannot rot unnoticed. It claims only that every
# variant runs to the end with nothing lost or doubled (bench/run itself
# checks the store's row counts, the queue depths and the workers' acked
# counts, and fails otherwise) and that the table, latency, memory and JSON
# outputs appear; the rates of so small a run mean nothing.
set -euo pipefail
umask 077

: "${WARREN_TEST_URL:?WARREN_TEST_URL must name the test broker}"
: "${WARREN_BUILD_DIR:?}" "${WARREN_SOURCE_DIR:?}"
tmp=$(mktemp -d /tmp/warren-bench-smoke.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "test_bench_smoke: FAIL: $*" >&2
    echo "--- bench/run output:" >&2
    cat "$tmp/out.txt" >&2 || true
    exit 1
}

# The PostgreSQL variants (when this warren has that store) use the suites'
# server, or start one of their own.
BENCH_URL=$WARREN_TEST_URL BENCH_PG_URL=${WARREN_TEST_PG_URL:-} \
    timeout 75 "$WARREN_SOURCE_DIR/bench/run" \
    --no-build --build-dir "$WARREN_BUILD_DIR" --n 2000 --rounds 1 \
    --retry-n 200 --latency-s 1 --mem-n 2000 --dlq-n 200 \
    --json "$tmp/out.json" >"$tmp/out.txt" 2>&1 ||
    fail "bench/run exited with $?"

variants=(raw-ack raw-noack warren-full warren-normal warren-nodedup
    warren-retry warren-2w warren-4w)
if "$WARREN_BUILD_DIR/bin/warren" help store 2>/dev/null | grep -q 'store migrate'; then
    variants+=(warren-pg warren-pg-3h)
fi
for v in "${variants[@]}"; do
    grep -Eq "^$v +[1-9][0-9]* +[0-9.]+$" "$tmp/out.txt" ||
        fail "no positive rate for variant $v in the table"
done
grep -q "^latency at .* msgs/s" "$tmp/out.txt" || fail "no latency line"
grep -Eq "p99 [0-9.]+ ms" "$tmp/out.txt" || fail "no p99 in the latency line"
grep -q "^memory over 2000 msgs" "$tmp/out.txt" || fail "no memory line"
grep -q '"ratio_to_raw_ack"' "$tmp/out.json" || fail "JSON lacks ratios"
grep -q '"latency_ms"' "$tmp/out.json" || fail "JSON lacks latency"
echo "test_bench_smoke: ok"
