#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cli_args.sh PRECOPY - invalid command lines are refused with exit status 2
# and one line that names the problem, before any migration starts.
set -uo pipefail
P=$1
fails=0 n=0

# expect 'TEXT' ARGS...: exit 2, and TEXT in what was printed
expect() {
	local text=$1 out rc
	shift
	out=$("$P" "$@" 2>&1 </dev/null)
	rc=$?
	n=$((n + 1))
	if [ $rc -ne 2 ] || [[ $out != *"$text"* ]]; then
		echo "FAIL: precopy $*: exit $rc, '$out' (wanted exit 2 and '$text')"
		fails=$((fails + 1))
	else
		echo "ok   precopy $*: ${out%%$'\n'*}"
	fi
}

T="--to tcp:127.0.0.1:9"
expect "unknown command" frobnicate
expect "unrecognized option" migrate --bogus
expect "unexpected argument" migrate $T --ram 4M extra
expect "are required" migrate --ram 4M
expect "are required" incoming --listen tcp:127.0.0.1:0
expect "--ram '0'" migrate $T --ram 0
expect "whole 4 KiB pages" migrate $T --ram 5000
expect "--ram '-4M'" migrate $T --ram -4M
expect "--ram '4X'" migrate $T --ram 4X
expect "--ram '99999999T'" migrate $T --ram 99999999T
expect "--dirty-rate" migrate $T --ram 4M --dirty-rate fast
expect "--pattern" migrate $T --ram 4M --pattern zigzag
expect "--threads" migrate $T --ram 4M --threads 0
expect "--zero-pct" migrate $T --ram 4M --zero-pct 101
expect "--dirty-mode" migrate $T --ram 4M --dirty-mode magic
expect "--channels" migrate $T --ram 4M --channels 17
expect "--channels" migrate $T --ram 4M --channels 0
expect "--timeout" migrate $T --ram 4M --timeout 99
expect "--timeout" migrate $T --ram 4M --timeout 3600001
expect "--downtime-limit" migrate $T --ram 4M --downtime-limit 2000001
expect "downtime_limit_ms" migrate $T --ram 4M --downtime-limit 0
expect "--max-cpu-throttle" migrate $T --ram 4M --max-cpu-throttle 100
expect "above max_cpu_throttle" migrate $T --ram 4M --cpu-throttle-initial 90 --max-cpu-throttle 50
expect "--on-limit" migrate $T --ram 4M --on-limit maybe
expect "--max-bandwidth" migrate $T --ram 4M --max-bandwidth lots
expect "--stop-delay" migrate $T --ram 4M --stop-delay -1
expect "bad destination URI" migrate --to bogus:1 --ram 4M
expect "bad destination URI" migrate --to tcp:localhost --ram 4M
expect "bad destination URI" migrate --to tcp:127.0.0.1:70000 --ram 4M
expect "bad destination URI" migrate --to tcp:[::1 --ram 4M
expect "malformed URI" incoming --listen tcp:127.0.0.1:99999 --ram 4M
expect "malformed URI" incoming --listen nope --ram 4M
expect "malformed URI" incoming --listen tcp:::1:5 --ram 4M
echo 1234 >"${TMPDIR:-/tmp}/precopy-short-psk.$$"
expect "--tls-psk-file" migrate --to tls:127.0.0.1:9 --ram 4M --tls-psk-file "${TMPDIR:-/tmp}/precopy-short-psk.$$"
rm -f "${TMPDIR:-/tmp}/precopy-short-psk.$$"
expect "--tls-psk-file" migrate --to tls:127.0.0.1:9 --ram 4M --tls-psk-file /nonexistent/psk
expect "incomplete TLS settings" migrate --to tls:127.0.0.1:9 --ram 4M --tls-cert x.pem
expect "incomplete TLS settings" incoming --listen tls:127.0.0.1:0 --ram 4M --tls-hostname x
expect "--bandwidth" simulate --ram 4M --bandwidth 0 --dirty-rate 1M
echo "cli_args: $((n - fails)) passed, $fails failed"
[ $fails -eq 0 ]
