#!/bin/sh
# rdma-run.sh RUN BINARY [ARGS...] - run a test binary with an RDMA device:
# RUN is soft-roce-setup/run (a Soft-RoCE device, in a throwaway VM on
# machines whose kernel has no RDMA). Every "@ADDR@" in ARGS becomes the
# device's address, which is only known inside (PRECOPY_RDMA_ADDR).
# Exit status: the binary's; 77 (skipped) when no device can be had, or 1
# with PRECOPY_REQUIRE_RDMA=1 (CI: a run without RDMA must not pass).
set -eu
if [ "${1:-}" = --inner ]; then
	shift
	bin=$1
	shift
	if [ -z "${PRECOPY_RDMA_ADDR:-}" ]; then
		if [ "${PRECOPY_REQUIRE_RDMA:-}" = 1 ]; then
			echo "rdma-run.sh: the device has no IPv4 address (PRECOPY_RDMA_ADDR), and PRECOPY_REQUIRE_RDMA=1: failed" >&2
			exit 1
		fi
		echo "rdma-run.sh: the device has no IPv4 address (PRECOPY_RDMA_ADDR): skipped"
		exit 77
	fi
	n=$#
	while [ "$n" -gt 0 ]; do
		a=$1
		shift
		case $a in *@ADDR@*) a="${a%%@ADDR@*}${PRECOPY_RDMA_ADDR}${a#*@ADDR@}" ;; esac
		set -- "$@" "$a"
		n=$((n - 1))
	done
	exec "$bin" "$@"
fi
run=$1
shift
rc=0
"$run" --timeout "${PRECOPY_RDMA_VM_TIMEOUT:-850}" -- "$(cd "$(dirname "$0")" && pwd)/rdma-run.sh" --inner "$@" || rc=$?
if [ "$rc" -eq 77 ] && [ "${PRECOPY_REQUIRE_RDMA:-}" = 1 ]; then
	echo "rdma-run.sh: skipped (see above), but PRECOPY_REQUIRE_RDMA=1 requires RDMA: failed" >&2
	exit 1
fi
exit "$rc"
