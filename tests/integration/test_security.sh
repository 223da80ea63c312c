#!/usr/bin/env bash
# test_security.sh: issue 7's security checks, run against the real `warren`
# binary and the private test broker. Each check prints "ok"/"FAIL" with
# what it saw; the last line is "N passed, N failed" and the exit status is
# non-zero if anything failed. Claims checked: the broker password never
# appears in a warren process's command line, in its logs (debug level,
# failed connections, refused logins, config errors) or in an exec
# handler's environment; the store and its -wal/-shm files are 0600 even
# under umask 022; a message body or id never reaches a shell; the test
# broker listens on loopback only.
set -uo pipefail

for v in WARREN_TEST_URL WARREN_BUILD_DIR WARREN_SOURCE_DIR WARREN_BROKER_NAME; do
    if [[ -z ${!v:-} ]]; then
        echo "test_security.sh: $v is not set (run through scripts/test or ctest" \
            "with WARREN_TEST_URL and WARREN_BROKER_NAME)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
done
. "$WARREN_SOURCE_DIR/tests/integration/support/testlib.sh"

tmp=$(mktemp -d /tmp/warren-sec.XXXXXX)
run_pid=""
user=warren_sec_$$
# Distinctive and URL-safe: no character needs percent-encoding, so the
# literal string is exactly what a leak would show.
pass=Sec${RANDOM}Pw${RANDOM}x${$}Zq
wrong=Wrong${RANDOM}Pw${RANDOM}Q
marker=$tmp/pwned
queue=warren-sec-$$

cleanup() {
    if [[ -n $run_pid ]] && kill -0 "$run_pid" 2>/dev/null; then
        kill -KILL "$run_pid" 2>/dev/null
        wait "$run_pid" 2>/dev/null
    fi
    "$broker" ctl --name "$WARREN_BROKER_NAME" delete_user "$user" >/dev/null 2>&1
    amqp-delete-queue --url="$WARREN_TEST_URL" -q "$queue" >/dev/null 2>&1
    amqp-delete-queue --url="$WARREN_TEST_URL" -q "$queue.dlq" >/dev/null 2>&1
    rm -rf "$tmp" /tmp/warren-sec-pwned-$$
}
trap cleanup EXIT

