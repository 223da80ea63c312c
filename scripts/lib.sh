# shellcheck shell=bash disable=SC2034
# scripts/lib.sh: helpers shared by scripts/broker, scripts/test and
# scripts/demo. Sourced, never run. It promises only small, side-effect-free
# helpers plus one that installs missing Debian packages, so each script stays
# readable on its own.

# The repository root, whatever directory the caller was started from.
WARREN_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

warren_say() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
}

warren_die() {
    warren_say "error: $*"
    exit 1
}

# Seconds since the epoch with microseconds, for the timings we report.
warren_now() {
    printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"
}

warren_elapsed() {
    awk -v a="$1" -v b="$(warren_now)" 'BEGIN { printf "%.1f", b - a }'
}

# warren_need_packages PKG...: make sure the Debian packages are installed.
# As root they are installed with apt-get (apt-get update once, only if the
# first attempt fails, since a fresh image often has no package lists); as
# anyone else the exact command is printed and we exit 2, because guessing at
# sudo would hang a CI job waiting for a password.
warren_need_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
            grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if [[ $EUID -ne 0 ]]; then
        warren_say "missing Debian packages: ${missing[*]}"
        warren_say "install them with:"
        printf '  sudo apt-get install -y %s\n' "${missing[*]}" >&2
        exit 2
    fi
    warren_say "installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" \
        </dev/null >&2; then
        apt-get update </dev/null >&2
        apt-get install -y --no-install-recommends "${missing[@]}" \
            </dev/null >&2
    fi
}

# The packages a build and a full test run need.
WARREN_PACKAGES=(cmake gcc make pkg-config librabbitmq-dev libsqlite3-dev
    libcjson-dev libcmocka-dev libssl-dev libmicrohttpd-dev libpq-dev
    postgresql-15 rabbitmq-server
    amqp-tools iproute2 valgrind iptables)
