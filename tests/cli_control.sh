#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cli_control.sh PRECOPY - `precopy migrate --control PATH` and `precopy ctl`:
# query, get and set while a migration runs, a bad name and a bad value
# refused without changing anything, raising the downtime limit of a
# migration that cannot converge makes it complete, and cancel.
set -uo pipefail
P=$1
T=$(mktemp -d "${TMPDIR:-/tmp}/precopy-ctl.XXXXXX")
SOCK=$T/ctl.sock
# shellcheck source=tests/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
trap 'lib_cleanup "$T"' EXIT

fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# start_dest NAME: a destination in the background; its URI in $URI
start_dest() {
	"$P" incoming --listen tcp:127.0.0.1:0 --ram 48M --json >"$T/$1.dest" 2>&1 &
	pids+=($!)
	DEST_PID=$!
	wait_listening "$T/$1.dest" "$DEST_PID" 600 && { URI=$LISTENING; return 0; }
	echo "the destination did not start: $(cat "$T/$1.dest")"
	exit 1
}

# wait_status WANT...: until ctl query shows one of the statuses (60 s)
wait_status() {
	local q
	for _ in $(seq 600); do
		q=$("$P" ctl "$SOCK" query 2>/dev/null)
		for w in "$@"; do
			[[ $q == *"\"status\":\"$w\""* ]] && { QUERY=$q; return 0; }
		done
		sleep 0.1
	done
	QUERY=$q
	return 1
}

# A guest that writes 64 MiB/s at random over a link the operator says
# gives 24 MiB/s: it never meets 300 ms (guard: it aborts after 120 s).
start_dest raise
"$P" migrate --to "$URI" --ram 48M --dirty-rate 64M --pattern random --max-bandwidth 24M \
	--avail-switchover-bandwidth 24M --downtime-limit 300 --max-time 120000 \
	--on-limit abort --json --control "$SOCK" >"$T/raise.src" 2>&1 &
SRC_PID=$!
pids+=($SRC_PID)

if wait_status iterate; then
	ok "query while migrating: $(echo "$QUERY" | cut -c1-80)..."
else
	fail "query never showed status iterate: $QUERY"
fi
[[ $QUERY == '{"ok":true,"event":"query","role":"source","status":"iterate"'* ]] ||
	fail "query answer is not the stats record: $QUERY"

# a bad name: refused, exit 1, nothing changed
out=$("$P" ctl "$SOCK" set downtime-limits 10000 2>"$T/err")
rc=$?
if [ $rc -eq 1 ] && [[ $out == *'"ok":false'* ]] && grep -q "unknown parameter 'downtime-limits'" "$T/err"; then
	ok "bad name refused: $(cat "$T/err")"
else
	fail "bad name: exit $rc, '$out' '$(cat "$T/err")'"
fi
# bad values: refused, exit 1
for bad in "downtime-limit 10s" "downtime-limit 0" "max-bandwidth lots" "on-limit maybe" \
	"auto-converge perhaps" "max-cpu-throttle 100" "max-forced-downtime 2000001"; do
	# shellcheck disable=SC2086
	out=$("$P" ctl "$SOCK" set $bad 2>"$T/err")
	rc=$?
	if [ $rc -eq 1 ] && [[ $out == *'"ok":false'* ]] && [ -s "$T/err" ]; then
		ok "set $bad refused: $(cat "$T/err")"
	else
		fail "set $bad: exit $rc, '$out'"
	fi
done
# fixed once running
out=$("$P" ctl "$SOCK" set channels 2 2>"$T/err")
[ $? -eq 1 ] && grep -q "fixed once" "$T/err" && ok "set channels refused while running" ||
	fail "set channels: '$out' '$(cat "$T/err")'"
# ... and nothing changed
out=$("$P" ctl "$SOCK" get downtime-limit)
[ "$out" = '{"ok":true,"name":"downtime-limit","value":300}' ] && ok "downtime-limit still 300" ||
	fail "after the refusals: $out"
out=$("$P" ctl "$SOCK" get on-limit)
[ "$out" = '{"ok":true,"name":"on-limit","value":"abort"}' ] && ok "on-limit still abort" ||
	fail "after the refusals: $out"
# a rate with the CLI's suffixes (the same cap), and a setting of its own
out=$("$P" ctl "$SOCK" set max-bandwidth 24M)
[ "$out" = '{"ok":true,"name":"max-bandwidth","value":25165824}' ] && ok "set max-bandwidth 24M" ||
	fail "set max-bandwidth: $out"
