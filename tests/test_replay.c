/* SPDX-License-Identifier: MIT */
/*
 * Streams kept as files, fed to a real destination (tests/fuzz/feed.h):
 * the recorded real migrations (the fuzzer's seeds, tests/fuzz/corpus)
 * must verify, and every hand-made malformed stream (tests/malformed,
 * written by make.py) must be refused with an error that says why, as
 * listed in tests/malformed/EXPECT; one listed as "(verified)" (records
 * that come where the destination must not read them) must verify. A
 * verified stream must leave the memory whose checksum COMPLETE carried
 * (pc_feed_dest() checks).
 *
 *   test_replay SEED-DIR MALFORMED-DIR
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "feed.h"
#include "precopy.h"

static const char *seed_dir, *malformed_dir;

static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	long n;

	if (!f)
		fail_msg("cannot open %s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n > 0 ? (size_t)n : 1);
	assert_non_null(buf);
	if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)
		fail_msg("cannot read %s", path);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static void replay__recorded_streams_verify(void **state)
{
	DIR *d = opendir(seed_dir);
	struct dirent *e;
	unsigned n = 0, bad = 0;

	(void)state;
	assert_non_null(d);
	while ((e = readdir(d))) {
		char path[1024], why[PRECOPY_ERRMSG_MAX];
		size_t len;
		uint8_t *buf;
		int rc;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", seed_dir, e->d_name);
		buf = slurp(path, &len);
		rc = pc_feed_dest(buf, len, why, sizeof(why));
		free(buf);
		n++;
		if (rc) {
			bad++;
			printf("FAIL %s: %s (%d)\n", e->d_name, why, rc);
		} else {
			printf("ok   %s: verified\n", e->d_name);
		}
	}
	closedir(d);
	assert_true(n > 0);
	assert_int_equal(bad, 0);
}

static void replay__malformed_streams_refused(void **state)
{
	char path[1024], line[512];
	unsigned n = 0, bad = 0;
	FILE *ex;

	(void)state;
	snprintf(path, sizeof(path), "%s/EXPECT", malformed_dir);
	ex = fopen(path, "r");
	assert_non_null(ex);
	while (fgets(line, sizeof(line), ex)) {
		char *tab = strchr(line, '\t'), why[PRECOPY_ERRMSG_MAX];
		size_t len;
		uint8_t *buf;
		int rc;

		if (line[0] == '#' || !tab)
			continue;
		*tab++ = '\0';
		tab[strcspn(tab, "\n")] = '\0';
		snprintf(path, sizeof(path), "%s/%s", malformed_dir, line);
		buf = slurp(path, &len);
		rc = pc_feed_dest(buf, len, why, sizeof(why));
		free(buf);
		n++;
		if (!strcmp(tab, "(verified)")) {
			if (rc) {
				bad++;
				printf("FAIL %s: %s (%d), expected to verify\n", line, why, rc);
			} else {
				printf("ok   %s: verified, memory as verified\n", line);
			}
		} else if (rc == 0) {
			bad++;
			printf("FAIL %s: accepted as a verified migration\n", line);
		} else if (!strstr(why, tab)) {
			bad++;
			printf("FAIL %s: error '%s' does not mention '%s'\n", line, why, tab);
		} else {
			printf("ok   %s: %s\n", line, why);
		}
	}
	fclose(ex);
	assert_true(n > 0);
	assert_int_equal(bad, 0);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(replay__recorded_streams_verify),
		cmocka_unit_test(replay__malformed_streams_refused),
	};

	if (argc != 3) {
		fprintf(stderr, "usage: test_replay SEED-DIR MALFORMED-DIR\n");
		return 2;
	}
	seed_dir = argv[1];
	malformed_dir = argv[2];
	return cmocka_run_group_tests(tests, NULL, NULL);
}
