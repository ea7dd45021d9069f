/* SPDX-License-Identifier: MIT */
/*
 * fuzz_dest_stream.c - libFuzzer target: arbitrary bytes as the stream a
 * destination receives on channel 0 (everything after the TCP hello:
 * frames, page runs, engine records), or several channels' streams
 * (feed.h). The destination must end with an error or a verified success
 * - after which its memory must be the memory whose checksum COMPLETE
 * carried - and never crash, hang, read or write out of bounds (ASan), or
 * hit undefined behaviour (UBSan).
 *
 * Built with clang's -fsanitize=fuzzer,address,undefined where available
 * (tests/fuzz/meson.build); seeds are real recorded streams
 * (tests/fuzz/corpus, see record_seeds.c). Run for a bounded number of
 * inputs:  build-clang/tests/fuzz/fuzz_dest_stream -runs=50000 CORPUS_COPY
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "feed.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* success for memory that was not verified is a finding, as a crash */
	if (pc_feed_dest(data, size, NULL, 0) == PC_FEED_CHANGED)
		abort();
	return 0;
}
