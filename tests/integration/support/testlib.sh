# testlib.sh: what the shell integration tests share, sourced by each
# shell test. Needs WARREN_BUILD_DIR and WARREN_SOURCE_DIR (ctest sets
# them); sets `warren`, `broker`, `postgres`, `scale` and a default
# WARREN_BROKER_DIR and WARREN_PG_DIR;
# gives ok/fail/check, which print one line per assertion and count into
# `passed`/`failed` (each test ends by printing "N passed, N failed"), and
# wait_until.
# shellcheck shell=bash

warren=$WARREN_BUILD_DIR/bin/warren
broker=$WARREN_SOURCE_DIR/scripts/broker
postgres=$WARREN_SOURCE_DIR/scripts/postgres
# Instrumented builds run slower: every deadline is multiplied by this.
scale=${WARREN_TEST_TIMEOUT_SCALE:-1}
# The broker's state directory, as scripts/broker finds it.
export WARREN_BROKER_DIR=${WARREN_BROKER_DIR:-$WARREN_SOURCE_DIR/build/broker}
# The PostgreSQL servers' state directory, as scripts/postgres finds it.
export WARREN_PG_DIR=${WARREN_PG_DIR:-$WARREN_SOURCE_DIR/build/postgres}
# A URL in the caller's environment would override every test config.
unset WARREN_URL

passed=0
failed=0
ok() {
    passed=$((passed + 1))
    echo "ok   - $*"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL - $*"
}
# check NAME COMMAND...: one assertion.
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}

# wait_until SECONDS COMMAND...: polls every 0.1 s until COMMAND succeeds;
# returns 1 once the (scaled) deadline passes.
wait_until() {
    local deadline=$((SECONDS + $1 * scale))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

