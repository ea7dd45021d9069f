# SPDX-License-Identifier: MIT
# shellcheck shell=bash
#
# lib.sh - what the tests of the precopy command share. Sourced, not run.
# The caller keeps the pids of what it starts in the array pids and counts
# its failures in fails (both set here):
#
#   ok TEXT...             print a passed check
#   bad TEXT...            print a failed check and count it
#   alive PID              running (not ended, not a zombie)
#   lib_cleanup DIR        kill and reap pids (stopped ones too), remove DIR
#   newkey FILE            a random key, hex digits on one line, mode 600
#   wait_exit SECS PID     PID's exit status; killed if not ended in SECS
#   wait_listening FILE PID TRIES
#                          the URI of the "listening" JSON record in FILE,
#                          in LISTENING (empty if PID ended or TRIES tenths
#                          of a second went by first)

pids=()
fails=0

ok() { echo "ok   $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat"; }

lib_cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill -CONT "$p" 2>/dev/null
		kill "$p" 2>/dev/null
	done
	wait 2>/dev/null
	rm -rf "$1"
}

newkey() {
	od -An -v -N32 -tx1 /dev/urandom | tr -d ' \n' >"$1"
	echo >>"$1"
	chmod 600 "$1" # a key file must be private to its owner
}

wait_exit() {
	local w rc
	( trap - EXIT; sleep "$1"; kill -CONT "$2"; kill "$2" ) >/dev/null 2>&1 &
	w=$!
	wait "$2" 2>/dev/null
	rc=$?
	kill "$w" 2>/dev/null
	wait "$w" 2>/dev/null
	return $rc
}

wait_listening() {
	LISTENING=
	for _ in $(seq "$3"); do
		LISTENING=$(sed -n 's/.*"event":"listening","uri":"\([^"]*\)".*/\1/p' "$1")
		[ -n "$LISTENING" ] && return 0
		alive "$2" || break
		sleep 0.1
	done
	return 1
}
