#!/usr/bin/env bash
# run_fuzz.sh FUZZER SEED-DIR RUNS [SECONDS] - a bounded libFuzzer run on a
# scratch copy of the seeds (new inputs it finds stay out of the source
# tree): RUNS inputs, or SECONDS of fuzzing if that comes first (default
# 300), so that a slower parser cannot push CI past its time.
# Crashes are kept in $PRECOPY_FUZZ_ARTIFACTS (default: a temp dir) and
# printed; any crash, leak or sanitizer report fails the test.
set -euo pipefail
fuzzer=$1 seeds=$2 runs=$3 secs=${4:-300}
work=$(mktemp -d /tmp/precopy-fuzz.XXXXXX)
art=${PRECOPY_FUZZ_ARTIFACTS:-$work/artifacts}
mkdir -p "$work/corpus" "$art"
cp "$seeds"/* "$work/corpus/"
trap 'rm -rf "$work/corpus"' EXIT
start=$(date +%s.%N)
set +e
"$fuzzer" -runs="$runs" -max_total_time="$secs" -max_len=262144 -timeout=10 -rss_limit_mb=2048 \
	-artifact_prefix="$art/" -print_final_stats=1 "$work/corpus" 2>"$work/log"
rc=$?
set -e
end=$(date +%s.%N)
grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)|ERROR|SUMMARY|Done" "$work/log" || true
echo "fuzz: at most $runs runs or $secs s, done in $(echo "$end - $start" | bc 2>/dev/null || echo "?") s, exit $rc"
if [ $rc -ne 0 ]; then
	tail -n 60 "$work/log"
	ls -l "$art"
	exit 1
fi
