#!/usr/bin/env bash
# The slow release checks, for .ci/run (cosign is built once and cached); docs/release.md
# ("CI") lists them and gives the measured time:
#   1. reproducibility: two stamped builds of HEAD in directories of different names and
#      depths, with no outputs and no action cache in common, give the same image index
#      digest and FIPS image (image_fips) digest (printed, with each platform's): one from an
#      empty output base in a fresh clone, one in the work tree (its output base is empty
#      too in a fresh CI; the steps below reuse that build);
#   2. names: an unstamped build is "devel" in the image, in `podman load` and in
#      `kms --version`; a stamped one is its version in all three;
#   3. metadata: SOURCE_DATE_EPOCH reaches the image; licenses annotation and SBOM license;
#   4. release/release.sh against a loopback registry; the index pulled back by digest is
#      byte-equal to the build;
#   5. both images run: //release:image_test (amd64) and //release:image_test_arm64 (under
#      qemu-user) unpack them, run the daemon with chroot --userspec=65532:65532 and the
#      bundled kek-file, and call KMS v1beta1 and v2 over its socket; so does
#      //release:image_fips_test for the FIPS image, whose kms says the certified module is on;
#      //src/cmd/kms:kms_fips_test runs the daemon's tests against the FIPS build;
#   6. cosign: signature, SBOM and SLSA provenance verify and fail with a wrong key; the
#      provenance names HEAD, the build command and the pushed digest;
#   7. the air-gap sequence of docs/airgap.md, taken from the bundle's own copy, verifies
#      and loads the bundle into a TLS registry on loopback, then verifies there; it fails on
#      a changed binary, a re-summed bundle and an extra file;
#   8. the .deb and .rpm of both architectures (step 1 builds them twice too: byte-equal):
#      lintian and rpmlint with no errors, rpm -K, file lists and sizes, and the amd64 ones
#      installed, upgraded, removed and purged in a Debian root with the keyring left
#      intact (release/packages TestInstall).
# Needs root (tools/bazel's chroot, the image tests) and the network to the Go module proxy
# and apt mirror. Downloads are shared by every output base (the Go module cache and
# Bazel's repository cache), nothing else. Exits non-zero if any check fails. On any exit
# it stops the registries and the Bazel servers it started and removes its temporary
# directory.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work=$(mktemp -d /tmp/kms-release-ci.XXXXXX)
passed=0 failed=0
output_bases=()
# The workspace's own Bazel server (tools/bazel's default output base): shut down at the
# end only if this script is what started it.
main_ob=${XDG_CACHE_HOME:-$HOME/.cache}/kms-bazel/output/$(realpath "$repo_root" | tr -d "\n" | md5sum | cut -c1-32)
main_server_up() { kill -0 "$(cat "$main_ob/server/server.pid.txt" 2>/dev/null)" 2>/dev/null; }
main_server_was_up=false
main_server_up && main_server_was_up=true
cleanup() {
	local ob d
	for d in "$work"/registry-*; do
		[[ -d $d ]] && stop_registry "$d"
	done
	for ob in "${output_bases[@]}"; do
		"$repo_root/tools/bazel" --output_base="$ob" shutdown >/dev/null 2>&1 || true
	done
	if ! $main_server_was_up && main_server_up; then
		"$repo_root/tools/bazel" shutdown >/dev/null 2>&1 || true
	fi
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
started=$SECONDS
phase() { echo "release/ci: --- $* ($((SECONDS - started)) s, load $(cut -d' ' -f1-3 /proc/loadavg))"; }

check() { # NAME COMMAND...: runs a check, counts it, never stops the run
	local name=$1
	shift
	if "$@"; then
		echo "release/ci: PASS $name"
		passed=$((passed + 1))
	else
		echo "release/ci: FAIL $name"
		failed=$((failed + 1))
	fi
}
# Attestation payloads are whole documents: kept out of the log, errors are not.
quiet() { "$@" >/dev/null; }

cd "$repo_root"
for tool in jq podman openssl lintian rpm rpmlint; do
	command -v "$tool" >/dev/null || die "release/ci.sh needs $tool: apt-get install $tool"
done
ensure_cosign
ensure_registry
flags=(--stamp)

# blob LAYOUT DIGEST: the blob's path in an OCI layout.
blob() { echo "$1/blobs/sha256/${2#sha256:}"; }
# index_digest LAYOUT: the digest of the layout's one entry (the index).
index_digest() { jq -r '.manifests[0].digest' "$1/index.json"; }
# platforms LAYOUT: "linux/ARCH DIGEST" of each image of the index.
platforms() { jq -r '.manifests[] | "\(.platform.os)/\(.platform.architecture) \(.digest)"' "$(blob "$1" "$(index_digest "$1")")"; }
# annotation LAYOUT KEY: an annotation of the index.
annotation() { jq -r --arg k "$2" '.annotations[$k]' "$(blob "$1" "$(index_digest "$1")")"; }

# 1. Two builds of HEAD, in directories of different names and depths and with output bases
# that share nothing: a clean one in a fresh clone, and the work tree's own, which the steps
# below reuse. Both are of the commit that was HEAD when this started, whatever is
# committed meanwhile; a work tree that differs from it gets a second clean clone instead.
head=$(git rev-parse HEAD)
packages=(//release:packages_amd64 //release:packages_arm64)
index_build() { # DIR SUMS [STARTUP OPTION]: prints the index digest and the FIPS image's, and
	# each platform's on stderr; writes the packages' sha256sum lines to SUMS
	local dir=$1 sums=$2 out
	shift 2
	(cd "$dir" && nice -n 10 tools/bazel "$@" build "${flags[@]}" //release:image //release:image_fips "${packages[@]}" >&2 &&
		out=$(tools/bazel "$@" info "${flags[@]}" bazel-bin 2>/dev/null)/release &&
		platforms "$out/image" | sed 's/^/release\/ci:   /' >&2 &&
		platforms "$out/image_fips" | sed 's/^/release\/ci:   fips /' >&2 &&
		(cd "$out" && sha256sum packages_*/*) >"$sums" &&
		echo "$(cat "$out/image.digest") $(cat "$out/image_fips.digest")")
}
clean_build() { # DIR OUTPUT_BASE SUMS: index_build in a fresh clone of HEAD
	local dir=$1 ob=$2 sums=$3
	mkdir -p "$(dirname "$dir")"
	git clone -q --no-hardlinks "$repo_root" "$dir" && git -C "$dir" checkout -q "$head" &&
		index_build "$dir" "$sums" --output_base="$ob" &&
		(cd "$dir" && tools/bazel --output_base="$ob" shutdown >/dev/null 2>&1)
}
# (Registered here, not in clean_build: that runs in a subshell.)
output_bases+=("$work/ob-a" "$work/ob-b")
phase "reproducibility: a clean build of ${head:0:7}"
where_a=$work/a/kms
digests=$(clean_build "$where_a" "$work/ob-a" "$work/packages-a.sums") || digests=
read -r digest_a fips_a <<<"$digests"
if [[ -z $(git status --porcelain) && $(git rev-parse HEAD) == "$head" ]]; then
	where_b=$repo_root
	phase "reproducibility: the work tree's build"
	digests=$(index_build "$where_b" "$work/packages-b.sums") || digests=
else
	where_b=$work/bb/cc/kms-copy
	phase "reproducibility: the work tree is not ${head:0:7}: a second clean build"
	digests=$(clean_build "$where_b" "$work/ob-b" "$work/packages-b.sums") || digests=
fi
read -r digest_b fips_b <<<"$digests"
phase "reproducibility: both built"
echo "release/ci: reproducibility: build 1 ($where_a): index $digest_a, FIPS image $fips_a"
echo "release/ci: reproducibility: build 2 ($where_b): index $digest_b, FIPS image $fips_b"
check "reproducible image index digest" test -n "$digest_a" -a "$digest_a" = "$digest_b"
check "reproducible FIPS image index digest" test -n "$fips_a" -a "$fips_a" = "$fips_b"
for f in packages-a packages-b; do
	sed "s/^/release\/ci: $f: /" "$work/$f.sums" 2>/dev/null || true
done
check "reproducible packages (4 files, byte-equal)" \
	test "$(wc -l <"$work/packages-a.sums" 2>/dev/null)" = 4 -a -n "$(cat "$work/packages-a.sums" 2>/dev/null)" \
	-a "$(cat "$work/packages-a.sums" 2>/dev/null)" = "$(cat "$work/packages-b.sums" 2>/dev/null)"

bin=$(tools/bazel info "${flags[@]}" bazel-bin 2>/dev/null)
# podman_name ARCHIVE: the names `podman load` gives the archive, in a private store.
podman_name() {
	local store=$work/podman
	rm -rf "$store"
	podman --root "$store/root" --runroot "$store/run" --storage-driver vfs --events-backend file \
		load -q -i "$1" >&2 &&
		podman --root "$store/root" --runroot "$store/run" --storage-driver vfs --events-backend file \
			images --format '{{.Repository}}:{{.Tag}}'
}
# names VERSION: the image, podman and kms --version all call the build VERSION.
names() {
	local version=$1 got_ann got_podman got_kms
	got_ann=$(annotation "$bin/release/image" org.opencontainers.image.version)
	got_podman=$(podman_name "$bin/release/archive.tar") || got_podman=
	got_kms=$("$bin/release/binaries_amd64/kms" --version) || got_kms=
	echo "release/ci: version annotation: $got_ann; podman load: $got_podman; kms --version: $got_kms"
	[[ $got_ann == "$version" && $got_podman == "localhost/kms:$version" && $got_kms == "kms $version "* ]]
}

# 2. What an unstamped build and a stamped one are called.
phase "names: unstamped build"
nice -n 10 tools/bazel build //release:image //release:archive //release:binaries_amd64 //release:binaries_fips_amd64
check "unstamped: devel in the image, podman load and kms --version" names devel
fips_version=$("$bin/release/binaries_fips_amd64/kms" --version) || fips_version=
echo "release/ci: the FIPS image's kms --version: $fips_version"
check "the FIPS image's kms: the certified module, FIPS mode on" grep -qx 'fips140: v1.0.0 enabled' <<<"$fips_version"

# 3. Metadata, and SOURCE_DATE_EPOCH through tools/bazel (before release.sh, whose build
# without it puts the last commit's time back).
phase "SOURCE_DATE_EPOCH=1000000000 stamped build"
SOURCE_DATE_EPOCH=1000000000 nice -n 10 tools/bazel build "${flags[@]}" //release:image //release:sbom //release:archive //release:binaries_amd64
version=$(git describe --tags --always --dirty)
check "stamped: $version in the image, podman load and kms --version" names "$version"
epoch_digest=$(cat "$bin/release/image.digest" 2>/dev/null) || epoch_digest=
amd64=$(platforms "$bin/release/image" | awk '$1 == "linux/amd64" { print $2 }')
epoch_created=$(jq -r .created "$(blob "$bin/release/image" "$(jq -r .config.digest "$(blob "$bin/release/image" "$amd64")")")" 2>/dev/null) || epoch_created=
echo "release/ci: SOURCE_DATE_EPOCH=1000000000: index $epoch_digest, linux/amd64 image created $epoch_created"
check "SOURCE_DATE_EPOCH sets the image time" test "$epoch_created" = 2001-09-09T01:46:40Z
check "SOURCE_DATE_EPOCH changes the digest" test -n "$epoch_digest" -a "$epoch_digest" != "$digest_a"
licenses=$(annotation "$bin/release/image" org.opencontainers.image.licenses)
echo "release/ci: index annotation org.opencontainers.image.licenses: $licenses"
check "image licenses annotation" test "$licenses" = Apache-2.0
sbom_licenses=$(jq -r '[.packages[] | select(.primaryPackagePurpose == "CONTAINER" or .primaryPackagePurpose == "APPLICATION") | .licenseDeclared] | unique | join(" ")' \
	"$bin/release/sbom.spdx.json" 2>/dev/null) || sbom_licenses=
echo "release/ci: SBOM licenseDeclared of the image and its binaries: $sbom_licenses"
check "SBOM declares the license" test "$sbom_licenses" = Apache-2.0

# 4. The release script against a loopback registry.
phase "release.sh against a loopback registry"
reg=$(start_registry "$work/registry-main")
export COSIGN_PASSWORD=ci-only-password
(cd "$work" && "$COSIGN" generate-key-pair >/dev/null 2>&1)
mkdir -p "$work/wrong" && (cd "$work/wrong" && "$COSIGN" generate-key-pair >/dev/null 2>&1)
check "release.sh: build, push, sign, attest, verify, bundle" \
	release/release.sh --repository "$reg/kms:ci" --key "$work/cosign.key" --out "$work/dist"
ref=$(cat "$work/dist/pushed" 2>/dev/null || true)
built=$(cat "$bin/release/image.digest" 2>/dev/null || true)
echo "release/ci: pushed $ref (built $built)"
check "pushed digest is the built digest" test -n "$built" -a "${ref#*@}" = "$built"
if [[ -z $(git status --porcelain) && $(git rev-parse HEAD) == "$head" ]]; then
	check "released image is the reproducible one" test "$built" = "$digest_a"
else
	echo "release/ci: (work tree changed since the start: the release build is not the reproducibility builds' commit, not compared with them)"
fi
phase "pull back by digest"
check "pull back by digest is byte-equal" \
	tools/bazel run "${flags[@]}" //release/cmd/pullcheck -- --layout "$bin/release/image" --reference "$ref"

# 5. The images, as a kubelet would run them.
phase "image tests (amd64 natively, arm64 under qemu-user)"
check "both images and the FIPS one run as 65532 with no shell and serve KMS v2/v1beta1" \
	tools/bazel test "${flags[@]}" --test_output=all //release:image_test //release:image_test_arm64 //release:image_fips_test
# (Here, not in `tools/bazel test //...`: the FIPS builds are manual, and step 1 has built
# their standard library and packages in this output base already (steps 1 and 2).)
check "the FIPS build's own tests: the daemon's life, FIPS 140-only mode, memory scan" \
	tools/bazel test "${flags[@]}" //src/cmd/kms:kms_fips_test

# 6. cosign checks a user would run.
phase "cosign"
verify() { # KEY REF [extra flags]
	local key=$1 r=$2
	shift 2
	"$COSIGN" verify --key "$key" --insecure-ignore-tlog "$@" "$r"
}
fails() { # COMMAND...: must fail
	local rc=0
	"$@" >/dev/null 2>&1 || rc=$?
	echo "release/ci: exited $rc: $*"
	((rc != 0))
}
attestation() { # TYPE KEY: the verified in-toto statement
	"$COSIGN" verify-attestation --key "$2" --type "$1" --insecure-ignore-tlog --allow-http-registry "$ref" |
		head -1 | jq -r .payload | base64 -d
}
pub=$work/dist/cosign.pub
check "cosign verify (right key)" quiet verify "$pub" "$ref" --allow-http-registry
check "cosign verify fails with a wrong key" fails verify "$work/wrong/cosign.pub" "$ref" --allow-http-registry
for type in spdxjson slsaprovenance1; do
	check "cosign verify-attestation $type" quiet attestation "$type" "$pub"
	check "cosign verify-attestation $type fails with a wrong key" fails attestation "$type" "$work/wrong/cosign.pub"
done
statement=$(attestation slsaprovenance1 "$pub") || statement='{}'
provenance_says() { # JQ_FILTER: must print true
	local got
	got=$(jq -r "$1" <<<"$statement")
	[[ $got == true ]] || { echo "release/ci: provenance: $1 is $got" && return 1; }
}
echo "release/ci: provenance: $(jq -c '{predicateType, subject, source: .predicate.buildDefinition.externalParameters.source,
	command: .predicate.buildDefinition.externalParameters.command, builder: .predicate.runDetails.builder}' <<<"$statement")"
check "provenance: SLSA v1, subject is the pushed index" provenance_says \
	".predicateType == \"https://slsa.dev/provenance/v1\" and .subject[0].digest.sha256 == \"${built#sha256:}\""
check "provenance: source is HEAD" provenance_says \
	".predicate.buildDefinition.externalParameters.source == \"git+https://github.com/cmdkms/kms@$(git rev-parse HEAD)\""
check "provenance: the build command built //release:image" provenance_says \
	'.predicate.buildDefinition.externalParameters.command | (.[0] == "tools/bazel" and index("//release:image") != null)'
check "provenance: inputs are the commit, go.sum's modules and the Debian lock" provenance_says \
	"[.predicate.buildDefinition.resolvedDependencies[] | .digest | keys[0]] | (index(\"gitCommit\") != null and index(\"dirHash\") != null and
	 (map(select(. == \"sha256\")) | length) == $(jq '.packages | length' release/debian.lock.json))"
check "provenance: byproducts are both images and the bundle's binaries" provenance_says \
	"[.predicate.runDetails.byproducts[].name] | (index(\"image linux/amd64\") != null and index(\"image linux/arm64\") != null and index(\"bin/linux-arm64/kms\") != null
	 and index(\"bin/linux-amd64/kek-census\") != null and index(\"bin/linux-arm64/kek-census\") != null)"
check "provenance: byproducts include the four packages" provenance_says \
	"[.predicate.runDetails.byproducts[].name | select(test(\"^packages/kms[-_].*[.](deb|rpm)$\"))] | length == 4"

# 7. The air-gap sequence, as docs/airgap.md gives it, from the bundle's own copy.
phase "air-gap: the documented sequence against a TLS registry"
bundle=$(echo "$work"/dist/kms-*.tar)
mkdir -p "$work/airgap"
tar -C "$work/airgap" -xf "$bundle" --wildcards '*/AIRGAP.md'
sequence=$(awk '/^<!-- release\/ci.sh runs the next block verbatim -->$/ { on = 1; next }
	on && /^```sh$/ { body = 1; next } body && /^```$/ { exit } body { print }' "$work"/airgap/kms-*/AIRGAP.md)
site=$(start_registry "$work/registry-site" tls)
airgap() { # NAME BUNDLE [KEY]: runs the sequence in a fresh directory; its output in $work/NAME.log
	local d=$work/$1
	mkdir -p "$d"
	(cd "$d" && env BUNDLE="$2" KEY="${3:-$pub}" KEY_SHA256="$(cat "$work/dist/cosign.pub.sha256")" \
		REGISTRY="$site" SSL_CERT_FILE="$work/registry-site/ca.crt" \
		PATH="$(dirname "$COSIGN"):$PATH" bash -c "$sequence") >"$work/$1.log" 2>&1
}
echo "release/ci: the sequence:"
sed 's/^/    /' <<<"$sequence"
check "air-gap sequence: verify everything offline, load into the site registry, verify there" airgap site "$bundle"
sed 's/^/    /' "$work/site.log"
# Tampered copies, each under the original's name: the sequence must stop before loading.
tampered() { # NAME EDIT...: a copy of the bundle changed by EDIT (run in its directory)
	local d=$work/$1
	mkdir -p "$d/in"
	tar -C "$d/in" -xf "$bundle"
	(cd "$d"/in/kms-* && "${@:2}")
	tar -C "$d/in" -cf "$d/$(basename "$bundle")" "$(basename "$bundle" .tar)"
	echo "$d/$(basename "$bundle")"
}
must_fail() { # NAME BUNDLE MESSAGE [KEY]: the sequence fails, saying MESSAGE
	if airgap "$1.run" "$2" "${4:-}"; then
		echo "release/ci: the sequence passed a bundle it must refuse ($1)"
		return 1
	fi
	grep -q "$3" "$work/$1.run.log" || { cat "$work/$1.run.log" && return 1; }
	echo "release/ci: refused ($1): $(grep -m1 "$3" "$work/$1.run.log")"
}
flip() { echo >>"$1"; }
resum() { flip bin/linux-arm64/kms && find . -type f ! -name 'SHA256SUMS*' -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum >SHA256SUMS; }
check "air-gap sequence refuses a changed binary" must_fail changed "$(tampered changed flip bin/linux-arm64/kms)" 'FAILED'
check "air-gap sequence refuses a re-summed bundle (signature)" must_fail resummed "$(tampered resummed resum)" 'signature'
check "air-gap sequence refuses an extra file" must_fail extra "$(tampered extra touch deploy/extra.yaml)" 'extra.yaml'
check "air-gap sequence refuses a key that is not the published one" must_fail otherkey "$bundle" 'not the release key' "$work/wrong/cosign.pub"

# 8. The packages, as the bundle has them (release.sh copied the stamped build's).
phase "packages: lintian, rpmlint, rpm -K, install/upgrade/remove/purge"
pkgs=$(echo "$work"/dist/kms-*/packages)
for f in "$pkgs"/*; do
	echo "release/ci: $(basename "$f"): $(stat -c %s "$f") bytes, sha256 $(sha256sum "$f" | cut -c1-64)"
	case $f in
	*.deb) dpkg-deb -c "$f" | awk '{ print "    " $1, $2, $3, $6 }' ;;
	*.rpm) rpm -qlvp "$f" 2>/dev/null | awk '{ print "    " $1, $3, $4, $5, $9 }' ;;
	esac
done
for f in "$pkgs"/*.deb; do
	# lintian exits non-zero on errors; its warnings (no manual pages) are printed.
	check "lintian $(basename "$f"): no errors" lintian --fail-on error "$f"
done
for f in "$pkgs"/*.rpm; do
	check "rpm -K $(basename "$f")" rpm -K "$f"
	# release/packages/rpmlint.toml says which errors are filtered, and why.
	check "rpmlint $(basename "$f"): no errors" rpmlint -c release/packages/rpmlint.toml "$f"
done
check "packages: install, upgrade, remove, purge in a Debian root; keyring intact; units verify" \
	env KMS_PACKAGE_DIR="$bin/release/packages_amd64" go test -count=1 -run '^TestInstall$' -v ./release/packages

phase "done"
echo "release/ci: $passed passed, $failed failed"
((failed == 0))
