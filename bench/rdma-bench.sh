#!/bin/sh
# rdma-bench.sh [BUILD_DIR] [-- BENCH_ARGS...] - precopy's RDMA transport vs
# ib_write_bw (perftest) on one Soft-RoCE device in one run (a throwaway VM
# where the host kernel has no RDMA), with CPU per GiB beside TCP's.
# Exit 77 when no RDMA device can be had.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
[ $# -gt 0 ] && shift
[ "${1:-}" = -- ] && shift
case $build in /*) ;; *) build=$(pwd)/$build ;; esac
exec "$here/soft-roce-setup/run" --timeout "${PRECOPY_RDMA_VM_TIMEOUT:-900}" -- \
	"$build/bench/precopy-bench-rdma" "$@"
