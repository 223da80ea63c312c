#!/bin/sh
# order.sh - the example exec handler (README, examples/warren.json).
#
# Reads one JSON order on stdin and records that it was handled: appends
# "handled <WARREN_MESSAGE_ID> attempt <WARREN_ATTEMPT>: <body>" to $DEMO_OUT
# if set, else prints it on stderr. Exits 0 (ack), or 65 (dead-letter) with
# the reason on stderr when the body is empty or not a JSON object; the check
# is deliberately crude: it looks at the first and last characters.
set -u

body=$(cat | tr '\n\r' '  ')
trimmed=$(printf '%s' "$body" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')

case "$trimmed" in
'')
    echo "order.sh: empty body, expected a JSON object" >&2
    exit 65
    ;;
\{*\}) ;;
*)
    echo "order.sh: body is not a JSON object: $(printf '%.80s' "$trimmed")" >&2
    exit 65
    ;;
esac

line="handled ${WARREN_MESSAGE_ID:-(no id)} attempt ${WARREN_ATTEMPT:-?}: $trimmed"
if [ -n "${DEMO_OUT:-}" ]; then
    # Several workers may share the file: one locked append per order.
    (
        flock 9
        printf '%s\n' "$line" >&9
    ) 9>>"$DEMO_OUT"
else
    printf '%s\n' "$line" >&2
fi
exit 0
