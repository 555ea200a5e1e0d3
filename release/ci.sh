#!/usr/bin/env bash
# The slow release checks, for .ci/run (cosign is built once and cached; 28 min measured from
# a fresh clone on a busy 2-core machine, most of it the two clean builds, 10 min each):
#   1. reproducibility: two stamped builds of HEAD from clean output bases in different
#      directories give the same image manifest digest (both printed);
#   2. release/release.sh against a loopback registry: push, sign, SBOM attestation, verify,
#      air-gap bundle; then the image pulled back by digest is byte-equal to the build;
#   3. the image runs: //release:image_test unpacks it and runs the daemon with
#      chroot --userspec=65532:65532 and the bundled kek-file, and calls it over its socket;
#   4. cosign: verify fails with a wrong key; the bundle verifies offline; `cosign load` of
#      the bundle into a second registry verifies there;
#   5. metadata: the licenses annotation and the SBOM's declared license; SOURCE_DATE_EPOCH
#      reaches the image through tools/bazel (a different time gives a different digest).
# Needs root (tools/bazel's chroot) and the network to the Go module proxy and apt mirror.
# Downloads are shared by every output base (the Go module cache and Bazel's repository
# cache); the two reproducibility builds share no outputs and no action cache.
# Exits non-zero if any check fails. On any exit it stops the registries and the Bazel
# servers it started and removes its temporary directory.
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
phase() { echo "release/ci: --- $* ($((SECONDS - started)) s)"; }

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
# The attestation's payload is the whole SBOM: kept out of the log, errors are not.
quiet() { "$@" >/dev/null; }

cd "$repo_root"
command -v jq >/dev/null || die "release/ci.sh reads the image's JSON with jq: apt-get install jq"
ensure_cosign
ensure_registry
flags=(--stamp)

# 1. Two clean builds of HEAD, in directories of different names and depths.
repro_build() { # DIR OUTPUT_BASE: prints the manifest digest
	local dir=$1 ob=$2
	mkdir -p "$(dirname "$dir")"
	git clone -q --no-hardlinks "$repo_root" "$dir"
	(cd "$dir" && nice -n 10 tools/bazel --output_base="$ob" build "${flags[@]}" //release:image >&2 &&
		cat "$(tools/bazel --output_base="$ob" info bazel-bin 2>/dev/null)/release/image.digest" &&
		tools/bazel --output_base="$ob" shutdown >/dev/null 2>&1)
}
phase "reproducibility: two clean builds of $(git rev-parse --short HEAD)"
# (Registered here, not in repro_build: that runs in a subshell.)
output_bases+=("$work/ob-a" "$work/ob-b")
digest_a=$(repro_build "$work/a/kms" "$work/ob-a") || digest_a=
phase "reproducibility: build 1 done"
digest_b=$(repro_build "$work/bb/cc/kms-copy" "$work/ob-b") || digest_b=
phase "reproducibility: build 2 done"
echo "release/ci: reproducibility: build 1 ($work/a/kms): $digest_a"
echo "release/ci: reproducibility: build 2 ($work/bb/cc/kms-copy): $digest_b"
check "reproducible image digest" test -n "$digest_a" -a "$digest_a" = "$digest_b"

