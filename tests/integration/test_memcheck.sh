#!/usr/bin/env bash
# test_memcheck.sh: one integration run of the real `warren` binary under
# valgrind memcheck (issue 7 item 7): a pool of two consumers, one whose
# messages fail once and then succeed (dedup, claims, retry copies through
# the delay cascade, confirms) and one whose messages all go to the DLQ,
# with repeated ids; then `warren status`, `warren dlq list`, `dlq export`
# and `dlq replay`, each under valgrind too. Passes only if every process
# valgrind watched (the supervisor, each forked worker, each CLI run)
# reports 0 errors and 0 bytes definitely lost, and the counts add up.
# Skipped (exit 77) in a sanitizer build: valgrind cannot run ASan code.
set -uo pipefail

for v in WARREN_TEST_URL WARREN_BUILD_DIR WARREN_SOURCE_DIR; do
    if [[ -z ${!v:-} ]]; then
        echo "test_memcheck.sh: $v is not set (run through scripts/test or ctest)" >&2
        exit 1
    fi
done
if grep -qE '^WARREN_SANITIZE:[A-Z]*=.+' "$WARREN_BUILD_DIR/CMakeCache.txt" 2>/dev/null; then
    echo "SKIP: sanitizer build; memcheck runs in the plain build"
    exit 77
fi
if ! command -v valgrind >/dev/null; then
    echo "FAIL - valgrind is not installed (scripts/test installs it)"
    exit 1
fi
. "$WARREN_SOURCE_DIR/tests/integration/support/testlib.sh"