hostport=${WARREN_TEST_URL#*@}
hostport=${hostport%%/*}
url="amqp://$user:$pass@$hostport/%2f"

# --- the user, password from stdin so it is not on rabbitmqctl's argv -------
if ! printf '%s' "$pass" | "$broker" ctl --name "$WARREN_BROKER_NAME" \
    add_user "$user" >"$tmp/ctl.out" 2>&1 ||
    ! "$broker" ctl --name "$WARREN_BROKER_NAME" set_permissions -p / \
        "$user" '.*' '.*' '.*' >>"$tmp/ctl.out" 2>&1; then
    cat "$tmp/ctl.out" >&2
    fail "create broker user $user"
    echo "$passed passed, $failed failed"
    exit 1
fi

mkdir -p "$tmp/out"
cat >"$tmp/warren.json" <<JSON
{ "broker": { "url": "amqp://guest:guest@127.0.0.1:1/%2f", "heartbeat_s": 5,
              "connect_timeout_s": 5 },
  "store": { "path": "$tmp/store.db" },
  "consumers": [ { "queue": "$queue",
    "handler": "exec:$WARREN_SOURCE_DIR/tests/integration/security/record.sh $tmp/out",
    "prefetch": 10, "workers": 2, "message_id": "header:id",
    "retry": { "max_attempts": 1 } } ] }
JSON

# --- a running pool, debug logs, under umask 022 ----------------------------
amqp-declare-queue --url="$WARREN_TEST_URL" -d -q "$queue" >/dev/null
# WARREN_BROKER_PASSWORD rides along (the URL has its own password, so it
# changes nothing) to show it never reaches a handler either.
(umask 022 && WARREN_URL=$url WARREN_BROKER_PASSWORD=$pass \
    exec "$warren" run -c "$tmp/warren.json" \
    --log-level debug) </dev/null >"$tmp/run.out" 2>"$tmp/run.log" &
run_pid=$!

# Bodies and ids a shell would act on. Each names its own marker file.
bodies=("\$(touch $marker-1)" "\`touch $marker-2\`" "x; touch $marker-3"
    "\$(touch /tmp/warren-sec-pwned-$$)" "' ; touch $marker-4 ; '")
# The id (header "id", the consumer's message_id policy) is shell syntax
# too: it reaches the handler as WARREN_MESSAGE_ID, never in a command.
for i in "${!bodies[@]}"; do
    amqp-publish --url="$WARREN_TEST_URL" -r "$queue" -p -C text/plain \
        -H "id: ${bodies[$i]}" -b "${bodies[$i]}" ||
        fail "publish body $i"
done
n_sent=${#bodies[@]}
done_count() { find "$tmp/out" -name '*.done' | wc -l; }
delivered() { (($(done_count) >= n_sent)); }
if wait_until 30 delivered; then
    ok "handler ran for all $n_sent shell-looking bodies ($(done_count) deliveries)"
else
    fail "handler ran for $(done_count) of $n_sent messages in time"
fi

# Every process of the pool: the supervisor, its workers and any handler.
pool_pids() {
    local p=$1 c
    echo "$p"
    for c in $(pgrep -P "$p"); do
        pool_pids "$c"
    done
}
leaks=0
npids=0
for p in $(pool_pids "$run_pid"); do
    [[ -r /proc/$p/cmdline ]] || continue
    npids=$((npids + 1))
    if tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$pass"; then
        leaks=$((leaks + 1))
        echo "  pid $p cmdline: $(tr '\0' ' ' <"/proc/$p/cmdline")"
    fi
done
if ((npids >= 3 && leaks == 0)); then
    ok "password in no /proc/PID/cmdline of $npids warren processes"
else
    fail "password in $leaks cmdline(s) of $npids warren processes (want >= 3, 0)"
fi

# Store files, while the workers hold the database open (WAL mode keeps
# -wal and -shm only while a connection is open).
modes_ok=1
nfiles=0
for f in "$tmp/store.db" "$tmp/store.db-wal" "$tmp/store.db-shm"; do
    if [[ -e $f ]]; then
        nfiles=$((nfiles + 1))
        m=$(stat -c %a "$f")
        [[ $m == 600 ]] || { modes_ok=0; echo "  $f mode $m"; }
    fi
done
if ((modes_ok && nfiles == 3)); then
    ok "store.db, -wal and -shm are mode 0600 under umask 022"
else
    fail "store files: $nfiles of 3 present, modes ok=$modes_ok"
fi

# Clean stop, then the logs and what the handler saw.
kill -TERM "$run_pid"
stopped() { ! kill -0 "$run_pid" 2>/dev/null; }
if wait_until 30 stopped; then
    wait "$run_pid"
    rc=$?
    check "SIGTERM stops the pool with exit 0 (got $rc)" test "$rc" -eq 0
else
    fail "pool did not stop within 30 s of SIGTERM"
fi
run_pid=""

pwned=$(find "$tmp" /tmp -maxdepth 1 \( -name 'pwned*' -o \
    -name "warren-sec-pwned-$$" \) 2>/dev/null | wc -l)
check "no message body reached a shell (0 marker files, got $pwned)" \
    test "$pwned" -eq 0
bodies_seen=0
for body in "${bodies[@]}"; do
    for f in "$tmp"/out/*.body; do
        if [[ $(cat "$f") == "$body" ]]; then
            bodies_seen=$((bodies_seen + 1))
            break
        fi
    done
done
check "handler got the bodies verbatim ($bodies_seen of $n_sent)" \
    test "$bodies_seen" -ge "$n_sent"
env_leaks=$(cat "$tmp"/out/*.env 2>/dev/null |
    grep -cE "$pass|WARREN_URL|WARREN_BROKER_PASSWORD")
n_env=$(find "$tmp/out" -name '*.env' | wc -l)
check "no handler environment ($n_env) holds WARREN_URL, WARREN_BROKER_PASSWORD or the password" \
    test "$env_leaks" -eq 0 -a "$n_env" -ge "$n_sent"
debug_lines=$(grep -c '"level":"debug"' "$tmp/run.log")
check "debug log written ($debug_lines debug lines) without the password" \
    bash -c '[[ $1 -gt 0 ]] && ! grep -qF "$2" "$3"' _ "$debug_lines" "$pass" \
    "$tmp/run.log"

# --- failing connections print the URL: redacted ----------------------------
# Nothing listens on port 1; a wrong password gets a refused login.
WARREN_URL="amqp://$user:$pass@127.0.0.1:1/%2f" timeout $((60 * scale)) \
    "$warren" run -c "$tmp/warren.json" --log-level debug \
    </dev/null >"$tmp/unreach.out" 2>"$tmp/unreach.log"
rc=$?
check "unreachable broker: exit 3 (got $rc)" test "$rc" -eq 3
# The URL is printed, with the password masked: the check below is not
# vacuous.
check "unreachable broker: log shows the URL as $user:***@127.0.0.1:1" \
    grep -qF "$user:***@127.0.0.1:1" "$tmp/unreach.log"
check "unreachable broker: password not in stdout or stderr" \
    bash -c '! grep -qF "$1" "$2" "$3"' _ "$pass" "$tmp/unreach.log" \
    "$tmp/unreach.out"

WARREN_URL="amqp://$user:$wrong@$hostport/%2f" timeout $((60 * scale)) \
    "$warren" run -c "$tmp/warren.json" --log-level debug \
    </dev/null >"$tmp/auth.out" 2>"$tmp/auth.log"
rc=$?
check "refused login: exit 4 (got $rc)" test "$rc" -eq 4
check "refused login: the wrong password is not in the log" \
    bash -c '! grep -qF "$1" "$2" "$3"' _ "$wrong" "$tmp/auth.log" \
    "$tmp/auth.out"

# A password written in the config file, in a config that is refused.
sed -e "s|amqp://guest:guest@127.0.0.1:1/%2f|amqp://$user:$pass@$hostport/%2f|" \
    -e 's|"heartbeat_s": 5|"heartbeat_s": "five"|' \
    "$tmp/warren.json" >"$tmp/bad.json"
"$warren" run -c "$tmp/bad.json" --log-level debug </dev/null \
    >"$tmp/bad.out" 2>"$tmp/bad.log"
rc=$?
check "config error: exit 2 (got $rc)" test "$rc" -eq 2
check "config error: password from the file not in the message" \
    bash -c '! grep -qF "$1" "$2" "$3"' _ "$pass" "$tmp/bad.log" \
    "$tmp/bad.out"

# --- the broker listens on loopback only -----------------------------------
beam=$(tr -dc 0-9 <"$WARREN_BROKER_DIR/$WARREN_BROKER_NAME/rabbitmq.pid" \
    2>/dev/null)
if [[ -z $beam ]]; then
    fail "broker pid file $WARREN_BROKER_DIR/$WARREN_BROKER_NAME/rabbitmq.pid"
else
    listens=$(ss -Hltnp 2>/dev/null | grep -E "pid=$beam,|\"epmd\"" |
        awk '{print $4}')
    n_listen=$(printf '%s\n' "$listens" | grep -c .)
    outside=$(printf '%s\n' "$listens" | grep -c -vE '^(127\.[0-9.]+|\[::1\]):[0-9]+$')
    echo "  broker (pid $beam) and epmd listen on:" $listens
    check "broker and epmd listen on loopback only ($n_listen sockets, $outside elsewhere)" \
        test "$n_listen" -ge 2 -a "$outside" -eq 0
fi

echo "$passed passed, $failed failed"
((failed == 0))
