#!/usr/bin/env bash
# shellcheck disable=SC2016,SC2317 # bash -c snippets read their own $1..; cleanup runs from a trap
# test_postgres_bed.sh: scripts/postgres, the PostgreSQL test bed the
# PostgreSQL store's suites stand on (issue 15 item 5). It starts two private
# servers of its own and shows: the printed URL logs in as `warren` (not a
# superuser) with the password file only, and not without it; the server
# listens on 127.0.0.1 only; its state is not world-readable and the password
# is on no command line; `restart` keeps port and data; `stop` ends only its
# own postmaster (not the other server, not a stranger whose pid a stale pid
# file names); a base the server's user cannot enter moves the state to a
# private directory that `stop` removes. It also checks the server
# scripts/test started for the suites, when there is one. The last line is
# "N passed, N failed"; both servers are stopped on exit.
set -uo pipefail

for v in WARREN_BUILD_DIR WARREN_SOURCE_DIR; do
    if [[ -z ${!v:-} ]]; then
        echo "test_postgres_bed.sh: $v is not set (run through ctest)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
done
. "$WARREN_SOURCE_DIR/tests/integration/support/testlib.sh"
a=${WARREN_PG_NAME:-default}-bed-a
b=${WARREN_PG_NAME:-default}-bed-b
c=${WARREN_PG_NAME:-default}-bed-c

tmp=$(mktemp -d /tmp/warren-pgbed.XXXXXX)
closed=$(mktemp -d /root/warren-pgbed.XXXXXX 2>/dev/null || mktemp -d)
stranger=""
cleanup() {
    local n
    if [[ -n $stranger ]]; then
        kill "$stranger" 2>/dev/null
        wait "$stranger" 2>/dev/null
    fi
    for n in "$a" "$b"; do
        if "$postgres" stop --name "$n" >/dev/null 2>&1 && ((failed == 0)); then
            rm -rf "${WARREN_PG_DIR:?}/$n"
        fi
    done
    WARREN_PG_DIR=$closed/pg "$postgres" stop --name "$c" >/dev/null 2>&1
    rm -rf "$tmp" "$closed"
}
trap cleanup EXIT

finish() {
    echo "$passed passed, $failed failed"
    ((failed == 0))
    exit
}

if [[ $EUID -ne 0 ]]; then
    # The stranger and closed-directory cases need root; the rest would pass.
    echo "test_postgres_bed.sh: run as root (CI does)" >&2
    echo "0 passed, 0 failed"
    exit 77
fi

# pgpid NAME: the postmaster's pid, from its pid file.
pgpid() {
    head -n 1 "$WARREN_PG_DIR/$1/data/postmaster.pid" 2>/dev/null | tr -dc 0-9
}
# q NAME SQL: one value, as `warren` over TCP with the password file.
q() {
    PGPASSFILE=$("$postgres" passfile --name "$1") PGCONNECT_TIMEOUT=10 \
        psql -X -w -At "$("$postgres" url --name "$1")" <<<"$2" 2>>"$tmp/psql.err"
}

# --- start ------------------------------------------------------------------
if ! url_a=$("$postgres" start --name "$a" --fresh </dev/null 2>"$tmp/a.err"); then
    cat "$tmp/a.err" >&2
    fail "start server $a"
    finish
fi
check "start prints a postgresql://warren@127.0.0.1:PORT/warren URL" \
    grep -qxE 'postgresql://warren@127\.0\.0\.1:[0-9]+/warren' <<<"$url_a"
port_a=${url_a##*:}
port_a=${port_a%%/*}
pid_a=$(pgpid "$a")
check "the postmaster's pid file names a live postgres process" \
    bash -c '[[ $(readlink /proc/$1/exe) == */postgresql/15/bin/postgres ]]' _ "$pid_a"
check "url prints the same URL again" \
    bash -c '[[ $("$1" url --name "$2") == "$3" ]]' _ "$postgres" "$a" "$url_a"
check "status says running" \
    bash -c '"$1" status --name "$2" >/dev/null' _ "$postgres" "$a"

