#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cli_rdma.sh PRECOPY ADDR - the precopy command over rdma:, on a device
# whose netdev has the IPv4 address ADDR (tests/rdma-run.sh supplies one):
#
#  wrong-key  a destination with a key refuses a source with another key
#             and one with none (exit 1, "authentication"; the one with
#             none warns that it runs without a key), and keeps
#             waiting: a source with the right key and --rdma-registration
#             pin-all then migrates to it; every page verified, and the
#             JSON results report one memory region registered at each end.
#  no-key     a destination without --auth-key-file warns on stderr.
#  on-demand  a key file written over several lines in capitals at one end;
#             the source's text summary reports its registration in 16 MiB
#             chunks, the destination's JSON its region registered whole.
#  demo       `precopy demo --listen rdma:...` with a key and pin-all: both
#             ends in one command, the key and the registration passed on.
#
# Waits are bounded (a hung peer fails the test rather than hanging it), but
# nothing is judged by how long it took.
set -uo pipefail
P=$1
ADDR=${2:-}
RAM=32M
# shellcheck source=tests/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

# Cannot run: 77 (skipped), or 1 with PRECOPY_REQUIRE_RDMA=1 (as in CI).
cannot() {
	if [ "${PRECOPY_REQUIRE_RDMA:-}" = 1 ]; then
		echo "cli_rdma: $1, and PRECOPY_REQUIRE_RDMA=1: failed"
		exit 1
	fi
	echo "cli_rdma: $1: skipped"
	exit 77
}
"$P" version | grep -q '^transports:.*rdma' || cannot "this precopy has no rdma: transport"
[ -n "$ADDR" ] || cannot "no RDMA device address given"

dir=$(mktemp -d)
trap 'lib_cleanup "$dir"' EXIT

# start_dest NAME ARGS...: `precopy incoming` in the background with --json;
# sets DPID and DURI (the URI it listens on) once it listens.
start_dest() {
	local name=$1
	shift
	"$P" incoming --listen "rdma:$ADDR:0" --ram $RAM --json "$@" \
		>"$dir/$name.out" 2>"$dir/$name.err" &
	DPID=$!
	pids+=("$DPID")
	wait_listening "$dir/$name.out" "$DPID" 600
	DURI=$LISTENING
	[ -n "$DURI" ] && return 0
	bad "$name: the destination did not listen: $(cat "$dir/$name.err")"
	return 1
}

# field FILE EVENT ROLE NAME: a JSON field of the record with that event and role.
field() {
	grep "\"event\":\"$2\",\"role\":\"$3\"" "$1" | tail -n1 |
		sed -n "s/.*\"$4\":\"\{0,1\}\([^\",}]*\).*/\1/p"
}

