# Shared settings for the test-bed scripts (sourced, not run).
# Everything downloaded or built lives in the cache, outside the checkout, so a clean clone reuses it.
TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VFIO_BIND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-bind}
APT_PRIVATE=$CACHE/apt          # private apt lists for suites the host does not list (backports)
DEBS=$CACHE/debs
KERNELS=$CACHE/kernels
mkdir -p "$CACHE" "$DEBS" "$KERNELS"

say() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

# apt-get/apt-cache against bookworm + bookworm-backports without touching /etc/apt, for amd64 and
# arm64 (the arm64 guests' kernels).
apt_private_opts() {
	echo "-o Dir::Etc::SourceList=$APT_PRIVATE/sources.list -o Dir::Etc::SourceParts=/dev/null" \
	     "-o APT::Architectures::=amd64 -o APT::Architectures::=arm64" \
	     "-o Dir::State::Lists=$APT_PRIVATE/lists -o Dir::Cache=$APT_PRIVATE/cache -o Debug::NoLocking=1 -o APT::Sandbox::User=root"
}
apt_private_update() {
	local stamp=$APT_PRIVATE/updated
	# Refresh at most once a day: package versions (and so cache keys) should not drift within a run.
	# Lists fetched with other options (architectures, suites) are refreshed at once.
	if [ -f "$stamp" ] && [ -n "$(find "$stamp" -mmin -1440 2>/dev/null)" ] &&
		[ "$(cat "$stamp")" = "$(apt_private_opts)" ]; then return 0; fi
	mkdir -p "$APT_PRIVATE/lists/partial" "$APT_PRIVATE/cache/archives/partial"
	cat > "$APT_PRIVATE/sources.list" <<SRC
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-backports main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
	say "updating private apt lists (bookworm, bookworm-backports)"
	# shellcheck disable=SC2046
	apt-get $(apt_private_opts) -qq update >&2 || die "apt-get update (private lists) failed"
	apt_private_opts > "$stamp"
}
# apt-cache on the private lists, answered from a memo until the lists are next updated: a query costs
# ~1 s of CPU, and every guest boot asks the same ones to find its kernel.
apt_private_query() { # apt-cache arguments
	local memo
	memo=$APT_PRIVATE/memo/$(printf '%s\n' "$@" | sha256sum | cut -c1-16)
	if [ -f "$memo" ] && [ "$memo" -nt "$APT_PRIVATE/updated" ]; then cat "$memo"; return 0; fi
	mkdir -p "$APT_PRIVATE/memo"
	# shellcheck disable=SC2046
	apt-cache $(apt_private_opts) "$@" > "$memo.$$" || { rm -f "$memo.$$"; return 1; }
	mv "$memo.$$" "$memo" && cat "$memo"
}
# newest version of a package in the private lists, optionally from one suite
apt_private_version() { # pkg [suite]
	apt_private_query madison "$1" | awk -v s="${2:-}" -F' \\| ' \
		's == "" || $3 ~ s { gsub(/ /, "", $2); print $2; exit }'
}
# download pkg=version (of an architecture other than the host's: pkg:arch) into $DEBS (once) and
# print the .deb path
apt_private_fetch() { # pkg[:arch] version
	local pkg=${1%:*} arch="" ver=$2 f
	[ "$1" = "$pkg" ] || arch=${1##*:}
	f=$(ls "$DEBS/${pkg}_${ver//:/%3a}_${arch:-}"*.deb 2>/dev/null | head -1)
	if [ -z "$f" ]; then
		say "downloading $1 $ver"
		# shellcheck disable=SC2046
		(cd "$DEBS" && apt-get $(apt_private_opts) -qq download "$1=$ver" >&2) || die "apt-get download $1=$ver failed"
		f=$(ls "$DEBS/${pkg}_"*"${ver##*:}_${arch:-}"*.deb 2>/dev/null | head -1)
	fi
	[ -n "$f" ] || die "no .deb for $1 $ver in $DEBS"
	echo "$f"
}