# --- logging in -------------------------------------------------------------
check "psql logs in with the URL and the password file, as warren, on 127.0.0.1" \
    bash -c '[[ $1 == "warren|warren|127.0.0.1" ]]' _ \
    "$(q "$a" "select current_user, current_database(), inet_server_addr()")"
check "warren is not a superuser and may create databases (a test makes its own)" \
    bash -c '[[ $1 == "off" && $2 == "CREATE DATABASE" ]]' _ \
    "$(q "$a" "show is_superuser")" \
    "$(PGPASSFILE=$("$postgres" passfile --name "$a") psql -X -w -q \
        "$url_a" -c 'create database bed_made' -c '\echo CREATE DATABASE' \
        2>>"$tmp/psql.err")"
check "without the password file the login is refused (no trust on TCP)" \
    bash -c '! PGPASSFILE=/nonexistent PGPASSWORD= psql -X -w "$1" -c "select 1" >/dev/null 2>&1' \
    _ "$url_a"
check "a wrong password is refused" \
    bash -c '! PGPASSWORD=wrong psql -X -w "$1" -c "select 1" 2>"$2/wrong.err" >/dev/null &&
        grep -q "password authentication failed" "$2/wrong.err"' _ "$url_a" "$tmp"
check "scripts/postgres psql runs SQL as the cluster's superuser" \
    bash -c '[[ $("$1" psql --name "$2" -At <<<"select rolsuper from pg_roles where rolname = current_user") == t ]]' \
    _ "$postgres" "$a"

# --- loopback only ----------------------------------------------------------
check "the server listens on 127.0.0.1:$port_a and on no other TCP address" \
    bash -c '[[ $(ss -Hltnp | grep "pid=$1," | awk "{print \$4}" | sort -u) == "127.0.0.1:$2" ]]' \
    _ "$pid_a" "$port_a"
check "listen_addresses is 127.0.0.1" \
    bash -c '[[ $1 == 127.0.0.1 ]]' _ "$(q "$a" "show listen_addresses")"
check "pg_hba.conf admits TCP from 127.0.0.1/32 with scram-sha-256 only" \
    bash -c '[[ $(grep -vE "^[[:space:]]*(#|$)" "$1" | grep -E "^host" | tr -s " ") == "host all all 127.0.0.1/32 scram-sha-256" ]]' \
    _ "$WARREN_PG_DIR/$a/data/pg_hba.conf"

# --- files and argv ---------------------------------------------------------
dir_a=$(readlink -f "$WARREN_PG_DIR/$a")
check "the state, data and socket directories are 0700" \
    bash -c '[[ $(stat -c %a "$1" "$1/data" "$1/sock" | sort -u) == 700 ]]' _ "$dir_a"
check "no file of the server's state is readable by group or others" \
    bash -c '[[ -z $(find "$1" -perm /077 ! -type l ! -type s -print -quit) ]]' _ "$dir_a"
check "the password file is 0600" \
    bash -c '[[ $(stat -c %a "$1") == 600 ]]' _ "$("$postgres" passfile --name "$a")"
# The password goes to grep in a file: as an argument it would be on argv.
head -n 1 "$("$postgres" passfile --name "$a")" | cut -d: -f5- >"$tmp/pw"
check "the password is 32 characters and on no process's command line" \
    bash -c '[[ $(tr -d "\n" <"$1" | wc -c) == 32 ]] && ! cat /proc/[0-9]*/cmdline 2>/dev/null | tr "\0" "\n" | grep -qFf "$1"' \
    _ "$tmp/pw"

# --- restart keeps port and data --------------------------------------------
q "$a" "create table bed_kept (v int); insert into bed_kept values (42)" >/dev/null
if url_r=$("$postgres" restart --name "$a" </dev/null 2>"$tmp/restart.err"); then
    check "restart keeps the URL (port)" test "$url_r" == "$url_a"
    check "restart runs a new postmaster" \
        bash -c '[[ -n $1 && $1 != "$2" ]]' _ "$(pgpid "$a")" "$pid_a"
    check "restart keeps the data" test "$(q "$a" "select v from bed_kept")" == 42
