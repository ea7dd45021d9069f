// SPDX-License-Identifier: MIT
// test_cxx.cpp - precopy.h compiles as C++ (warnings as errors) and its
// calls link from C++ against the shared library: the extern "C" block,
// no C-only constructs in the header.
#include <precopy.h>

#include <cstdio>
#include <cstring>

int main()
{
	struct precopy_params p;
	struct precopy_session *s = nullptr;
	struct precopy_stats st;
	char why[128];

	if (precopy_params_init(&p) != 0 || precopy_params_check(&p, why, sizeof(why)) != 0)
		return 1;
	p.downtime_limit_ms = 100;
	p.on_limit = PRECOPY_ON_LIMIT_ABORT;
	precopy_callbacks cb = {};
	cb.progress = [](void *, const precopy_stats *) {};
	if (precopy_new(PRECOPY_ROLE_SOURCE, &p, &cb, &s) != 0 || !s)
		return 1;
	if (precopy_query(s, &st) != 0 || st.status != PRECOPY_STATUS_NONE)
		return 1;
	std::printf("C++: status %s, dirty mode %s\n", precopy_status_name(st.status),
		    precopy_dirty_mode_name(PRECOPY_DIRTY_EXTERNAL));
	if (precopy_delete(&s) != 0 || s != nullptr)
		return 1;
	return 0;
}
