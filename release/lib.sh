# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# Shared by release/release.sh and release/ci.sh: pinned tools (release/tools.lock) and
# loopback registries. Source it; it defines functions and a few variables only.

release_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$release_dir")
tools_cache=${XDG_CACHE_HOME:-$HOME/.cache}/kms-release

say() { echo "release: $*" >&2; }
die() {
	say "error: $*"
	exit 1
}

# lock_value NAME WHAT: the pinned value from release/tools.lock.
lock_value() { awk -v n="$1" -v w="$2" '$1 == n && $3 == w { print $4 }' "$release_dir/tools.lock"; }
lock_version() { awk -v n="$1" '$1 == n { print $2; exit }' "$release_dir/tools.lock"; }

sha256() { sha256sum <"$1" | cut -c1-64; }

# Sets COSIGN to a cosign binary built from the pinned source and checked against the pinned
# sha256; builds it once into the cache (about 11 min on 2 cores, 1.7 GB of memory).
ensure_cosign() {
	local version goversion platform want dir bin sum tmp got
	version=$(lock_version cosign)
	goversion=$(go env GOVERSION)
	platform=$(go env GOOS)/$(go env GOARCH)
	want=$(lock_value cosign "binary-sha256:$goversion:$platform")
	[[ -n $want ]] || die "release/tools.lock pins no cosign $version build for $goversion $platform (see its header)"
	dir=$tools_cache/cosign-$version
	bin=$dir/cosign
	COSIGN=$bin
	[[ -x $bin && $(sha256 "$bin") == "$want" ]] && return 0
	sum=$(cd / && GOFLAGS='' go mod download -json "github.com/sigstore/cosign/v3@$version" | sed -nE 's/^\t"Sum": "(.*)",$/\1/p')
	[[ $sum == "$(lock_value cosign module-h1)" ]] ||
		die "cosign $version from the Go module proxy has $sum, release/tools.lock pins $(lock_value cosign module-h1)"
	say "building cosign $version from source into $dir (about 11 min on 2 cores; once)"
	mkdir -p "$dir"
	tmp=$(mktemp -d "$dir/build.XXXXXX")
	(cd / && GOBIN=$tmp CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local \
		nice -n 19 go install -trimpath "github.com/sigstore/cosign/v3/cmd/cosign@$version") ||
		die "go install cosign@$version failed"
	got=$(sha256 "$tmp/cosign")
	if [[ $got != "$want" ]]; then
		rm -rf "$tmp"
		die "cosign $version built with $goversion has sha256 $got, release/tools.lock pins $want"
	fi
	mv "$tmp/cosign" "$bin"
	rmdir "$tmp"
}

# Sets REGISTRY_BIN to Debian's docker-registry, fetched with apt's own configuration and
# checked against the pinned sha256, unpacked into the cache.
ensure_registry() {
	local version arch want dir tmp deb
	version=$(lock_version docker-registry)
	arch=$(dpkg --print-architecture)
	want=$(lock_value docker-registry "deb-sha256:$arch")
	[[ -n $want ]] || die "release/tools.lock pins no docker-registry for $arch"
	dir=$tools_cache/docker-registry-$version-$arch
	REGISTRY_BIN=$dir/usr/bin/docker-registry
	[[ -x $REGISTRY_BIN ]] && return 0
	tmp=$(mktemp -d)
	if ! (cd "$tmp" && apt-get download -q "docker-registry=$version" >/dev/null 2>&1); then
		say "apt-get download docker-registry=$version failed; running apt-get update"
		apt-get update -q >/dev/null 2>&1 || true
		(cd "$tmp" && apt-get download -q "docker-registry=$version" >/dev/null 2>&1) ||
			die "apt-get download docker-registry=$version failed"
	fi
	deb=$(echo "$tmp"/*.deb)
	[[ $(sha256 "$deb") == "$want" ]] || die "docker-registry_$version has sha256 $(sha256 "$deb"), pinned $want"
	rm -rf "$dir.partial"
	dpkg-deb -x "$deb" "$dir.partial"
	rm -rf "$tmp" "$dir"
	mv "$dir.partial" "$dir"
}

# start_registry DIR [tls]: runs a registry bound to 127.0.0.1 on a free port, storing in
# DIR; prints 127.0.0.1:PORT. With "tls" it serves HTTPS, as a site's registry would, with a
# fresh self-signed certificate for 127.0.0.1 in DIR/ca.crt (trust it with
# SSL_CERT_FILE=DIR/ca.crt). The caller stops it with stop_registry DIR.
start_registry() {
	local dir=$1 tls=${2:-} port tls_config=''
	mkdir -p "$dir/data"
	if [[ $tls == tls ]]; then
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
			-addext subjectAltName=IP:127.0.0.1 -keyout "$dir/tls.key" -out "$dir/ca.crt" 2>/dev/null ||
			die "openssl could not make a certificate for the registry"
		tls_config=$(printf '  tls:\n    certificate: %s\n    key: %s' "$dir/ca.crt" "$dir/tls.key")
	fi
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		port=$((20000 + RANDOM % 20000))
		cat >"$dir/config.yml" <<-CONFIG
			version: 0.1
			log:
			  level: warn
			storage:
			  filesystem:
			    rootdirectory: $dir/data
			http:
			  addr: 127.0.0.1:$port
			$tls_config
		CONFIG
		"$REGISTRY_BIN" serve "$dir/config.yml" >"$dir/log" 2>&1 &
		echo $! >"$dir/pid"
		for _ in $(seq 50); do
			if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
				echo "127.0.0.1:$port"
				return 0
			fi
			kill -0 "$(<"$dir/pid")" 2>/dev/null || break
			sleep 0.1
		done
		stop_registry "$dir"
	done
	die "could not start a registry (see $dir/log)"
}

stop_registry() {
	local pid
	pid=$(cat "$1/pid" 2>/dev/null) || return 0
	rm -f "$1/pid"
	kill "$pid" 2>/dev/null || return 0
	# Not always our child (started from a command substitution): poll, do not wait.
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
}

# cosign's --allow-http-registry only for loopback registries.
cosign_registry_flags() { # REFERENCE
	case $1 in
	127.* | localhost:* | localhost/* | \[::1\]*) echo --allow-http-registry ;;
	esac
}

# The Bazel that tools/bazel runs, for the provenance: Debian's build calls itself a
# "development version", so name the package tools/bazel pins instead.
bazel_version() {
	local r
	r=$("$repo_root/tools/bazel" info release 2>/dev/null) || r=unknown
	if [[ $r == "development version" ]]; then
		echo "Debian bazel-bootstrap $(sed -n 's/^readonly BAZEL_DEB_VERSION=//p' "$repo_root/tools/bazel")"
	else
		echo "${r#release }"
	fi
}
