#!/bin/sh
# record.sh OUTDIR: an exec handler for tests/integration/test_security.sh.
# It stores the message body and the handler's environment under OUTDIR,
# one pair of files per delivery, without interpreting either: the test
# then checks that no body ever reached a shell (no file it names was
# created) and that the broker URL stayed out of the handler's environment.
set -eu
out=$1
n=$(mktemp "$out/msg.XXXXXX")
cat >"$n.body"
env >"$n.env"
mv "$n" "$n.done"
