#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cli_args.sh PRECOPY - invalid command lines are refused with exit status 2
# and one line that names the problem, before any migration starts.
set -uo pipefail
P=$1
umask 077 # key files below must be private to their owner
fails=0 n=0

# expect 'TEXT' ARGS...: exit 2, and TEXT in what was printed. A command
# that would go on (listen, say) is stopped after 20 s and fails the case.
expect() {
	local text=$1 out rc
	shift
	out=$(timeout 20 "$P" "$@" 2>&1 </dev/null)
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
# ... and a URI of no transport built in is not warned about as rdma: would be
refute() {
	local text=$1 out
	shift
	out=$(timeout 20 "$P" "$@" 2>&1 </dev/null)
	n=$((n + 1))
	if [[ $out == *"$text"* ]]; then
		echo "FAIL: precopy $*: '$out' (wanted no '$text')"
		fails=$((fails + 1))
	else
		echo "ok   precopy $*: no '$text'"
	fi
}
refute "without --auth-key-file" migrate --to bogus:1 --ram 4M
refute "without --auth-key-file" bridge --listen nope --to-unix /nonexistent/s
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
expect "incomplete TLS settings" incoming --listen tls:127.0.0.1:0 --ram 4M --tls-hostname x
expect "--bandwidth" simulate --ram 4M --bandwidth 0 --dirty-rate 1M
expect "--page-cost '5us'" simulate --ram 4M --bandwidth 1G --dirty-rate 1M --page-cost 5us
expect "--zero-page-cost '-1'" simulate --ram 4M --bandwidth 1G --dirty-rate 1M --zero-page-cost -1

# RDMA: the key file's format, and both flags where they cannot act
K=$(mktemp "${TMPDIR:-/tmp}/precopy-key.XXXXXX")
trap 'rm -f "$K"' EXIT
R="--to rdma:127.0.0.1:9 --ram 4M"
echo 00112233445566778899aabbccddee >"$K"       # 15 bytes
expect "--auth-key-file" migrate $R --auth-key-file "$K"
echo "00112233445566778899aabbccddeeff0" >"$K"  # an odd digit
expect "--auth-key-file" migrate $R --auth-key-file "$K"
echo "00112233445566778899aabbccddeeffzz" >"$K" # not hex
expect "16..1024 bytes" migrate $R --auth-key-file "$K"
head -c 1025 /dev/zero | od -An -v -tx1 | tr -d ' \n' >"$K" # 1025 bytes
expect "16..1024 bytes" incoming --listen rdma:127.0.0.1:0 --ram 4M --auth-key-file "$K"
expect "--auth-key-file" migrate $R --auth-key-file /nonexistent/key
expect "--rdma-registration" migrate $R --rdma-registration sometimes
echo 00112233445566778899aabbccddeeff >"$K"         # 16 bytes: a good key
expect "applies to rdma: URIs only" migrate $T --ram 4M --auth-key-file "$K"
expect "applies to rdma: URIs only" migrate $T --ram 4M --rdma-registration pin-all
expect "applies to rdma: URIs only" incoming --listen tcp:127.0.0.1:0 --ram 4M --auth-key-file "$K"
expect "applies to rdma: URIs only" demo --auth-key-file "$K"
expect "applies to rdma: URIs only" bridge --listen-unix /nonexistent/s --to tcp:127.0.0.1:9 --auth-key-file "$K"
expect "applies to migrate and demo only" incoming --listen rdma:127.0.0.1:0 --ram 4M --rdma-registration pin-all
expect "applies to migrate and demo only" bridge --listen rdma:127.0.0.1:0 --to-unix /nonexistent/s --rdma-registration on-demand
expect "makes no connection" simulate --ram 4M --bandwidth 1G --dirty-rate 1M --auth-key-file "$K"
# RAM the host could never hold: refused before anything is allocated or
# listened on, naming the size asked for and what the host has (memory and
# swap, as pc_cli_fmt_bytes prints it). A timeout, should it listen anyway.
host=$(awk '/^(MemTotal|SwapTotal):/ { s += $2 } END {
	b = s * 1024; u = 0; split("B KiB MiB GiB TiB", un, " ")
	while (b >= 1024 && u < 4) { b /= 1024; u++ }
	printf "%.2f %s", b, un[u + 1] }' /proc/meminfo)
for cmd in "incoming --listen shm:/nonexistent/s" "migrate --to shm:/nonexistent/s"; do
	out=$(timeout 20 "$P" $cmd --ram 4T 2>&1 </dev/null)
	rc=$?
	n=$((n + 1))
	if [ $rc -ne 2 ] || [[ $out != *"--ram 4.00 TiB is more than this host can hold"* ]] ||
	   [[ $out != *"$host of memory and swap"* ]]; then
		echo "FAIL: precopy $cmd --ram 4T: exit $rc, '$out' (wanted exit 2, 4.00 TiB and $host)"
		fails=$((fails + 1))
	else
		echo "ok   precopy $cmd --ram 4T: $out"
	fi
done


# TLS settings where no tls: URI would use them are refused, not ignored
expect "applies to tls: URIs only" incoming --listen tcp:127.0.0.1:0 --ram 4M --tls-psk-file "$K"
expect "applies to tls: URIs only" migrate $T --ram 4M --tls-psk-file "$K"
expect "applies to tls: URIs only" migrate $T --ram 4M --tls-hostname dest
expect "applies to tls: URIs only" incoming --listen shm:/nonexistent/s --ram 4M --tls-psk-identity x
expect "applies to tls: URIs only" demo --tls-psk-file "$K"
expect "applies to tls: URIs only" bridge --listen tcp:127.0.0.1:0 --to-unix /nonexistent/s --tls-psk-file "$K"
expect "makes no connection" simulate --ram 4M --bandwidth 1G --dirty-rate 1M --tls-psk-file "$K"
expect "incomplete TLS settings" migrate --to tls:127.0.0.1:9 --ram 4M --tls-cert "$K"
expect "incomplete TLS settings" bridge --listen tls:127.0.0.1:0 --to-unix /nonexistent/s --tls-psk-identity x
expect "--tls-ca" migrate --to tls:127.0.0.1:9 --ram 4M --tls-ca /nonexistent/ca.pem
expect "--tls-cert" incoming --listen tls:127.0.0.1:0 --ram 4M --tls-cert /nonexistent/c.pem --tls-key "$K"

# key files group- or other-readable are refused, as ssh does
chmod 640 "$K"
expect "a key file must be readable by its owner only" migrate $R --auth-key-file "$K"
expect "readable by its group" migrate --to tls:127.0.0.1:9 --ram 4M --tls-psk-file "$K"
chmod 604 "$K"
expect "readable by others" incoming --listen tls:127.0.0.1:0 --ram 4M --tls-psk-file "$K"
expect "readable by others" incoming --listen tls:127.0.0.1:0 --ram 4M --tls-cert "$K" --tls-key "$K"
chmod 644 "$K"
expect "chmod 600" incoming --listen rdma:127.0.0.1:0 --ram 4M --auth-key-file "$K"
chmod 600 "$K"

echo "cli_args: $((n - fails)) passed, $fails failed"
[ $fails -eq 0 ]
