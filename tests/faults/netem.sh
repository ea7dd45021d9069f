#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# netem.sh PRECOPY [--method auto|host|vm] [CASE...] - the fault cases that
# need `tc netem` (CONFIG_NET_SCH_NETEM), one after the other, each through
# faults.sh (which says what each asserts), netem on both ends of link A:
#
#   delay-20ms        netem delay 20ms 5ms                 migration completes
#   reorder           netem delay 10ms reorder 25% 50%     migration completes
#   netem-loss-1pct   netem loss 1%                        migration completes
#   netem-rate-3mbit  netem rate 3mbit    the watchdog aborts it, retry succeeds
#
# (all four when no CASE is named). Where this kernel has no netem, as on
# this project's CI machines, they run in the throwaway VM that
# soft-roce-setup/run boots (Debian 12's 6.1 kernel, sch_netem and veth
# loaded with --module): one boot for all of them, and everything there is
# slower (TCG), so faults.sh's bounds on waiting are stretched (FAULT_SLOW).
#
#   --method auto  here if this kernel can do netem, else in the VM (default)
#   --method host  here, or exit 77 if this kernel cannot
#   --method vm    in the VM, whatever this kernel can do
#
# One line per case (PASS, FAIL or SKIP, and how long it took). Exit 1 if a
# case failed, 77 with a one-line reason if none could run, else 0.
set -uo pipefail

usage() { echo "usage: netem.sh PRECOPY [--method auto|host|vm] [CASE...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
PRECOPY=$(readlink -f "$1") || usage
shift
METHOD=auto
CASES=()
while [ $# -gt 0 ]; do
	case $1 in
	--method)
		[ $# -ge 2 ] || usage
		METHOD=$2
		shift
		;;
	-*) usage ;;
	*) CASES+=("$1") ;;
	esac
	shift
done
case $METHOD in auto | host | vm) ;; *) usage ;; esac
[ ${#CASES[@]} -gt 0 ] || CASES=(delay-20ms reorder netem-loss-1pct netem-rate-3mbit)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
RUN=$HERE/../../soft-roce-setup/run
VM_MEMORY_MIB=768            # three 32 MiB guests and their tools
VM_TIMEOUT_S=${NETEM_VM_TIMEOUT:-1500}
VM_SLOW=${FAULT_SLOW:-4}     # FAULT_SLOW inside the VM

skip() { echo "SKIP: $*"; exit 77; }

# Can this kernel put netem on a link? Tried in a scratch namespace.
host_has_netem() {
	local ns=pcn-probe-$$ ok=1
	[ "$(id -u)" -eq 0 ] && command -v ip >/dev/null && command -v tc >/dev/null || return 1
	ip netns add "$ns" 2>/dev/null || return 1
	ip -n "$ns" link set lo up &&
		ip netns exec "$ns" tc qdisc add dev lo root netem delay 1ms 2>/dev/null && ok=0
	ip netns del "$ns"
	return $ok
}

run_here() {
	local c rc t0 failed=0 passed=0 skipped=0 why=''
	[ "$(id -u)" -eq 0 ] || skip "network namespaces need root"
	host_has_netem || skip "tc netem is not available in this kernel (CONFIG_NET_SCH_NETEM)"
	echo "netem: kernel $(uname -r), FAULT_SLOW=${FAULT_SLOW:-1}"
	for c in "${CASES[@]}"; do
		t0=$SECONDS
		"$HERE/faults.sh" "$PRECOPY" "$c"
		rc=$?
		case $rc in
		0) echo "netem: PASS $c ($((SECONDS - t0)) s)"; passed=$((passed + 1)) ;;
		77) echo "netem: SKIP $c"; skipped=$((skipped + 1)); why=$c ;;
		*) echo "netem: FAIL $c (exit $rc, $((SECONDS - t0)) s)"; failed=$((failed + 1)) ;;
		esac
	done
	echo "netem: $passed passed, $failed failed, $skipped skipped"
	[ $failed -eq 0 ] || exit 1
	[ $passed -gt 0 ] || skip "every case skipped (the last: $why)"
	exit 0
}

run_in_vm() {
	local shares=() d
	[ -x "$RUN" ] || skip "no soft-roce-setup/run to boot a VM with netem"
	# Folders under /tmp, /run or /dev/shm are fresh tmpfs in the VM.
	for d in "$HERE" "$(cd "$HERE/../../scripts" && pwd -P)" "$(dirname "$PRECOPY")"; do
		case $d in /tmp/* | /run/* | /dev/shm/*) shares+=(--share "$d") ;; esac
	done
	export FAULT_SLOW=$VM_SLOW
	echo "netem: $1; running ${CASES[*]} in a VM (soft-roce-setup/run)"
	exec "$RUN" --method vm --memory $VM_MEMORY_MIB --timeout "$VM_TIMEOUT_S" \
		--module veth --module sch_netem "${shares[@]}" \
		--env FAULT_SLOW --env FAULT_RAM --env ASAN_OPTIONS --env UBSAN_OPTIONS \
		--env LSAN_OPTIONS -- "$HERE/netem.sh" "$PRECOPY" --method host "${CASES[@]}"
}

case $METHOD in
host) run_here ;;
vm) run_in_vm "--method vm" ;;
auto) if host_has_netem; then run_here; else run_in_vm "this kernel has no netem"; fi ;;
esac
