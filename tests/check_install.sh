#!/bin/sh
# check_install.sh BUILD_DIR CC [SANITIZE] - install the build into a scratch folder
# (meson install --destdir) and use it as an outside project would:
#  - the shared library exports every function of precopy.h and nothing
#    else, each under a version node (PRECOPY_0.1 to 0.3), and has the
#    soname libprecopy.so.0; its newest node is PRECOPY_VERSION_MAJOR.MINOR
#    of precopy.h; precopy_query@PRECOPY_0.1 stays for programs
#    built against 0.1 and fills the 0.1 struct, not a byte more;
#  - a program built with `pkg-config --cflags --libs precopy` against the
#    installed header links the shared library and migrates memory;
#  - the same program links the installed static library;
#  - the header, the CLI and the man pages are installed.
# SANITIZE is the build's b_sanitize ("none", "address,undefined", ...): a
# sanitized library needs its runtime in the program, so the consumers are
# built with the same -fsanitize.
set -eu
build=$1
cc=$2
san=
case "${3:-none}" in none | '') ;; *) san="-fsanitize=$3" ;; esac
src=$(cd "$(dirname "$0")" && pwd)

dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT INT TERM
meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >/dev/null

pc=$(find "$dest" -name precopy.pc | head -n1)
[ -n "$pc" ] || { echo "no precopy.pc installed"; exit 1; }
# The header's version names the library file and its newest version node.
hdr="$src/../include/precopy.h"
api=$(sed -n 's/^#define PRECOPY_VERSION_MAJOR \([0-9]*\)$/\1/p' "$hdr").$(sed -n \
	's/^#define PRECOPY_VERSION_MINOR \([0-9]*\)$/\1/p' "$hdr")
lib=$(find "$dest" -name "libprecopy.so.$api.*" | head -n1)
[ -n "$lib" ] || { echo "no libprecopy.so.$api.* installed (precopy.h says $api)"; exit 1; }
libdir=$(dirname "$lib")
for f in precopy.h libprecopy.a libprecopy.so.0 libprecopy.so bin/precopy \
	 man1/precopy.1 man3/precopy.3 man3/precopy_migrate.3 man3/precopy_delete.3 \
	 man3/precopy_set_tls.3 man3/precopy_add_region_fd.3; do
	find "$dest" -path "*/$f" | grep -q . || { echo "not installed: $f"; exit 1; }
done
echo "installed: $(cd "$dest" && find . -type f -o -type l | sort | tr '\n' ' ')"

soname=$(objdump -p "$lib" | awk '$1 == "SONAME" { print $2 }')
[ "$soname" = libprecopy.so.0 ] || { echo "soname is '$soname'"; exit 1; }
bad=$(nm -D --defined-only "$lib" | awk '$2 != "A" { print $3 }' |
	grep -v '^precopy_[a-z_]*@@PRECOPY_0\.[123]$' | grep -vx 'precopy_query@PRECOPY_0\.1' || true)
[ -z "$bad" ] || { echo "exported besides precopy_*@@PRECOPY_0.1..0.3: $bad"; exit 1; }
newest=$(objdump -p "$lib" | awk '/^Version definitions:/ { d = 1; next }
	d && NF == 0 { d = 0 } d && $4 ~ /^PRECOPY_/ { v = $4 } END { print v }')
[ "$newest" = "PRECOPY_$api" ] ||
	{ echo "newest version node '$newest', precopy.h says $api"; exit 1; }
nm -D --defined-only "$lib" | grep -q ' T precopy_query@PRECOPY_0\.1$' ||
	{ echo "precopy_query@PRECOPY_0.1 is gone: programs built against 0.1 would not load"; exit 1; }
# Inline wrappers (static inline) are the header's own, not exports.
for f in $(sed -n 's/^[a-z][a-z_ ]*[ *]\(precopy_[a-z0-9_]*\)(.*/\1/p' "$src/../include/precopy.h" |
	grep -vx "$(sed -n 's/^static inline [a-z_ ]*[ *]\(precopy_[a-z0-9_]*\)(.*/\1/p' \
		"$src/../include/precopy.h")"); do
	nm -D --defined-only "$lib" | grep -q " T $f@@PRECOPY_" ||
		{ echo "not exported: $f (engine/libprecopy.map)"; exit 1; }
done
echo "exports: $(nm -D --defined-only "$lib" | awk '$2 == "T" { sub(/.*@@/, "", $3); print $3 }' |
	sort | uniq -c | awk '{ printf "%s%d at %s", (NR > 1 ? ", " : ""), $1, $2 }'), all precopy_*"

export PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$dest"
cflags=$(pkg-config --cflags precopy)
libs=$(pkg-config --libs precopy)
echo "pkg-config: $cflags $libs"

# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror $san $cflags "$src/installed/consumer.c" $libs \
	-pthread -o "$dest/consumer-shared"
objdump -p "$dest/consumer-shared" | grep -q 'NEEDED *libprecopy.so.0' ||
	{ echo "consumer does not link libprecopy.so.0"; exit 1; }
# Its calls are 0.1's, but precopy_query() is now an inline over
# precopy_query_sized() and it asks precopy_version() (both 0.3): it needs
# those versions and no other.
needs=$(objdump -p "$dest/consumer-shared" | grep -o 'PRECOPY_[0-9.]*' | sort -u | tr '\n' ' ')
[ "$needs" = "PRECOPY_0.1 PRECOPY_0.3 " ] ||
	{ echo "consumer needs versions '$needs', not PRECOPY_0.1 and 0.3"; exit 1; }
LD_LIBRARY_PATH="$libdir" "$dest/consumer-shared"

# A program built against 0.1 binds precopy_query@PRECOPY_0.1.
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror $san $cflags -DCONSUMER_OLD_QUERY \
	"$src/installed/consumer.c" $libs -pthread -o "$dest/consumer-old"
objdump -T "$dest/consumer-old" | grep -q '(PRECOPY_0\.1) *precopy_query$' ||
	{ echo "consumer-old does not bind precopy_query@PRECOPY_0.1"; exit 1; }
LD_LIBRARY_PATH="$libdir" "$dest/consumer-old"

# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror $san $cflags "$src/installed/consumer.c" \
	"$libdir/libprecopy.a" $(pkg-config --libs --static precopy | sed 's/-lprecopy//') \
	-pthread -o "$dest/consumer-static"
if objdump -p "$dest/consumer-static" | grep -q 'NEEDED *libprecopy'; then
	echo "static consumer still needs the shared library"; exit 1
fi
"$dest/consumer-static"
