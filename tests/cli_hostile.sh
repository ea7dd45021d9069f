#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cli_hostile.sh PRECOPY - small hostile clients against `precopy incoming`,
# none of which may hold it forever or keep the real source out:
#
#  hello-no-beats  a channel-0 hello that does not ask for heartbeats, then
#                  nothing: the destination gives up after --timeout (exit
#                  1, "nothing from the peer") instead of waiting for ever.
#  silent          eight connections that send nothing are open before the
#                  real source connects (with --timeout 3000); it is taken
#                  at once and the migration verifies.
#  tls-strangers   over tls: a hello followed by 32 bytes of junk, silent
#                  connections, a hello and then silence, and a source with
#                  another key: each ends its own connection; the real
#                  source, after all of them, migrates and verifies.
#
# Waits are bounded (a test that would hang fails instead), but nothing is
# judged by how long it took.
set -uo pipefail
P=$1
umask 077
# shellcheck source=tests/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

dir=$(mktemp -d "${TMPDIR:-/tmp}/precopy-hostile.XXXXXX")
trap '[ "$BASHPID" = "$$" ] && lib_cleanup "$dir"' EXIT # not in subshells

# hello FLAGS: a 32-byte transport hello for channel 0 of 1, cookie 7.
hello() {
	printf 'PCT1\001'
	printf "\\$(printf %03o "$1")"
	printf '\000\000\001\000\000\000\007'
	printf '\000%.0s' $(seq 19)
}

# start_dest NAME SCHEME ARGS...: sets DPID and PORT (empty on failure).
start_dest() {
	local name=$1 scheme=$2
	shift 2
	"$P" incoming --listen "$scheme:127.0.0.1:0" --ram 16M --json "$@" \
		>"$dir/$name.dout" 2>"$dir/$name.derr" &
	DPID=$!
	pids+=("$DPID")
	wait_listening "$dir/$name.dout" "$DPID" 300
	URI=$LISTENING
	PORT=${URI##*:}
	[ -n "$URI" ] || bad "$name: the destination did not listen: $(cat "$dir/$name.derr")"
}

# migrate NAME ARGS...: a real source; its exit status.
migrate() {
	local name=$1 spid
	shift
	"$P" migrate --to "$URI" --ram 16M --dirty-rate 1M --timeout 3000 --json "$@" \
		>"$dir/$name.sout" 2>"$dir/$name.serr" &
	spid=$!
	pids+=("$spid")
	wait_exit 30 "$spid"
}

# --- a hello without the heartbeat flag, then nothing
start_dest hello-no-beats tcp --timeout 1000
if [ -n "$PORT" ]; then
	exec {q}<>"/dev/tcp/127.0.0.1/$PORT"
	hello 0 >&$q
	wait_exit 30 "$DPID"
	rc=$?
	exec {q}>&-
	if [ $rc -eq 1 ] && grep -q 'nothing from the peer' "$dir/hello-no-beats.dout"; then
		ok "hello-no-beats: destination exit 1: $(grep -o '"error":"[^"]*"' \
			"$dir/hello-no-beats.dout" | tail -n1)"
	else
		bad "hello-no-beats: destination exit $rc (wanted 1, timed out):" \
			"$(tail -n1 "$dir/hello-no-beats.dout") $(cat "$dir/hello-no-beats.derr")"
	fi
fi

# --- silent connections ahead of the real source
start_dest silent tcp
if [ -n "$PORT" ]; then
	quiet=()
	for i in $(seq 8); do
		exec {q}<>"/dev/tcp/127.0.0.1/$PORT"
		quiet+=("$q")
	done
	migrate silent
	src=$?
	wait_exit 30 "$DPID"
	rc=$?
	for q in "${quiet[@]}"; do exec {q}>&-; done
	if [ $src -eq 0 ] && [ $rc -eq 0 ] && grep -q '"verify"' "$dir/silent.dout"; then
		ok "silent: 8 silent connections, then the source: both exit 0, verified"
	else
		bad "silent: source exit $src, destination exit $rc (wanted 0, 0):" \
			"$(tail -n1 "$dir/silent.sout") $(tail -n1 "$dir/silent.dout")"
	fi
fi

# --- over tls: strangers end their own connections only
if "$P" version | grep -q 'tls'; then
	newkey "$dir/psk"
	newkey "$dir/other"
	start_dest tls-strangers tls --tls-psk-file "$dir/psk"
	if [ -n "$PORT" ]; then
		exec {q}<>"/dev/tcp/127.0.0.1/$PORT"
		{ hello 1; printf 'Z%.0s' $(seq 32); } >&$q
		cat <&$q >/dev/null # until the destination closes it
		exec {q}>&-
		quiet=()
		for i in $(seq 4); do
			exec {q}<>"/dev/tcp/127.0.0.1/$PORT"
			quiet+=("$q")
		done
		hello 1 >&$q
		migrate tls-wrong-key --tls-psk-file "$dir/other"
		wrong=$?
		migrate tls-strangers --tls-psk-file "$dir/psk"
		src=$?
		wait_exit 30 "$DPID"
		rc=$?
		for q in "${quiet[@]}"; do exec {q}>&-; done
		if [ $wrong -eq 1 ] && [ $src -eq 0 ] && [ $rc -eq 0 ] &&
			grep -q '"verify"' "$dir/tls-strangers.dout"; then
			ok "tls-strangers: junk, silence and another key refused one by one" \
				"($(grep -o '"error":"[^"]*"' "$dir/tls-wrong-key.sout" | tail -n1));" \
				"then the source: both exit 0, verified"
		else
			bad "tls-strangers: wrong-key source exit $wrong (wanted 1), source exit $src," \
				"destination exit $rc (wanted 0, 0): $(tail -n1 "$dir/tls-strangers.sout")" \
				"$(tail -n1 "$dir/tls-strangers.dout") $(cat "$dir/tls-strangers.derr")"
		fi
	fi
else
	echo "skip tls-strangers: tls not built in"
fi

[ $fails -eq 0 ] || { echo "$fails failed"; exit 1; }
echo "all passed"
