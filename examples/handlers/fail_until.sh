#!/bin/sh
# fail_until.sh N - a test helper exec handler that fails transiently.
#
# Appends "<WARREN_MESSAGE_ID> <WARREN_ATTEMPT>" to $EFFECTS_FILE (under
# flock, so concurrent workers count correctly), then exits 75 (retry) while
# WARREN_ATTEMPT is below N and 0 (ack) from attempt N on.
set -u
until_attempt=${1:?usage: fail_until.sh N}
attempt=${WARREN_ATTEMPT:-1}
cat >/dev/null
if [ -n "${EFFECTS_FILE:-}" ]; then
    (
        flock 9
        printf '%s %s\n' "${WARREN_MESSAGE_ID:-}" "$attempt" >&9
    ) 9>>"$EFFECTS_FILE"
fi
if [ "$attempt" -lt "$until_attempt" ]; then
    echo "fail_until.sh: attempt $attempt of $until_attempt, try again" >&2
    exit 75
fi
exit 0
