#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# faults.sh PRECOPY CASE - one fault injected into a real migration between
# two processes in two network namespaces, and what must hold afterwards.
#
# Topology (made here, removed on exit):
#
#   netns SRC                               netns DST
#   a0 10.211.1.1/24  ==== veth A ====  a1 10.211.1.2/24   the faulty link
#   b0 10.211.2.1/24  ==== veth B ====  b1 10.211.2.2/24   a clean link
#
# The first destination (D1) listens on A; the source migrates its running
# synthetic guest to it, the fault strikes, and then the source migrates
# the same guest again over B to a fresh destination (D2), as
# `precopy migrate --then-migrate-to` does. For every fault:
#   - the source reports failed or cancelled with a reason;
#   - its guest is still running and its memory holds exactly what it wrote
#     (--verify-source-after-failure pauses it and checks every page);
#   - D1 never reports success;
#   - the source has as many descriptors open after the failure and after
#     the retry as before, and its resident memory did not grow;
#   - the retry to D2 succeeds and D2 verifies every page.
# Faults that do not break TCP (loss, delay, reordering) must instead let the
# first migration succeed. Exit 77 (skip) when namespaces cannot be made here,
# or, for the netem-* cases and delay-20ms and reorder, when this kernel has no
# tc netem (tests/faults/netem.sh runs those in a VM whose kernel has it).
#
# FAULT_RAM sets the guest's size (default 32M). FAULT_SLOW=N multiplies
# every bound on waiting and the silent-peer timeout by N, for slow machines
# (an emulated VM); no case asserts how long anything took.
set -uo pipefail

PRECOPY=${1:?usage: faults.sh PRECOPY CASE}
CASE=${2:?usage: faults.sh PRECOPY CASE}
PRECOPY=$(readlink -f "$PRECOPY")
# shellcheck source=scripts/netns.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../scripts/netns.sh"

# Under ASan, freed memory waits in a quarantine and would look like RSS
# growth in the leak check; LSan still reports real leaks.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0"

RAM=${FAULT_RAM:-32M}
SLOW=${FAULT_SLOW:-1}
[[ $SLOW =~ ^[1-9][0-9]*$ ]] || { echo "faults.sh: FAULT_SLOW wants a positive integer" >&2; exit 2; }
TIMEOUT_MS=$((3000 * SLOW)) # --timeout: a silent link is noticed in seconds
RSS_SLACK_KIB=16384      # allowed growth of the source's resident memory

SRC=pcf-src-$$
DST=pcf-dst-$$
A_SRC=10.211.1.1 A_DST=10.211.1.2 B_SRC=10.211.2.1 B_DST=10.211.2.2
D1_URI=tcp:$A_DST:5001
D2_URI=tcp:$B_DST:5002
WORK=$(mktemp -d /tmp/precopy-faults.XXXXXX)
PIDS=()

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL [$CASE]: $*"; dump; exit 1; }
note() { echo "[$CASE] $*"; }

