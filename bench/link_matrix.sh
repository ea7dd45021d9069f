#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# link_matrix.sh PRECOPY [ROW...] - real migrations through rate-limited
# links, and whether the downtime promise held in each.
#
# Two network namespaces joined by a veth; the source's side shapes its
# egress with tbf, a bottleneck the sender's kernel sees (a user-space
# rate-limiting proxy would hide it behind its own socket buffer). For each
# row the destination listens in one namespace and `precopy migrate` runs
# the synthetic guest in the other, with the downtime limit at 300 ms.
#
# A row is LINK-CAP-CHANNELS-GUEST-DIRTY:
#   LINK      link rate, MiB/s (tbf)
#   CAP       "nocap", or "cap": --max-bandwidth at a third of the link
#   CHANNELS  1 or 4
#   GUEST     "plain" (every page data) or "zero80" (80% zero pages: a busy
#             sender that scans more than it sends)
#   DIRTY     the guest's write rate as a percent of the link, e.g. 5, 30
# With no ROW, the full matrix: links 32 and 256, nocap and cap, 1 and 4
# channels, plain and zero80, dirty 5 and 30 (32 rows).
#
# Printed: a table, one line per row, with the measured downtime, the
# expected-downtime of the decision, the link estimate and its source. A
# row that converges must have downtime <= 1.1 x the limit and expected
# within 30% (or 20 ms) of the measured downtime; a row that does not
# converge within MATRIX_MAX_TIME ms (default 60000) is aborted by the
# watchdog and reported, not judged. Exit status: 0 if every converged row
# held, 1 if one did not, 77 if namespaces or tbf cannot be had here.
#
# Beside each row, `precopy simulate` with the same guest, parameters and
# link: its total time and downtime, and whether they agree with the real
# ones within 25% (downtime: or 20 ms). Its transport queue is what the
# real sender's sockets held (Send-Q summed over channels, the median of
# samples five times a second); simulate drains it at each pass end, as
# the engine does while it waits for the pass's ITER_ACK. Its guest writes
# only the pages that are not zero, as the synthetic guest does (a write
# to a zero page is dropped), so its write rate is DIRTY x (100 - zero%).
# Its sender's cost per zero page (--zero-page-cost) is the real run's:
# the sender's scan CPU time (scan-cpu-ms) over the zero pages it found,
# nearly all of it the first read of a page the guest never touched (a
# page fault each). It is CPU time: on a loaded machine the real sender
# also waits for a core, and simulate's totals come out short by that.
# Plain rows pay no such cost (their scan CPU, about 1 us per page, is
# well under a page's time on the link). That agreement is printed and
# counted at the end; it does not change the exit status unless
# MATRIX_JUDGE_SIM=1.
#
# MATRIX_RAM_32 / MATRIX_RAM_256 (default 128M / 256M): the guest's size
# on the slow and the fast link. MATRIX_BURST_MS (default 4): tbf's burst,
# in ms of the rate. MATRIX_KEEP=PREFIX: keep each row's JSON lines and
# stderr as PREFIX.ROW.json / .err.
set -uo pipefail

PRECOPY=$(readlink -f "${1:?usage: link_matrix.sh PRECOPY [ROW...]}")
shift
# shellcheck source=scripts/netns.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../scripts/netns.sh"
LIMIT_MS=300
MAX_TIME=${MATRIX_MAX_TIME:-60000}
SRC=pcm-src-$$
DST=pcm-dst-$$
A_SRC=10.212.1.1 A_DST=10.212.1.2
WORK=$(mktemp -d /tmp/precopy-matrix.XXXXXX)
PIDS=()

skip() { echo "SKIP: $*"; exit 77; }
cleanup() {
	netns_cleanup "$SRC" "$DST"
	rm -rf "$WORK"
}
trap cleanup EXIT

netns_need ip tc jq
netns_pair "$SRC" "$DST"
netns_link "$SRC" "$DST" a0 $A_SRC a1 $A_DST

