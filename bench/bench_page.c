/* SPDX-License-Identifier: MIT */
/*
 * precopy-bench-page: what zero-page detection and checksums cost per
 * page, against the time one page takes on the link, measured in the same
 * run (a socket send loop over TCP loopback, or --link RATE).
 *
 *   precopy-bench-page [--mem SIZE] [--link RATE] [--json]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "page.h"

#define PAGE 4096u

static volatile uint64_t sink;

int main(int argc, char **argv)
{
	uint64_t mem = 256ull << 20, link = 0;
	bool json = false;
	uint8_t *data, *zero;
	size_t n;
	double t0, ns_zero_data, ns_zero_zero, ns_hash, ns_scan, page_ns, rate;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mem") && i + 1 < argc &&
		    !pc_cli_parse_size(argv[++i], &mem) && mem >= PAGE)
			continue;
		if (!strcmp(argv[i], "--link") && i + 1 < argc && !pc_cli_parse_size(argv[++i], &link))
			continue;
		if (!strcmp(argv[i], "--json")) {
			json = true;
			continue;
		}
		fprintf(stderr, "usage: precopy-bench-page [--mem SIZE] [--link RATE] [--json]\n");
		return 2;
	}
	mem -= mem % PAGE;
	n = mem / PAGE;
	data = mmap(NULL, mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	zero = mmap(NULL, mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (data == MAP_FAILED || zero == MAP_FAILED)
		return 1;
	srand(1);
	for (size_t i = 0; i < mem; i += 8) {
		uint64_t v = ((uint64_t)rand() << 32) | (uint64_t)rand();

		memcpy(data + i, &v, 8);
	}
	memset(zero, 0, mem); /* real zero pages, not the shared zero page */

	t0 = pcb_now();
	for (size_t i = 0; i < n; i++)
		sink += pc_page_is_zero(data + i * PAGE);
	ns_zero_data = (pcb_now() - t0) / n * 1e9;
	t0 = pcb_now();
	for (size_t i = 0; i < n; i++)
		sink += pc_page_is_zero(zero + i * PAGE);
	ns_zero_zero = (pcb_now() - t0) / n * 1e9;
	t0 = pcb_now();
	for (size_t i = 0; i < n; i++)
		sink += pc_page_hash(data + i * PAGE);
	ns_hash = (pcb_now() - t0) / n * 1e9;
	t0 = pcb_now();
	for (size_t i = 0; i < n; i++) {
		uint64_t h;

		sink += pc_page_scan(data + i * PAGE, &h) + h;
	}
	ns_scan = (pcb_now() - t0) / n * 1e9;
	rate = link ? (double)link : pcb_loopback_rate(data, NULL, mem);
	page_ns = PAGE / rate * 1e9;

	if (json) {
		printf("{\"bench\":\"page\",\"pages\":%zu,\"link_MiBps\":%.1f,\"link_ns_per_page\":%.1f,"
		       "\"zero_test_data_page_ns\":%.1f,\"zero_test_zero_page_ns\":%.1f,"
		       "\"hash_ns\":%.1f,\"scan_ns\":%.1f}\n",
		       n, rate / 1048576, page_ns, ns_zero_data, ns_zero_zero, ns_hash, ns_scan);
		return 0;
	}
	printf("# %zu pages (%llu MiB, from memory, not cache); link %s: %.1f MiB/s = %.1f ns per 4 KiB page\n",
	       n, (unsigned long long)(mem >> 20), link ? "given" : "measured (TCP loopback send loop)",
	       rate / 1048576, page_ns);
	printf("%-44s %10s %12s\n", "#what", "ns/page", "% of link");
	printf("%-44s %10.1f %11.1f%%\n", "zero test, page with data (early exit)", ns_zero_data,
	       100 * ns_zero_data / page_ns);
	printf("%-44s %10.1f %11.1f%%\n", "zero test, zero page (reads it all)", ns_zero_zero,
	       100 * ns_zero_zero / page_ns);
	printf("%-44s %10.1f %11.1f%%\n", "checksum alone", ns_hash, 100 * ns_hash / page_ns);
	printf("%-44s %10.1f %11.1f%%\n", "checksum + zero test in one pass (engine)", ns_scan,
	       100 * ns_scan / page_ns);
	printf("zero detection adds %.1f ns to the engine's pass over a data page (%.1f%% of the link's page time; goal < 10%%)\n",
	       ns_scan > ns_hash ? ns_scan - ns_hash : 0.0,
	       100 * (ns_scan > ns_hash ? ns_scan - ns_hash : 0.0) / page_ns);
	return 0;
}