out=$("$P" ctl "$SOCK" set max-forced-downtime 1500)
[ "$out" = '{"ok":true,"name":"max-forced-downtime","value":1500}' ] && ok "set max-forced-downtime" ||
	fail "set max-forced-downtime: $out"
# two passes after bulk without meeting the old limit
pass=0
for _ in $(seq 600); do
	q=$("$P" ctl "$SOCK" query 2>/dev/null)
	pass=$(echo "$q" | sed -n 's/.*"iteration":\([0-9]*\).*/\1/p')
	[ "${pass:-0}" -ge 2 ] && break
	sleep 0.1
done
[ "${pass:-0}" -ge 2 ] && [[ $q == *'"status":"iterate"'* ]] && ok "still iterating at pass $pass" ||
	fail "not iterating at pass 2: $q"
# raise the limit: the migration completes by its own decision
out=$("$P" ctl "$SOCK" set downtime-limit 10000)
[ "$out" = '{"ok":true,"name":"downtime-limit","value":10000}' ] && ok "set downtime-limit 10000" ||
	fail "set downtime-limit: $out"
wait "$SRC_PID"
rc=$?
wait "$DEST_PID"
drc=$?
res=$(grep '"event":"result"' "$T/raise.src")
if [ $rc -eq 0 ] && [ $drc -eq 0 ] && [[ $res == *'"status":"completed"'* ]] &&
	[[ $res == *'"forced-switchover":false'* ]]; then
	exp=$(echo "$res" | sed -n 's/.*"expected-downtime":\([0-9]*\).*/\1/p')
	if [ "${exp:-0}" -gt 300 ]; then
		ok "completed after the raise, not forced, expected downtime $exp ms (> 300)"
	else
		fail "completed with expected downtime $exp ms: the old limit would have done"
	fi
else
	fail "after the raise: source exit $rc, destination exit $drc: $res"
fi
[ -e "$SOCK" ] && fail "the socket is left behind" || ok "socket removed at exit"

# cancel through the socket
start_dest cancel
"$P" migrate --to "$URI" --ram 48M --dirty-rate 64M --pattern random --max-bandwidth 24M \
	--json --control "$SOCK" >"$T/cancel.src" 2>&1 &
SRC_PID=$!
pids+=($SRC_PID)
wait_status bulk iterate || fail "no migration to cancel: $QUERY"
out=$("$P" ctl "$SOCK" cancel)
[ "$out" = '{"ok":true}' ] && ok "cancel accepted" || fail "cancel: $out"
wait "$SRC_PID"
rc=$?
wait "$DEST_PID"
if [ $rc -eq 1 ] && grep -q '"event":"result".*"status":"cancelled"' "$T/cancel.src"; then
	ok "cancelled: source exit 1, status cancelled"
else
	fail "cancel: source exit $rc: $(grep result "$T/cancel.src")"
fi

# usage, and no server
out=$("$P" ctl "$SOCK" frob 2>&1)
[ $? -eq 2 ] && ok "ctl frob: exit 2" || fail "ctl frob: $out"
out=$("$P" ctl "$SOCK" query 2>&1)
[ $? -eq 1 ] && [[ $out == *"cannot connect"* ]] && ok "no server: $out" || fail "no server: $out"

# flags where they cannot act, and bad sockets: exit 2 before anything runs
out=$("$P" incoming --listen tcp:127.0.0.1:0 --ram 4M --control "$SOCK" 2>&1)
[ $? -eq 2 ] && [[ $out == *"--control applies to migrate and demo"* ]] &&
	ok "incoming --control refused" || fail "incoming --control: $out"
out=$("$P" migrate --to tcp:127.0.0.1:9 --ram 4M --max-forced-downtime 2000001 2>&1)
[ $? -eq 2 ] && [[ $out == *"--max-forced-downtime"* ]] &&
	ok "--max-forced-downtime 2000001 refused" || fail "--max-forced-downtime: $out"
touch "$T/file"
out=$("$P" migrate --to tcp:127.0.0.1:9 --ram 4M --control "$T/file" 2>&1)
[ $? -eq 2 ] && [[ $out == *"not a socket"* ]] && [ -f "$T/file" ] &&
	ok "--control on a regular file refused, the file kept" || fail "--control file: $out"

echo "$fails failure(s)"
[ $fails -eq 0 ]