# --- wrong key, no key, then the right key with pin-all -----------------------
newkey "$dir/k1"
newkey "$dir/k2"
if start_dest wrong-key --auth-key-file "$dir/k1"; then
	"$P" migrate --to "$DURI" --ram $RAM --auth-key-file "$dir/k2" --quiet \
		>"$dir/w.out" 2>"$dir/w.err"
	rc=$?
	if [ $rc -eq 1 ] && grep -q "authentication" "$dir/w.err"; then
		ok "another key refused: $(tail -n1 "$dir/w.err")"
	else
		bad "another key: exit $rc, '$(cat "$dir/w.err")' (wanted 1 and 'authentication')"
	fi
	"$P" migrate --to "$DURI" --ram $RAM --quiet >"$dir/n.out" 2>"$dir/n.err"
	rc=$?
	if [ $rc -eq 1 ] && grep -q "authentication" "$dir/n.err"; then
		ok "no key refused"
	else
		bad "no key: exit $rc, '$(cat "$dir/n.err")' (wanted 1 and 'authentication')"
	fi
	if grep -q "^precopy migrate: warning: rdma: without --auth-key-file" "$dir/n.err" &&
	   ! grep -q "warning: rdma" "$dir/w.err" "$dir/wrong-key.err"; then
		ok "the source without a key warned; the ends with keys did not"
	else
		bad "no-key warning: '$(cat "$dir/n.err")' / '$(cat "$dir/w.err" "$dir/wrong-key.err")'"
	fi
	if alive "$DPID" && ! grep -q '"event":"result"' "$dir/wrong-key.out"; then
		ok "the destination is still waiting, with no result"
	else
		bad "the destination ended after the refused sources: $(cat "$dir/wrong-key.out" "$dir/wrong-key.err")"
	fi
	"$P" migrate --to "$DURI" --ram $RAM --dirty-rate 2M --auth-key-file "$dir/k1" \
		--rdma-registration pin-all --json >"$dir/r.out" 2>"$dir/r.err"
	rc=$?
	wait_exit 300 "$DPID"
	drc=$?
	s_status=$(field "$dir/r.out" result source status)
	s_mode=$(field "$dir/r.out" result source registration-mode)
	s_mrs=$(field "$dir/r.out" result source registration-mrs)
	s_bytes=$(field "$dir/r.out" result source registration-bytes)
	s_ms=$(field "$dir/r.out" result source registration-ms)
	d_mrs=$(field "$dir/wrong-key.out" result destination registration-mrs)
	d_bytes=$(field "$dir/wrong-key.out" result destination registration-bytes)
	verified=$(field "$dir/wrong-key.out" verify destination verified)
	echo "#    source: exit $rc, $s_status, registration $s_mode, $s_mrs MR(s), $s_bytes bytes, $s_ms ms"
	echo "#    destination: exit $drc, registration $d_mrs MR(s), $d_bytes bytes, verified $verified"
	if [ $rc -eq 0 ] && [ $drc -eq 0 ] && [ "$s_status" = completed ] &&
	   [ "$s_mode" = pin-all ] && [ "$s_mrs" = 1 ] && [ "$s_bytes" = 33554432 ] &&
	   [ -n "$s_ms" ] && [ "$d_mrs" = 1 ] && [ "$d_bytes" = 33554432 ] &&
	   [ "$verified" = true ]; then
		ok "the right key then migrates, pin-all, verified"
	else
		bad "the right key: $(cat "$dir/r.err" "$dir/wrong-key.err")"
	fi
fi

# --- a destination without a key says so --------------------------------------
if start_dest no-key; then
	if grep -q "^precopy incoming: warning: rdma: without --auth-key-file: anyone" \
		"$dir/no-key.err"; then
		ok "the destination without a key warned"
	else
		bad "no warning from a destination without a key: '$(cat "$dir/no-key.err")'"
	fi
	kill "$DPID" 2>/dev/null
	wait "$DPID" 2>/dev/null
fi

# --- on demand, a key file over several lines, text summaries -----------------
newkey "$dir/k3"
tr 'a-f' 'A-F' <"$dir/k3" | fold -w 16 >"$dir/k3.lines"
chmod 600 "$dir/k3.lines"
if start_dest on-demand --auth-key-file "$dir/k3"; then
	# (the destination reads the one-line file, the source the folded one)
	"$P" migrate --to "$DURI" --ram $RAM --dirty-rate 2M --auth-key-file "$dir/k3.lines" \
		--quiet >"$dir/o.out" 2>"$dir/o.err"
	rc=$?
	wait_exit 300 "$DPID"
	drc=$?
	sed 's/^/#    /' "$dir/o.out"
	if [ $rc -eq 0 ] && [ $drc -eq 0 ] &&
	   grep -q '^  registration .* in [0-9]* memory regions (on demand, 16 MiB chunks)' "$dir/o.out" &&
	   grep -q '"registration-mrs":1,' "$dir/on-demand.out" &&
	   grep -q '"event":"verify","role":"destination","verified":true' "$dir/on-demand.out"; then
		ok "on demand: migrated and verified, the registration reported"
	else
		bad "on demand: exit $rc/$drc: $(cat "$dir/o.err" "$dir/on-demand.err")"
	fi
fi

# --- demo: both ends from one command -------------------------------------------
"$P" demo --listen "rdma:$ADDR:0" --ram 16M --dirty-rate 1M --auth-key-file "$dir/k1" \
	--rdma-registration pin-all >"$dir/d.out" 2>"$dir/d.err"
rc=$?
sed 's/^/#    /' "$dir/d.out"
if [ $rc -eq 0 ] && grep -q 'every page verified' "$dir/d.out" &&
   grep -q '^  registration .* in 1 memory region (pin-all' "$dir/d.out" &&
   grep -q '^  registration .* (each region whole' "$dir/d.out"; then
	ok "demo over rdma: with a key, pin-all, verified"
else
	bad "demo over rdma: exit $rc: $(cat "$dir/d.err")"
fi

echo "cli_rdma: $fails failed"
[ $fails -eq 0 ]
