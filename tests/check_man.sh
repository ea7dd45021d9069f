#!/bin/sh
# check_man.sh SRCDIR PRECOPY [BUILD_DIR] - the manual pages render without
# a warning (mandoc -T lint, groff -ww, man -l, whichever are installed;
# skipped if none is), and the command's flags are all documented: every
# long option `precopy help` prints appears in man/precopy.1 and in
# README.md. With BUILD_DIR, the pages are installed from it (meson install
# --tags man into a scratch folder) and every function include/precopy.h
# declares must have a page or link in man3 whose NAME names it.
set -eu
src=$1
precopy=$2
build=${3:-}
status=0
checked=""

for page in "$src"/man/*.[1-9]; do
	if command -v mandoc >/dev/null; then
		out=$(mandoc -T lint -W warning "$page" 2>&1) || true
		[ -z "$out" ] || { echo "$out"; status=1; }
		checked="$checked mandoc"
	fi
	if command -v groff >/dev/null; then
		out=$(groff -man -ww -z "$page" 2>&1) || true
		[ -z "$out" ] || { echo "groff: $page: $out"; status=1; }
		checked="$checked groff"
	fi
	if command -v man >/dev/null; then
		out=$(MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null) ||
			{ echo "man -l $page failed: $out"; status=1; }
		[ -z "$out" ] || { echo "man: $page: $out"; status=1; }
		checked="$checked man"
	fi
	for sec in NAME SYNOPSIS DESCRIPTION; do
		grep -q "^\.SH $sec" "$page" || { echo "$page: no $sec section"; status=1; }
	done
	case $page in *.3)
		for sec in "RETURN VALUE" ERRORS; do
			grep -q "^\.SH $sec" "$page" || { echo "$page: no $sec section"; status=1; }
		done ;;
	esac
done
[ -n "$checked" ] || { echo "skipped: none of mandoc, groff, man is installed"; exit 77; }
echo "rendered with:$(echo "$checked" | tr ' ' '\n' | sort -u | tr '\n' ' ')"

# Every flag of the command, in the man page and in the README.
flags=$("$precopy" help | grep -o -- '--[a-z][a-z-]*' | sort -u)
n=0
for f in $flags; do
	n=$((n + 1))
	roff=$(printf '%s' "$f" | sed 's/-/\\\\-/g')
	grep -q -- "$roff" "$src/man/precopy.1" || { echo "precopy.1 lacks $f"; status=1; }
	name=${f#--}
	grep -q -- "$name" "$src/README.md" || { echo "README.md lacks $f"; status=1; }
done
# A help text that lists no flags (or lost most of them) would check nothing.
[ "$n" -ge 30 ] || { echo "'precopy help' lists only $n flags: is the help text broken?"; status=1; }
echo "$n flags of 'precopy help' checked against precopy.1 and README.md"

# Every public function: an installed page or link that names it.
if [ -n "$build" ]; then
	dest=$(mktemp -d)
	trap 'rm -rf "$dest"' EXIT INT TERM
	meson install -C "$build" --destdir "$dest" --no-rebuild --quiet --tags man >/dev/null
	man3=$(find "$dest" -type d -name man3 | head -n1)
	[ -n "$man3" ] || { echo "no man3 folder installed"; exit 1; }
	funcs=$(sed -n 's/^[a-z][a-z_ ]*[ *]\(precopy_[a-z0-9_]*\)(.*/\1/p' \
		"$src/include/precopy.h" | sort -u)
	[ -n "$funcs" ] || { echo "no function found in include/precopy.h"; exit 1; }
	n=0
	for f in $funcs; do
		n=$((n + 1))
		page=$man3/$f.3
		if [ ! -e "$page" ]; then
			echo "$f: no installed page or link (man/meson.build)"
			status=1
			continue
		fi
		# the NAME section (up to SYNOPSIS) of the page the link resolves to
		name=$(sed -n '/^\.SH NAME/,/^\.SH/p' "$page" | sed 's/\\-/-/g')
		printf '%s\n' "$name" | grep -qw -- "$f" ||
			{ echo "$f: $(basename "$(readlink -f "$page")") does not name it"; status=1; }
	done
	echo "$n functions of precopy.h checked against the installed man3 pages"
fi
exit $status