else
    cat "$tmp/restart.err" >&2
    fail "restart server $a"
fi
pid_a=$(pgpid "$a")

# --- stop ends only its own pid ----------------------------------------------
if url_b=$("$postgres" start --name "$b" --fresh </dev/null 2>"$tmp/b.err"); then
    ok "a second server starts beside the first"
    check "the second server has its own port" test "$url_b" != "$url_a"
else
    cat "$tmp/b.err" >&2
    fail "start server $b"
fi
pid_b=$(pgpid "$b")
"$postgres" stop --name "$a" >/dev/null 2>"$tmp/stop.err"
# Gone, or a zombie its adopter has yet to reap.
check "stop ends server $a's postmaster" \
    bash -c '! s=$(cat /proc/$1/stat 2>/dev/null) || [[ ${s##*) } == [ZX]* ]]' _ "$pid_a"
check "no process of server $a is left (none runs in its data directory)" \
    bash -c 'for p in /proc/[0-9]*; do [[ $(readlink $p/cwd 2>/dev/null) == "$1/data" ]] && exit 1; done; exit 0' \
    _ "$dir_a"
check "status says not running after stop" \
    bash -c '! "$1" status --name "$2" >/dev/null' _ "$postgres" "$a"
check "server $b still runs and answers" \
    bash -c 'kill -0 "$1" && [[ $2 == 1 ]]' _ "$pid_b" "$(q "$b" "select 1")"
# A stale pid file naming a stranger: stop must not touch it.
sleep 300 &
stranger=$!
printf '%s\n%s\n' "$stranger" "$dir_a/data" >"$dir_a/data/postmaster.pid"
"$postgres" stop --name "$a" >/dev/null 2>&1
check "stop leaves alone a stranger whose pid a stale pid file names" \
    kill -0 "$stranger"
rm -f "$dir_a/data/postmaster.pid"
kill "$stranger" 2>/dev/null
wait "$stranger" 2>/dev/null
stranger=""

# --- a base the server's user cannot enter ------------------------------------
chmod 0700 "$closed"
if url_c=$(WARREN_PG_DIR=$closed/pg "$postgres" start --name "$c" </dev/null \
    2>"$tmp/c.err"); then
    priv=$(readlink "$closed/pg/$c")
    check "under a 0700 base the state moves to a private directory (a symlink)" \
        bash -c '[[ $1 == /var/tmp/warren-pg-* || $1 == /tmp/warren-pg-* ]] && [[ $(stat -c "%a %U" "$1") == "700 postgres" ]]' \
        _ "$priv"
    check "the server in the private directory answers" \
        bash -c 'PGPASSFILE=$(WARREN_PG_DIR=$1/pg "$2" passfile --name "$3") psql -X -w -At "$4" -c "select 1" | grep -qx 1' \
        _ "$closed" "$postgres" "$c" "$url_c"
    WARREN_PG_DIR=$closed/pg "$postgres" stop --name "$c" >/dev/null 2>&1
    check "stop removes the private directory and its symlink" \
        bash -c '[[ ! -e $1 && ! -L $2 ]]' _ "$priv" "$closed/pg/$c"
else
    cat "$tmp/c.err" >&2
    fail "start server $c under a 0700 base"
fi

# --- the suites' server -----------------------------------------------------
if [[ -n ${WARREN_TEST_PG_URL:-} ]]; then
    check "WARREN_TEST_PG_URL (from scripts/test) logs in with PGPASSFILE" \
        bash -c '[[ $(psql -X -w -At "$1" -c "select current_user" 2>/dev/null) == warren ]]' \
        _ "$WARREN_TEST_PG_URL"
fi

if ((failed)) && [[ -s $tmp/psql.err ]]; then
    echo "--- psql errors:" >&2
    cat "$tmp/psql.err" >&2
fi
finish
