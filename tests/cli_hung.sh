#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cli_hung.sh PRECOPY - a peer whose process is stopped (SIGSTOP) while its
# kernel still answers: TCP acknowledges the data and the keepalive probes,
# so only precopy's own timeouts can tell. With --timeout 1000, over tcp:,
# tls: (PSK) and shm: (where a stopped peer's socket stays open as well):
#
#  dest-stopped    the destination is stopped during the bulk pass: the
#                  source fails (exit 1) saying the peer read nothing, and
#                  its guest runs on with every page intact
#                  (--verify-source-after-failure).
#  source-stopped  the source is stopped during the bulk pass: the
#                  destination fails (exit 1) saying nothing came, not even
#                  a heartbeat.
#
# Waits are bounded (a test that would hang fails instead), but nothing is
# judged by how long it took.
set -uo pipefail
P=$1
# shellcheck source=tests/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

dir=$(mktemp -d)
trap 'lib_cleanup "$dir"' EXIT

newkey "$dir/psk"

# run SCHEME WHO: migrate 64 MiB at 8 MiB/s (8 s of bulk pass), stop WHO
# after the first progress report that shows bytes sent.
run() {
	local scheme=$1 who=$2 name="$1-$2-stopped" uri tls=() i dpid spid victim other rc
	local addr="$scheme:127.0.0.1:0"
	[ "$scheme" = tls ] && tls=(--tls-psk-file "$dir/psk")
	[ "$scheme" = shm ] && addr="shm:$dir/$name.sock"
	"$P" incoming --listen "$addr" --ram 64M --json --timeout 1000 "${tls[@]}" \
		>"$dir/$name.dout" 2>"$dir/$name.derr" &
	dpid=$!
	pids+=("$dpid")
	if wait_listening "$dir/$name.dout" "$dpid" 300; then
		uri=$LISTENING
	else
		bad "$name: the destination did not listen: $(cat "$dir/$name.derr")"
		return
	fi
	"$P" migrate --to "$uri" --ram 64M --dirty-rate 4M --max-bandwidth 8M --timeout 1000 \
		--verify-source-after-failure --json "${tls[@]}" \
		>"$dir/$name.sout" 2>"$dir/$name.serr" &
	spid=$!
	pids+=("$spid")
	for i in $(seq 300); do
		grep -q '"role":"source","status":"bulk".*"transferred":[1-9]' "$dir/$name.sout" &&
			break
		alive "$spid" || break
		sleep 0.1
	done
	if [ "$who" = dest ]; then victim=$dpid other=$spid; else victim=$spid other=$dpid; fi
	kill -STOP "$victim"
	wait_exit 120 "$other"
	rc=$?
	kill -CONT "$victim"
	kill "$victim" 2>/dev/null
	wait "$victim" 2>/dev/null
	if [ "$who" = dest ]; then
		if [ $rc -eq 1 ] && grep -q '"error":"[^"]*read nothing' "$dir/$name.sout" &&
			grep -q '"event":"source-verify".*"verified":true,"running":true' \
				"$dir/$name.sout"; then
			ok "$name: source exit 1: $(grep -o '"error":"[^"]*read nothing[^"]*"' \
				"$dir/$name.sout" | tail -n1)"
			ok "$name: $(grep -o '"event":"source-verify".*' "$dir/$name.sout")"
		else
			bad "$name: source exit $rc: $(tail -n2 "$dir/$name.sout") $(cat "$dir/$name.serr")"
		fi
	else
		if [ $rc -eq 1 ] && grep -q '"error":"[^"]*not even a heartbeat' "$dir/$name.dout"; then
			ok "$name: destination exit 1: $(grep -o '"error":"[^"]*heartbeat[^"]*"' \
				"$dir/$name.dout" | tail -n1)"
		else
			bad "$name: destination exit $rc: $(tail -n1 "$dir/$name.dout") $(cat "$dir/$name.derr")"
		fi
	fi
}

run tcp dest
run tcp source
if "$P" version | grep -q 'tls'; then
	run tls dest
	run tls source
else
	echo "skip tls: not built in"
fi
run shm dest
run shm source
[ $fails -eq 0 ] || { echo "$fails failed"; exit 1; }
echo "all passed"