dump() {
	for f in "$WORK"/*; do
		[ -f "$f" ] || continue
		echo "--- $(basename "$f") (last lines)"
		grep -v '"event":"progress"' "$f" | tail -n 8
	done
}

cleanup() {
	netns_cleanup "$SRC" "$DST"
	rm -rf "$WORK"
}
trap cleanup EXIT

netns_need ip jq
netns_pair "$SRC" "$DST"
netns_link "$SRC" "$DST" a0 $A_SRC a1 $A_DST
netns_link "$SRC" "$DST" b0 $B_SRC b1 $B_DST

# --- helpers ----------------------------------------------------------------

# start NAME NS ARGS...: run precopy in a namespace, JSON to $WORK/NAME.json
start() {
	local name=$1 ns=$2
	shift 2
	ip netns exec "$ns" "$PRECOPY" "$@" --json --timeout $TIMEOUT_MS \
		>"$WORK/$name.json" 2>"$WORK/$name.err" &
	PIDS+=($!)
	eval "PID_$name=$!"
}

# has FILE JQ-CONDITION: some line of FILE satisfies the condition (jq -e
# only looks at the last line)
has() {
	[ -n "$(jq -c "select($2)" "$1" 2>/dev/null | head -c 1)" ]
}

# wait_line NAME TEXT SECONDS: until NAME's output has a line with TEXT
# (SECONDS times FAULT_SLOW at most)
wait_line() {
	local name=$1 text=$2 n=$(($3 * 50 * SLOW))
	while [ $n -gt 0 ]; do
		grep -qF -- "$text" "$WORK/$name.json" 2>/dev/null && return 0
		sleep 0.02
		n=$((n - 1))
	done
	return 1
}

# wait_exit NAME SECONDS: wait for the process (SECONDS times FAULT_SLOW at
# most); its status in RC_NAME
wait_exit() {
	local name=$1 n=$(($2 * 10 * SLOW)) pid
	pid=$(eval echo "\$PID_$name")
	while kill -0 "$pid" 2>/dev/null && [ $n -gt 0 ]; do
		sleep 0.1
		n=$((n - 1))
	done
	if kill -0 "$pid" 2>/dev/null; then
		fail "$name still running after $(($2 * SLOW)) s"
	fi
	wait "$pid"
	eval "RC_$name=$?"
}

listen_wait() { wait_line "$1" '"event":"listening"' 10 || fail "$1 did not listen"; }

# Parameters that keep the source iterating for a few seconds: the link's
# real speed would switch over right after the bulk pass, so the downtime
# limit is unreachable and the watchdog forces the switchover after 3
# passes.
ITERATING="--max-bandwidth 16M --downtime-limit 1 --max-iterations 3"

# For the faults the migration must ride out with netem on the link: a slow
# machine (an emulated VM) may carry little more than the guest's 8 MiB/s
# of writes, so after 20 passes the watchdog forces the switchover
# rather than iterate for minutes. The migration must still complete and
# the destination verify every page; the note says if it was forced.
BOUNDED="--max-iterations 20 --on-limit force"

src_args() {
	echo migrate --to $D1_URI --then-migrate-to $D2_URI --verify-source-after-failure \
		--ram "$RAM" --dirty-rate 8M
}

# The state the source was in when it failed: its last live progress status.
failed_in() {
	sed '/"event":"result"/q' "$WORK/src.json" |
		jq -r 'select(.event=="progress" and .role=="source") | .status' |
		grep -vE '^(failed|cancelled|completed)$' | tail -n 1
}

# After a fault that must fail the first migration.
check_failed_then_retried() {
	local want_state=$1 r status err v
	wait_exit src 90
	r=$(jq -c 'select(.event=="result" and .role=="source")' "$WORK/src.json" | head -n 1)
	[ -n "$r" ] || fail "the source printed no result"
	status=$(jq -r .status <<<"$r")
	err=$(jq -r .error <<<"$r")
	case $status in
	failed | cancelled) ;;
	*) fail "the first migration ended '$status', expected failed or cancelled" ;;
	esac
	[ -n "$err" ] || fail "the source gave no reason"
	note "source: $status in $(failed_in): $err"
	if [ -n "$want_state" ] && [ "$(failed_in)" != "$want_state" ]; then
		fail "the fault struck in $(failed_in), not in $want_state"
	fi
	v=$(jq -c 'select(.event=="source-verify")' "$WORK/src.json")
	[ -n "$v" ] || fail "no source-verify record"
	[ "$(jq -r .verified <<<"$v")" = true ] || fail "source memory not intact: $v"
	[ "$(jq -r .running <<<"$v")" = true ] || fail "source guest not running: $v"
	note "source guest: running, $(jq -r .pages <<<"$v") pages intact"
	check_resources
	[ "$RC_src" -eq 0 ] || fail "the retry to a fresh destination failed (exit $RC_src)"
	check_d2
}

check_resources() {
	local before after retry rb ra
	before=$(jq -r 'select(.event=="resources" and .stage=="before") | .fds' "$WORK/src.json")
	after=$(jq -r 'select(.event=="resources" and .stage=="after-failure") | .fds' "$WORK/src.json")
	retry=$(jq -r 'select(.event=="resources" and .stage=="after-retry") | .fds' "$WORK/src.json")
	rb=$(jq -r 'select(.event=="resources" and .stage=="before") | ."rss-kib"' "$WORK/src.json")
	ra=$(jq -r 'select(.event=="resources" and .stage=="after-retry") | ."rss-kib"' "$WORK/src.json")
	[ -n "$before" ] && [ -n "$after" ] && [ -n "$retry" ] || fail "no resources records"
	[ "$before" = "$after" ] || fail "descriptors leaked by the failed migration: $before -> $after"
	[ "$before" = "$retry" ] || fail "descriptors leaked by the retry: $before -> $retry"
	[ $((ra - rb)) -le $RSS_SLACK_KIB ] ||
		fail "resident memory grew by $((ra - rb)) KiB (before $rb, after $ra)"
	note "source resources: $before fds before/after/retry; rss $rb -> $ra KiB"
}

check_d2() {
	wait_exit d2 30
	[ "$RC_d2" -eq 0 ] || fail "fresh destination failed (exit $RC_d2)"
	has "$WORK/d2.json" '.event=="verify" and .verified==true' ||
		fail "fresh destination did not verify the guest"
	note "retry: completed, fresh destination verified every page"
}

# D1 must never report success (and so never start the guest).
check_d1_failed() {
	wait_exit d1 30
	if has "$WORK/d1.json" '.event=="result" and .status=="completed"' ||
	   has "$WORK/d1.json" '.event=="verify"'; then
		fail "the first destination reported success"
	fi
	[ "$RC_d1" -ne 0 ] || fail "the first destination exited 0"
	local e
	e=$(jq -r 'select(.event=="result") | .error' "$WORK/d1.json" 2>/dev/null | head -n 1)
	note "destination 1: exit $RC_d1${e:+, $e}"
}

# start_dests [D1-ARGS [D2-ARGS]]: both destinations, listening
start_dests() {
	start d1 "$DST" incoming --listen $D1_URI --ram "$RAM" ${1:-}
	start d2 "$DST" incoming --listen $D2_URI --ram "$RAM" ${2:-}
	listen_wait d1
	listen_wait d2
}

# start_until STATUS SECS [ARGS...]: both destinations, then the source
# (src_args, ARGS), once it reports STATUS (within SECS).
start_until() {
	local status=$1 secs=$2
	shift 2
	start_dests
	start src "$SRC" $(src_args) "$@"
	wait_line src "\"status\":\"$status\"" "$secs" || fail "source never in $status"
}

# check_d1_lost STATE: the first migration failed in STATE and was retried
# (check_failed_then_retried), and D1 never reported success.
check_d1_lost() {
	check_failed_then_retried "$1"
	check_d1_failed
}

# TLS: a key for the source and D2, another for D1 (tls-* cases)
tls_keys() {
	head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/good.psk"
	head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/other.psk"
	chmod 600 "$WORK/good.psk" "$WORK/other.psk" # key files must be private
	D1_URI=tls:$A_DST:5001
	D2_URI=tls:$B_DST:5002
}

nft_dst() { ip netns exec "$DST" nft "$@" || fail "nft $*"; }
nft_src() { ip netns exec "$SRC" nft "$@" || fail "nft $*"; }
# nft_chains NFT HOOK...: a table inet pcfault (NFT: nft_src or nft_dst)
# with a filter chain for each HOOK, named by it (in: input, out: output).
nft_chains() {
	local nft=$1 h
	shift
	"$nft" add table inet pcfault
	for h in "$@"; do
		case $h in
		in) "$nft" add chain inet pcfault in '{ type filter hook input priority 0; }' ;;
		out) "$nft" add chain inet pcfault out '{ type filter hook output priority 0; }' ;;
		esac
	done
}
need_nft() { command -v nft >/dev/null || skip "no 'nft' (nftables)"; }

# netem_both ARGS...: `tc qdisc add dev X root netem ARGS` on both ends of A
netem_both() {
	command -v tc >/dev/null || skip "no 'tc' (iproute2)"
	ip netns exec "$SRC" tc qdisc add dev a0 root netem "$@" 2>/dev/null ||
		skip "tc netem is not available in this kernel (CONFIG_NET_SCH_NETEM)"
	ip netns exec "$DST" tc qdisc add dev a1 root netem "$@" || fail "tc netem on a1"
	note "link A: netem $* on both ends"
}

# What netem did on link A, both ends together. It counts what it sent in
# segments and what it dropped in packets (a GSO packet is many segments).
netem_stats() {
	{
		ip netns exec "$SRC" tc -s qdisc show dev a0
		ip netns exec "$DST" tc -s qdisc show dev a1
	} | awk '/^ Sent/ { p += $4; d += $7 } END { printf "%d segments sent, %d packets dropped\n", p, d }'
}

# A link too slow for the guest: the watchdog's time limit must end the
# first migration (abort, as configured), then the retry goes over link B.
check_watchdog_ends_it() {
	start_dests
	start src "$SRC" $(src_args) --max-time 4000 --on-limit abort
	check_failed_then_retried ""
	[[ $(jq -r 'select(.event=="result") | .error' "$WORK/src.json") == *watchdog* ]] ||
		fail "the migration did not end by the watchdog"
	check_d1_failed
}

# A fault that TCP rides out: the first migration must succeed.
check_completed() {
	wait_exit src 120
	[ "$RC_src" -eq 0 ] || fail "the migration failed (exit $RC_src)"
	has "$WORK/src.json" '.event=="result" and .role=="source" and .status=="completed"' ||
		fail "the source did not complete"
	wait_exit d1 30
	[ "$RC_d1" -eq 0 ] || fail "destination failed (exit $RC_d1)"
	has "$WORK/d1.json" '.event=="verify" and .verified==true' ||
		fail "destination did not verify"
	note "$(jq -r 'select(.event=="result" and .role=="source") |
		"completed in \(."total-time") ms, \(.iteration) pass\(if .iteration == 1 then "" else "es" end) after bulk" +
		(if ."forced-switchover" then ", switchover forced by the watchdog" else "" end)' \
		"$WORK/src.json"); destination verified every page"
}

# --- the cases --------------------------------------------------------------

case $CASE in
kill-dest-setup)
	# D1 is frozen: the kernel accepts the connection, nobody answers
	# HELLO, so the source waits in setup until D1 dies.
	start_dests
	kill -STOP "$PID_d1"
	start src "$SRC" $(src_args)
	wait_line src '"status":"setup"' 10 || fail "source never in setup"
	sleep 0.5
	kill -9 "$PID_d1"
	check_d1_lost setup
	;;
kill-dest-bulk)
	start_until bulk 10 --max-bandwidth 8M
	sleep 0.3
	kill -9 "$PID_d1"
	check_d1_lost bulk
	;;
kill-dest-iterate)
	start_until iterate 30 $ITERATING
	kill -9 "$PID_d1"
	check_d1_lost iterate
	;;
kill-dest-switchover)
	# The synthetic VMM takes 2 s to stop: the source is in switchover.
	start_until switchover 30 --stop-delay 2000
	sleep 0.2
	kill -9 "$PID_d1"
	check_d1_lost switchover
	;;
kill-source-iterate)
	# The destination must fail and never start the guest; a new source
	# then migrates to a fresh destination.
	start_until iterate 30 $ITERATING
	kill -9 "$PID_src"
	wait "$PID_src" 2>/dev/null
	check_d1_failed
	start src2 "$SRC" migrate --to $D2_URI --ram "$RAM" --dirty-rate 8M
	wait_exit src2 60
	[ "$RC_src2" -eq 0 ] || fail "a new source could not migrate (exit $RC_src2)"
	check_d2
	;;
cut-drop)
	# Every packet of D1's connection vanishes: TCP_USER_TIMEOUT and
	# keepalive must notice at both ends.
	need_nft
	start_until iterate 30 $ITERATING
	nft_chains nft_dst in out
	nft_dst add rule inet pcfault in tcp dport 5001 drop
	nft_dst add rule inet pcfault out tcp sport 5001 drop
	note "link to destination 1 cut silently"
	check_d1_lost iterate
	;;
cut-reset)
	# Both ends answer the other's packets with a TCP reset.
	need_nft
	start_until iterate 30 $ITERATING
	nft_chains nft_dst in
	nft_dst 'add rule inet pcfault in tcp dport 5001 tcp flags & rst == 0 reject with tcp reset'
	nft_chains nft_src in
	nft_src 'add rule inet pcfault in tcp sport 5001 tcp flags & rst == 0 reject with tcp reset'
	note "link to destination 1 cut with resets"
	check_d1_lost iterate
	;;
loss-1pct)
	# 1% of packets lost each way on link A (nft's random numbers, so
	# that this runs without netem too): TCP recovers, migration completes.
	need_nft
	for ns in "$SRC" "$DST"; do
		ip netns exec "$ns" nft add table inet pcfault || fail "nft"
		ip netns exec "$ns" nft add chain inet pcfault in '{ type filter hook input priority 0; }'
		ip netns exec "$ns" nft add chain inet pcfault out '{ type filter hook output priority 0; }'
		ip netns exec "$ns" nft add rule inet pcfault in meta l4proto tcp numgen random mod 100 '<' 1 counter drop
		ip netns exec "$ns" nft add rule inet pcfault out meta l4proto tcp numgen random mod 100 '<' 1 counter drop
	done
	start_dests
	start src "$SRC" $(src_args)
	check_completed
	ds=$(ip netns exec "$SRC" nft list table inet pcfault |
		grep -o 'packets [0-9]*' | awk '{n += $2} END {print n + 0}')
	dd=$(ip netns exec "$DST" nft list table inet pcfault |
		grep -o 'packets [0-9]*' | awk '{n += $2} END {print n + 0}')
	note "packets dropped: $ds at the source, $dd at the destination"
	# A case that dropped nothing tested nothing.
	[ "$ds" -gt 0 ] && [ "$dd" -gt 0 ] || fail "the nft rules dropped no packet at one end"
	;;
delay-20ms)
	# 20 ms +- 5 ms each way (so packets are reordered too): TCP rides it.
	netem_both delay 20ms 5ms
	start_dests
	start src "$SRC" $(src_args) $BOUNDED
	check_completed
	note "netem: $(netem_stats)"
	;;
reorder)
	# A quarter of the packets (correlated 50%) go at once, the rest 10 ms
	# later: TCP reassembles, the migration completes.
	netem_both delay 10ms reorder 25% 50%
	start_dests
	start src "$SRC" $(src_args) $BOUNDED
	check_completed
	note "netem: $(netem_stats)"
	;;
netem-loss-1pct)
	# loss-1pct with netem's own loss instead of nft's random numbers.
	netem_both loss 1%
	start_dests
	start src "$SRC" $(src_args) $BOUNDED
	check_completed
	note "netem: $(netem_stats)"
	# A case that dropped nothing tested nothing.
	[ "$(netem_stats | awk '{ print $4 }')" -gt 0 ] || fail "netem dropped no packet"
	;;
rate-3mbit)
	# 3 Mbit/s (tbf) cannot carry a guest writing 8 MiB/s: no convergence,
	# and the watchdog aborts as configured; the retry goes over link B.
	ip netns exec "$SRC" tc qdisc add dev a0 root tbf rate 3mbit burst 32kbit latency 400ms ||
		skip "tc tbf not available"
	ip netns exec "$DST" tc qdisc add dev a1 root tbf rate 3mbit burst 32kbit latency 400ms ||
		fail "tc tbf on a1"
	check_watchdog_ends_it
	;;
netem-rate-3mbit)
	# rate-3mbit with netem's rate instead of tbf.
	netem_both rate 3mbit
	check_watchdog_ends_it
	note "netem: $(netem_stats)"
	;;
cancel-iterate)
	# SIGTERM cancels the running migration (as Ctrl-C does).
	start_until iterate 30 $ITERATING
	kill -TERM "$PID_src"
	check_failed_then_retried iterate
	[ "$(jq -r 'select(.event=="result") | .status' "$WORK/src.json" | head -n 1)" = cancelled ] ||
		fail "the source did not report cancelled"
	check_d1_failed
	;;
tls-kill-dest-bulk)
	# The same over TLS (PSK): the source's TLS sessions end cleanly too.
	tls_keys
	start_dests "--tls-psk-file $WORK/good.psk" "--tls-psk-file $WORK/good.psk"
	start src "$SRC" $(src_args) --max-bandwidth 8M --tls-psk-file "$WORK/good.psk"
	wait_line src '"status":"bulk"' 10 || fail "source never in bulk"
	sleep 0.3
	kill -9 "$PID_d1"
	check_d1_lost bulk
	;;
tls-wrong-key)
	# D1 holds another key: the handshake fails before the source touches
	# its guest, and D1 waits on for its real source; the retry to D2,
	# which has the source's key, succeeds.
	tls_keys
	start_dests "--tls-psk-file $WORK/other.psk" "--tls-psk-file $WORK/good.psk"
	start src "$SRC" $(src_args) --tls-psk-file "$WORK/good.psk"
	check_failed_then_retried setup
	[[ $(jq -r 'select(.event=="result") | .error' "$WORK/src.json") == *TLS* ]] ||
		fail "the error does not say TLS"
	# A failed handshake ends that connection, not the listener: D1 is
	# still waiting for a source that holds its key, and reported nothing.
	kill -0 "$PID_d1" 2>/dev/null || fail "the first destination ended on a stranger"
	if has "$WORK/d1.json" '.event=="result"' || has "$WORK/d1.json" '.event=="verify"'; then
		fail "the first destination reported a result"
	fi
	kill "$PID_d1" 2>/dev/null
	wait "$PID_d1" 2>/dev/null
	note "destination 1: still listening after the wrong key (stopped by the test)"
	;;
*)
	echo "faults.sh: unknown case '$CASE'" >&2
	exit 2
	;;
esac
echo "PASS [$CASE]"
exit 0