# 5. Metadata, and SOURCE_DATE_EPOCH through tools/bazel (before release.sh, whose
# build without it puts the last commit's time back).
bin=$(tools/bazel info "${flags[@]}" bazel-bin 2>/dev/null)
blob() { # DIGEST: the blob's path in the built layout
	echo "$bin/release/image/blobs/sha256/${1#sha256:}"
}
phase "SOURCE_DATE_EPOCH=1000000000 stamped build"
SOURCE_DATE_EPOCH=1000000000 nice -n 10 tools/bazel build "${flags[@]}" //release:image //release:sbom
epoch_digest=$(cat "$bin/release/image.digest" 2>/dev/null) || epoch_digest=
epoch_created=$(jq -r .created "$(blob "$(jq -r .config.digest "$(blob "$epoch_digest")")")" 2>/dev/null) || epoch_created=
echo "release/ci: SOURCE_DATE_EPOCH=1000000000: $epoch_digest created $epoch_created"
check "SOURCE_DATE_EPOCH sets the image time" test "$epoch_created" = 2001-09-09T01:46:40Z
check "SOURCE_DATE_EPOCH changes the digest" test -n "$epoch_digest" -a "$epoch_digest" != "$digest_a"
licenses=$(jq -r '.annotations["org.opencontainers.image.licenses"]' "$(blob "$epoch_digest")" 2>/dev/null) || licenses=
echo "release/ci: manifest annotation org.opencontainers.image.licenses: $licenses"
check "image licenses annotation" test "$licenses" = Apache-2.0
sbom_licenses=$(jq -r '[.packages[] | select(.primaryPackagePurpose == "CONTAINER" or .primaryPackagePurpose == "APPLICATION") | .licenseDeclared] | unique | join(" ")' \
	"$bin/release/sbom.spdx.json" 2>/dev/null) || sbom_licenses=
echo "release/ci: SBOM licenseDeclared of the image and its binaries: $sbom_licenses"
check "SBOM declares the license" test "$sbom_licenses" = Apache-2.0

# 2. The release script against a loopback registry.
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
if [[ -z $(git status --porcelain) ]]; then
	check "released image is the reproducible one" test "$built" = "$digest_a"
else
	echo "release/ci: (work tree has changes: the release build is not HEAD's, not compared with the reproducibility digests)"
fi
phase "pull back by digest"
check "pull back by digest is byte-equal" \
	tools/bazel run "${flags[@]}" //release/cmd/pullcheck -- --layout "$bin/release/image" --reference "$ref"

# 3. The image, as a kubelet would run it.
phase "image test"
check "image runs as 65532 with no shell and serves KMS v2/v1beta1" \
	tools/bazel test "${flags[@]}" --test_output=all //release:image_test

# 4. cosign checks a user would run.
phase "cosign"
verify() { # KEY REF [extra flags]
	local key=$1 r=$2
	shift 2
	"$COSIGN" verify --key "$key" --insecure-ignore-tlog "$@" "$r"
}
wrong_key() { # verify with a key that did not sign: must fail
	local rc=0
	verify "$work/wrong/cosign.pub" "$ref" --allow-http-registry || rc=$?
	echo "release/ci: cosign verify with the wrong key exited $rc"
	((rc != 0))
}
echo "release/ci: cosign verify with the release key:"
check "cosign verify (right key)" verify "$work/dist/cosign.pub" "$ref" --allow-http-registry
echo "release/ci: cosign verify with a wrong key (must fail):"
check "cosign verify fails with a wrong key" wrong_key
check "cosign verify-attestation (SPDX SBOM)" quiet "$COSIGN" verify-attestation --key "$work/dist/cosign.pub" --type spdxjson \
	--insecure-ignore-tlog --allow-http-registry "$ref"

bundle=$(echo "$work"/dist/kms-*.tar)
mkdir -p "$work/airgap"
tar -C "$work/airgap" -xf "$bundle" || echo "release/ci: no air-gap bundle ($bundle)"
dir=$(echo "$work"/airgap/kms-*)
echo "release/ci: offline verify of the air-gap bundle:"
check "offline verify of the bundle" verify "$dir/cosign.pub" "$dir/image" --local-image
check "offline verify-attestation of the bundle" quiet "$COSIGN" verify-attestation --local-image --key "$dir/cosign.pub" \
	--type spdxjson --insecure-ignore-tlog "$dir/image"
private=$(start_registry "$work/registry-private")
check "cosign load of the bundle into a second registry" "$COSIGN" load --allow-http-registry --dir "$dir/image" "$private/mirror/kms"
check "verify in the second registry" verify "$dir/cosign.pub" "$private/mirror/kms@$(<"$dir/DIGEST")" --allow-http-registry

phase "done"
echo "release/ci: $passed passed, $failed failed"
((failed == 0))