tmp=$(mktemp -d /tmp/warren-vg.XXXXXX)
q1=warren-vg-retry-$$
q2=warren-vg-dead-$$
run_pid=""
cleanup() {
    if [[ -n $run_pid ]] && kill -0 "$run_pid" 2>/dev/null; then
        kill -KILL "$run_pid" 2>/dev/null
        wait "$run_pid" 2>/dev/null
    fi
    for q in "$q1" "$q1.dlq" "$q2" "$q2.dlq"; do
        amqp-delete-queue --url="$WARREN_TEST_URL" -q "$q" >/dev/null 2>&1
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

# Every process valgrind watches writes its own log, named by pid. An
# array, not a function, so that `&` gives valgrind's own pid.
vg=(valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite
    --child-silent-after-fork=no --num-callers=30
    --log-file="$tmp/vg.%p.log" "$warren")

cat >"$tmp/warren.json" <<JSON
{ "broker": { "heartbeat_s": 10 },
  "store": { "path": "$tmp/store.db" },
  "consumers": [
    { "queue": "$q1", "handler": "builtin:fail-once", "message_id": "json:id",
      "prefetch": 20, "workers": 1,
      "retry": { "max_attempts": 3, "backoff": { "kind": "fixed", "delay_ms": 0 } } },
    { "queue": "$q2", "handler": "builtin:dead", "message_id": "json:id",
      "prefetch": 20, "workers": 1 } ] }
JSON
export WARREN_URL=$WARREN_TEST_URL
if ! "$warren" topology declare -c "$tmp/warren.json" >"$tmp/topo.log" 2>&1; then
    fail "topology declare: $(tail -3 "$tmp/topo.log")"
    echo "$passed passed, $failed failed"
    exit 1
fi

# 100 distinct ids per queue, each of the first 20 published twice.
n=100
publish() {
    local q=$1 i
    for ((i = 0; i < n; i++)); do
        echo "{\"id\":\"m-$i\",\"pad\":\"$q\"}"
    done
    for ((i = 0; i < 20; i++)); do
        echo "{\"id\":\"m-$i\",\"pad\":\"again\"}"
    done
}
publish "$q1" | amqp-publish --url="$WARREN_TEST_URL" -r "$q1" -p -l ||
    fail "publish to $q1"
publish "$q2" | amqp-publish --url="$WARREN_TEST_URL" -r "$q2" -p -l ||
    fail "publish to $q2"

"${vg[@]}" run -c "$tmp/warren.json" </dev/null >"$tmp/run.out" 2>"$tmp/run.log" &
run_pid=$!

# Store counts, read-only, from the status command (not under valgrind:
# it is polled, and runs under valgrind once below).
count_state() {
    "$warren" status -c "$tmp/warren.json" --json 2>/dev/null |
        python3 -c "
import json, sys
d = json.load(sys.stdin)
q = [c for c in d if c['queue'] == sys.argv[1]][0]
print(q.get('store', {}).get(sys.argv[2], 0))" "$1" "$2" 2>/dev/null || echo 0
}
settled() {
    (($(count_state "$q1" done) == n && $(count_state "$q2" dead) == n))
}
# Stops waiting early if the pool has died.
settled_or_gone() { settled || ! kill -0 "$run_pid" 2>/dev/null; }
if wait_until 240 settled_or_gone && settled; then
    ok "under valgrind: $n done in $q1 (each failed once) and $n dead in $q2"
else
    fail "not settled: $q1 done $(count_state "$q1" done), $q2 dead $(count_state "$q2" dead) of $n"
    tail -20 "$tmp/run.log"
fi

kill -TERM "$run_pid"
stopped() { ! kill -0 "$run_pid" 2>/dev/null; }
if wait_until 120 stopped; then
    wait "$run_pid"
    rc=$?
    if ((rc == 0)); then
        ok "SIGTERM stops the pool with exit 0"
    else
        fail "pool exit status $rc"
        tail -20 "$tmp/run.log"
    fi
else
    fail "pool did not stop within 120 s of SIGTERM"
fi
run_pid=""

# The CLI paths, each under valgrind.
if "${vg[@]}" status -c "$tmp/warren.json" >"$tmp/status.out" 2>&1; then
    ok "warren status"
else
    fail "warren status: $(tail -3 "$tmp/status.out")"
fi
listed=$("${vg[@]}" dlq list -c "$tmp/warren.json" --queue "$q2" --json 2>"$tmp/list.err" | grep -c '"id"')
if ((listed == n)); then
    ok "warren dlq list shows the $n dead letters"
else
    fail "warren dlq list shows $listed of $n: $(tail -3 "$tmp/list.err")"
fi
if "${vg[@]}" dlq export -c "$tmp/warren.json" --queue "$q2" --out "$tmp/dead.jsonl" \
    >"$tmp/export.out" 2>&1 && (($(wc -l <"$tmp/dead.jsonl") == n)); then
    ok "warren dlq export wrote $n lines"
else
    fail "warren dlq export: $(tail -3 "$tmp/export.out")"
fi
if "${vg[@]}" dlq replay -c "$tmp/warren.json" --queue "$q2" --all --yes --to "$q1" \
    >"$tmp/replay.out" 2>&1; then
    ok "warren dlq replay --to $q1"
else
    fail "warren dlq replay: $(tail -3 "$tmp/replay.out")"
fi

# Every valgrind log: the supervisor, its forked workers, each CLI run.
nlogs=0
for f in "$tmp"/vg.*.log; do
    [[ -e $f ]] || continue
    nlogs=$((nlogs + 1))
    errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9,]*\) errors.*/\1/p' "$f" | tail -1 | tr -d ,)
    definite=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$f" | tail -1 | tr -d ,)
    if [[ -z $errors ]]; then
        fail "$(basename "$f"): no summary (process killed?)"
        tail -5 "$f"
    elif ((errors != 0 || ${definite:-0} != 0)); then
        fail "$(basename "$f"): $errors errors, ${definite:-0} bytes definitely lost"
        grep -A25 -m3 -E '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|[0-9,]+ bytes in .* definitely)' "$f"
    fi
done
# supervisor + 2 workers + status + list + export + replay
if ((nlogs >= 7)); then
    ok "$nlogs processes ran under valgrind"
else
    fail "only $nlogs valgrind logs (want >= 7)"
fi
if ((failed == 0)); then
    ok "0 errors and 0 bytes definitely lost in all $nlogs"
fi

echo "$passed passed, $failed failed"
((failed == 0))
