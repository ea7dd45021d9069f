#!/bin/sh
# rdma-run.sh RUN BINARY [ARGS...] - run a test binary with an RDMA device:
# RUN is soft-roce-setup/run (a Soft-RoCE device, in a throwaway VM on
# machines whose kernel has no RDMA). Every "@ADDR@" in ARGS becomes the
# device's address, which is only known inside (PRECOPY_RDMA_ADDR).
# Exit status: the binary's; 77 (skipped) when no device can be had.
set -eu
if [ "${1:-}" = --inner ]; then
	shift
	bin=$1
	shift
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
exec "$run" --timeout "${PRECOPY_RDMA_VM_TIMEOUT:-600}" -- "$(cd "$(dirname "$0")" && pwd)/rdma-run.sh" --inner "$@"