# shape LINK_MIB: tbf at LINK MiB/s on the source's egress, 20 ms of queue,
# and a burst of MATRIX_BURST_MS of the rate (default 4; at least 16 KiB):
# a real link never goes faster than its rate, and a burst as long as a
# capped sender's 10 ms slice lets each slice through at veth speed, which
# the delivery-rate samples then report as the link (docs/PERFORMANCE.md).
shape() {
	local bps=$(($1 * 1048576)) burst
	burst=$((bps * ${MATRIX_BURST_MS:-4} / 1000))
	[ $burst -ge 16384 ] || burst=16384
	ip netns exec "$SRC" tc qdisc replace dev a0 root tbf rate $((bps * 8))bit \
		burst $burst latency 20ms 2>"$WORK/tc.err" ||
		skip "tc tbf is not available here: $(cat "$WORK/tc.err")"
}

rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
	for link in 32 256; do for cap in nocap cap; do for ch in 1 4; do
		for guest in plain zero80; do for dirty in 5 30; do
			rows+=("$link-$cap-$ch-$guest-$dirty")
		done; done
	done; done; done
fi

# simulate_row QUEUE ZERO_NS ARGS...: "TOTAL_S DOWN_MS OUTCOME" of the
# simulated row.
simulate_row() {
	local q=$1 zc=$2
	shift 2
	"$PRECOPY" simulate --json --send-queue "$q" --zero-page-cost "$zc" "$@" 2>/dev/null |
		jq -r 'select(.event=="result") | "\(."total-time-ms" / 1000) \(."downtime-ms") \(.outcome)"'
}

# within A B PCT FLOOR: |A - B| <= max(PCT% of B, FLOOR)
within() {
	awk -v a="$1" -v b="$2" -v p="$3" -v f="$4" 'BEGIN {
		d = a - b; if (d < 0) d = -d; t = b * p / 100; if (t < f) t = f; exit !(d <= t) }'
}

bad=0 port=6000 sim_ok=0 sim_n=0
printf '%-22s %-9s %8s %8s %6s %7s %9s %9s %-9s %-26s %s\n' row outcome "down ms" "exp ms" \
	"ratio" "total s" "link M/s" "used M/s" source verdict "simulate: s, ms, queue, zero us"
