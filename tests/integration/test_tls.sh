#!/usr/bin/env bash
# test_tls.sh: warren's TLS client against a private broker with a TLS
# listener. It makes a throwaway CA, a server certificate naming only
# "localhost", and an unrelated CA, starts a second private node with
# `scripts/broker start --tls-dir`, and shows: verification on, right CA,
# right name -> connects; wrong CA -> exit 9; a name the certificate does not
# carry (127.0.0.1) -> exit 9; verify_peer false -> connects, with a warning.
# The last line is "N passed, N failed"; the node is stopped on exit.
set -uo pipefail

for v in WARREN_BUILD_DIR WARREN_SOURCE_DIR; do
    if [[ -z ${!v:-} ]]; then
        echo "test_tls.sh: $v is not set (run through ctest)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
done
. "$WARREN_SOURCE_DIR/tests/integration/support/testlib.sh"
name=${WARREN_BROKER_NAME:-default}-tls

tmp=$(mktemp -d /tmp/warren-tls.XXXXXX)
started=0
cleanup() {
    if ((started)); then
        if "$broker" stop --name "$name" >/dev/null 2>&1 && ((failed == 0)); then
            rm -rf "${WARREN_BROKER_DIR:?}/$name"
        fi
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- certificates (P-256 keys: fast to make, and Erlang and OpenSSL both
# speak them) ----------------------------------------------------------------
mkcert() { openssl "$@" >>"$tmp/openssl.log" 2>&1; }
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
d=$tmp/tls
mkdir -p "$d"
if ! { mkcert req -x509 "${ec[@]}" -days 2 -subj "/CN=warren test CA" \
    -keyout "$d/ca.key" -out "$d/ca.pem" &&
    mkcert req -x509 "${ec[@]}" -days 2 -subj "/CN=warren wrong CA" \
        -keyout "$d/wrong-ca.key" -out "$d/wrong-ca.pem" &&
    mkcert req "${ec[@]}" -subj "/CN=localhost" -keyout "$d/server.key" \
        -out "$d/server.csr" &&
    printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' \
        >"$d/ext.cnf" &&
    mkcert x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
        -CAcreateserial -days 2 -extfile "$d/ext.cnf" -out "$d/server.pem"; }; then
    cat "$tmp/openssl.log" >&2
    fail "make certificates with openssl"
    echo "$passed passed, $failed failed"
    exit 1
fi
ok "CA, wrong CA and a server certificate for DNS:localhost made"

# --- the TLS node ------------------------------------------------------------
started=1
if ! urls=$("$broker" start --name "$name" --fresh --tls-dir "$d" \
    </dev/null 2>"$tmp/broker.err"); then
    cat "$tmp/broker.err" >&2
    fail "start a broker with a TLS listener"
    echo "$passed passed, $failed failed"
    exit 1
fi
tls_url=$(sed -n 2p <<<"$urls")
if [[ $tls_url != amqps://* ]]; then
    fail "scripts/broker printed no amqps URL (got: $urls)"
    echo "$passed passed, $failed failed"
    exit 1
fi
tls_port=${tls_url##*:}
tls_port=${tls_port%%/*}
beam=$(tr -dc 0-9 <"$WARREN_BROKER_DIR/$name/rabbitmq.pid")
check "TLS listener on 127.0.0.1:$tls_port only" \
    bash -c '[[ $(ss -Hltnp "sport = :$1" | grep "pid=$2," | awk "{print \$4}") == "127.0.0.1:$1" ]]' \
    _ "$tls_port" "$beam"

# conf NAME CA VERIFY_PEER: a config with the TLS settings under test.
conf() {
    cat >"$tmp/$1.json" <<JSON
{ "broker": { "url": "amqp://unused@127.0.0.1:1/%2f", "connect_timeout_s": 5,
              "tls": { "ca_cert": "$2", "verify_peer": $3 } },
  "store": { "path": "$tmp/$1.db" },
  "consumers": [ { "queue": "warren-tls-$$", "handler": "builtin:noop" } ] }
JSON
}

# connects NAME URL: runs warren until it logs "consuming", then SIGTERM;
# true if it consumed and then stopped with exit 0.
connects() {
    local log=$tmp/$1.log pid rc deadline=$((SECONDS + 30 * scale))
    WARREN_URL=$2 "$warren" run -c "$tmp/$1.json" --log-level info \
        </dev/null >/dev/null 2>"$log" &
    pid=$!
    until grep -q '"event":"consuming"' "$log"; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null
            wait "$pid"
            echo "  $1: did not reach consuming; log:" >&2
            tail -n 5 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    kill -TERM "$pid"
    wait "$pid"
    rc=$?
    [[ $rc -eq 0 ]] || echo "  $1: exit $rc after SIGTERM" >&2
    [[ $rc -eq 0 ]]
}

# refused NAME URL: true if warren exits 9 by itself (bounded by timeout).
refused() {
    local rc
    WARREN_URL=$2 timeout $((60 * scale)) "$warren" run -c "$tmp/$1.json" \
        --log-level info </dev/null >/dev/null 2>"$tmp/$1.log"
    rc=$?
    echo "  $1: exit $rc: $(grep -m1 -o 'TLS handshake failed[^"]*' "$tmp/$1.log")"
    [[ $rc -eq 9 ]]
}

good=$tls_url
by_ip=${tls_url/@localhost:/@127.0.0.1:}

conf verified "$d/ca.pem" true
check "verify on, right CA, host localhost: connects and consumes" \
    connects verified "$good"
check "verify on: no 'verification is turned off' warning" \
    bash -c '! grep -q "verification is turned off" "$1"' _ "$tmp/verified.log"

conf wrongca "$d/wrong-ca.pem" true
check "wrong CA: refused with exit 9" refused wrongca "$good"

conf byip "$d/ca.pem" true
check "host 127.0.0.1, not in the certificate: refused with exit 9" \
    refused byip "$by_ip"

conf noverify "$d/wrong-ca.pem" false
check "verify_peer false with the wrong CA: connects" \
    connects noverify "$good"
check "verify_peer false: a warning is logged" \
    grep -q '"level":"warn".*verification is turned off' "$tmp/noverify.log"

echo "$passed passed, $failed failed"
((failed == 0))
