#!/bin/sh
# slow.sh SECONDS - a test helper exec handler that takes its time.
#
# Sleeps SECONDS (fractions allowed), then appends "<WARREN_MESSAGE_ID>
# <WARREN_ATTEMPT>" to $EFFECTS_FILE under flock and exits 0. Killed before
# the sleep ends (a timeout, a shutdown), it records nothing.
set -u
cat >/dev/null
sleep "${1:?usage: slow.sh SECONDS}"
if [ -n "${EFFECTS_FILE:-}" ]; then
    (
        flock 9
        printf '%s %s\n' "${WARREN_MESSAGE_ID:-}" "${WARREN_ATTEMPT:-1}" >&9
    ) 9>>"$EFFECTS_FILE"
fi
exit 0