for row in "${rows[@]}"; do
	IFS=- read -r link cap ch guest dirty <<<"$row"
	[[ $link =~ ^[0-9]+$ && ($cap == nocap || $cap == cap) && $ch =~ ^[0-9]+$ &&
		($guest == plain || $guest == zero80) && $dirty =~ ^[0-9]+$ ]] ||
		{ echo "link_matrix.sh: bad row '$row' (LINK-CAP-CHANNELS-GUEST-DIRTY)" >&2; exit 2; }
	ram=${MATRIX_RAM_256:-256M}
	[ "$link" -ge 128 ] || ram=${MATRIX_RAM_32:-128M}
	shape "$link"
	args=(--ram "$ram" --channels "$ch" --downtime-limit $LIMIT_MS
	      --dirty-rate $((link * 1048576 * dirty / 100)) --max-time "$MAX_TIME" --on-limit abort)
	[ "$cap" = cap ] && args+=(--max-bandwidth $((link * 1048576 / 3)))
	[ "$guest" = zero80 ] && args+=(--zero-pct 80)
	port=$((port + 1))
	ip netns exec "$DST" "$PRECOPY" incoming --listen tcp:$A_DST:$port --ram "$ram" --json \
		>"$WORK/dst.json" 2>"$WORK/dst.err" &
	dpid=$!
	PIDS+=($dpid)
	for _ in $(seq 100); do
		grep -q listening "$WORK/dst.json" 2>/dev/null && break
		sleep 0.05
	done
	ip netns exec "$SRC" "$PRECOPY" migrate --to tcp:$A_DST:$port "${args[@]}" --json \
		>"$WORK/src.json" 2>"$WORK/src.err" &
	spid=$!
	PIDS+=($spid)
	# What the sender's sockets hold (Send-Q, summed over channels), five
	# times a second while it runs: simulate's transport queue.
	: >"$WORK/sendq"
	while kill -0 $spid 2>/dev/null; do
		ip netns exec "$SRC" ss -tnH state established dst $A_DST 2>/dev/null |
			awk '{ q += $2 } END { if (NR) print q }' >>"$WORK/sendq"
		sleep 0.2
	done
	wait $spid
	queue=$(sort -n "$WORK/sendq" | awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : 0 }')
	[ -n "${MATRIX_KEEP:-}" ] && cp "$WORK/src.err" "$MATRIX_KEEP.$row.err"
	wait $dpid 2>/dev/null
	r=$(jq -c 'select(.event=="result" and .role=="source")' "$WORK/src.json" | head -n 1)
	if [ -z "$r" ]; then
		printf '%-22s no result: %s\n' "$row" "$(tail -n 2 "$WORK/src.err" | tr '\n' ' ')"
		bad=1
		continue
	fi
	zpct=0
	[ "$guest" = zero80 ] && zpct=80
	sargs=("${args[@]}")
	sargs[7]=$((link * 1048576 * dirty / 100 * (100 - zpct) / 100)) # after --dirty-rate
	# the sender's scan CPU per zero page, ns (0 without zero pages)
	zcost=$(jq -r 'if .duplicate > 0 then (."scan-cpu-ms" * 1e6 / .duplicate | floor)
		else 0 end' <<<"$r")
	read -r sim_total sim_down sim_out < <(simulate_row "$queue" "$zcost" \
		--bandwidth $((link * 1048576)) "${sargs[@]}")
	read -r status down exp total bwl bws src < <(jq -r '[.status, .downtime,
		."expected-downtime", ."total-time", ."bandwidth-link", ."bandwidth-switchover",
		."bandwidth-source"] | @tsv' <<<"$r")
	# Does simulate agree? Total time within 25%; downtime within 25% or
	# 20 ms; a real row that did not converge agrees with one simulate
	# did not converge either.
	sim="$sim_total $sim_down"
	if [ -z "$sim_out" ]; then
		simv="simulate failed"
	elif [ "$status" != completed ] || [ "$sim_out" != converged ]; then
		[ "$status" != completed ] && [ "$sim_out" != converged ] && simv=agrees ||
			simv="disagrees ($sim_out)"
	elif within "$sim_total" "$(echo "$total / 1000" | bc -l)" 25 0 &&
		within "$sim_down" "$down" 25 20; then
		simv=agrees
	else
		simv=disagrees
	fi
	sim_n=$((sim_n + 1))
	[ "$simv" = agrees ] && sim_ok=$((sim_ok + 1))
	sim=$(printf '%6.1f %7.0f %5dK %5.1f %s' "${sim_total:-0}" "${sim_down:-0}" $((queue / 1024)) \
		"$(echo "$zcost / 1000" | bc -l)" "$simv")
	if [ "$status" != completed ]; then
		printf '%-22s %-9s %8s %8s %6s %7.1f %9.1f %9.1f %-9s %-26s %s\n' "$row" "$status" - - - \
			"$(echo "$total / 1000" | bc -l)" "$(echo "$bwl / 1048576" | bc -l)" \
			"$(echo "$bws / 1048576" | bc -l)" "$src" "not converged (not judged)" "$sim"
		continue
	fi
	verdict=ok
	if [ "$down" -gt $((LIMIT_MS * 11 / 10)) ]; then
		verdict="FAIL: downtime over 1.1 x limit"
	else
		d=$((exp - down)); d=${d#-}
		tol=$((down * 30 / 100)); [ $tol -ge 20 ] || tol=20
		[ $d -le $tol ] || verdict="FAIL: expected off by $d ms (> $tol)"
	fi
	[ "$verdict" = ok ] || bad=1
	ratio=$(echo "scale=2; $exp / ($down + 0.0001)" | bc -l)
	printf '%-22s %-9s %8s %8s %6s %7.1f %9.1f %9.1f %-9s %-26s %s\n' "$row" "$status" "$down" "$exp" \
		"$ratio" "$(echo "$total / 1000" | bc -l)" "$(echo "$bwl / 1048576" | bc -l)" \
		"$(echo "$bws / 1048576" | bc -l)" "$src" "$verdict" "$sim"
	[ -n "${MATRIX_KEEP:-}" ] && cp "$WORK/src.json" "$MATRIX_KEEP.$row.json"
done
echo "simulate agreed with $sim_ok of $sim_n rows"
[ "${MATRIX_JUDGE_SIM:-0}" = 1 ] && [ "$sim_ok" -ne "$sim_n" ] && bad=1
exit $bad
