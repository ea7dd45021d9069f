# SPDX-License-Identifier: MIT
# shellcheck shell=bash
#
# netns.sh - two network namespaces joined by veth pairs, for the scripts
# that migrate between them (tests/faults/faults.sh, bench/link_matrix.sh).
# Sourced, not run. The caller defines skip() (say why, exit 77), keeps
# the pids of what it starts in the array PIDS, and names its namespaces:
#
#   netns_need ip jq ...          skip unless root and every tool is here
#   netns_pair SRC DST            make both namespaces, loopback up
#   netns_link SRC DST DEV0 ADDR0 DEV1 ADDR1
#                                 a veth DEV0 (in SRC, ADDR0/24) to DEV1 (in
#                                 DST, ADDR1/24), both up
#   netns_cleanup SRC DST         kill and reap PIDS, delete the namespaces

# netns_need TOOL...: root, and each TOOL on the PATH; skip otherwise.
netns_need() {
	local t
	[ "$(id -u)" -eq 0 ] || skip "network namespaces need root"
	for t in "$@"; do
		case $t in
		ip | tc) command -v "$t" >/dev/null || skip "no '$t' (iproute2)" ;;
		*) command -v "$t" >/dev/null || skip "no '$t'" ;;
		esac
	done
}

# netns_pair SRC DST: both namespaces, their loopback up; skip if this
# machine cannot make them.
netns_pair() {
	ip netns add "$1" 2>/dev/null || skip "cannot create a network namespace here"
	ip netns add "$2" || skip "cannot create a second network namespace"
	ip -n "$1" link set lo up
	ip -n "$2" link set lo up
}

# netns_link SRC DST DEV0 ADDR0 DEV1 ADDR1: a veth pair between them.
netns_link() {
	ip -n "$1" link add "$3" type veth peer name "$5" netns "$2" || skip "no veth"
	ip -n "$1" addr add "$4/24" dev "$3"
	ip -n "$2" addr add "$6/24" dev "$5"
	ip -n "$1" link set "$3" up
	ip -n "$2" link set "$5" up
}

# netns_cleanup SRC DST: every process in PIDS killed and reaped, both
# namespaces gone (their links with them).
netns_cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill -9 "$p" 2>/dev/null
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null
	done
	ip netns del "$1" 2>/dev/null
	ip netns del "$2" 2>/dev/null
}
