#!/usr/bin/env bash
# The slow release checks, for .ci/run (about 15-25 min; cosign is built once and cached):
#   1. reproducibility: two stamped builds of HEAD from clean output bases in different
#      directories give the same image manifest digest (both printed);
#   2. release/release.sh against a loopback registry: push, sign, SBOM attestation, verify,
#      air-gap bundle; then the image pulled back by digest is byte-equal to the build;
#   3. the image runs: //release:image_test unpacks it and runs the daemon with
#      chroot --userspec=65532:65532 and the bundled kek-file, and calls it over its socket;
#   4. cosign: verify fails with a wrong key; the bundle verifies offline; `cosign load` of
#      the bundle into a second registry verifies there.
# Needs root (tools/bazel's chroot) and the network to the Go module proxy and apt mirror.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work=$(mktemp -d /tmp/kms-release-ci.XXXXXX)
passed=0 failed=0
output_bases=()
cleanup() {
	local ob
	for d in "$work"/registry-*; do
		[[ -d $d ]] && stop_registry "$d"
	done
	for ob in "${output_bases[@]}"; do
		"$repo_root/tools/bazel" --output_base="$ob" shutdown >/dev/null 2>&1 || true
	done
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT

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

cd "$repo_root"
ensure_cosign
ensure_registry
flags=(--stamp --workspace_status_command=release/workspace_status.sh)

# 1. Two clean builds of HEAD, in directories of different names and depths.
repro_build() { # DIR OUTPUT_BASE: prints the manifest digest
	local dir=$1 ob=$2
	mkdir -p "$(dirname "$dir")"
	git clone -q --no-hardlinks "$repo_root" "$dir"
	(cd "$dir" && nice -n 10 tools/bazel --output_base="$ob" build "${flags[@]}" //release:image >&2 &&
		cat "$(tools/bazel --output_base="$ob" info bazel-bin 2>/dev/null)/release/image.digest" &&
		tools/bazel --output_base="$ob" shutdown >/dev/null 2>&1)
}
say "reproducibility: two clean builds of $(git rev-parse --short HEAD)"
# (Registered here, not in repro_build: that runs in a subshell.)
output_bases+=("$work/ob-a" "$work/ob-b")
digest_a=$(repro_build "$work/a/kms" "$work/ob-a")
digest_b=$(repro_build "$work/bb/cc/kms-copy" "$work/ob-b")
echo "release/ci: reproducibility: build 1 ($work/a/kms): $digest_a"
echo "release/ci: reproducibility: build 2 ($work/bb/cc/kms-copy): $digest_b"
check "reproducible image digest" test -n "$digest_a" -a "$digest_a" = "$digest_b"

# 2. The release script against a loopback registry.
reg=$(start_registry "$work/registry-main")
export COSIGN_PASSWORD=ci-only-password
(cd "$work" && "$COSIGN" generate-key-pair >/dev/null 2>&1)
mkdir -p "$work/wrong" && (cd "$work/wrong" && "$COSIGN" generate-key-pair >/dev/null 2>&1)
check "release.sh: build, push, sign, attest, verify, bundle" \
	release/release.sh --repository "$reg/kms:ci" --key "$work/cosign.key" --out "$work/dist"
ref=$(cat "$work/dist/pushed" 2>/dev/null || true)
built=$(cat "$(tools/bazel info "${flags[@]}" bazel-bin 2>/dev/null)/release/image.digest")
echo "release/ci: pushed $ref (built $built)"
check "pushed digest is the built digest" test "${ref#*@}" = "$built"
check "pull back by digest is byte-equal" \
	tools/bazel run "${flags[@]}" //release/cmd/pullcheck -- --layout "$(tools/bazel info "${flags[@]}" bazel-bin 2>/dev/null)/release/image" --reference "$ref"

# 3. The image, as a kubelet would run it.
check "image runs as 65532 with no shell and serves KMS v2/v1beta1" \
	tools/bazel test "${flags[@]}" --test_output=all //release:image_test

# 4. cosign checks a user would run.
fails() { ! "$@"; }
verify() { # KEY REF [extra flags]
	local key=$1 r=$2
	shift 2
	"$COSIGN" verify --key "$key" --insecure-ignore-tlog "$@" "$r"
}
echo "release/ci: cosign verify with the release key:"
check "cosign verify (right key)" verify "$work/dist/cosign.pub" "$ref" --allow-http-registry
echo "release/ci: cosign verify with a wrong key (must fail):"
check "cosign verify fails with a wrong key" fails verify "$work/wrong/cosign.pub" "$ref" --allow-http-registry
check "cosign verify-attestation (SPDX SBOM)" "$COSIGN" verify-attestation --key "$work/dist/cosign.pub" --type spdxjson \
	--insecure-ignore-tlog --allow-http-registry "$ref" -o /dev/null

bundle=$(echo "$work"/dist/kms-*.tar)
mkdir -p "$work/airgap" && tar -C "$work/airgap" -xf "$bundle"
dir=$(echo "$work"/airgap/kms-*)
echo "release/ci: offline verify of the air-gap bundle:"
check "offline verify of the bundle" verify "$dir/cosign.pub" "$dir/image" --local-image
check "offline verify-attestation of the bundle" "$COSIGN" verify-attestation --local-image --key "$dir/cosign.pub" \
	--type spdxjson --insecure-ignore-tlog "$dir/image" -o /dev/null
private=$(start_registry "$work/registry-private")
check "cosign load of the bundle into a second registry" "$COSIGN" load --allow-http-registry --dir "$dir/image" "$private/mirror/kms"
check "verify in the second registry" verify "$dir/cosign.pub" "$private/mirror/kms@$(<"$dir/DIGEST")" --allow-http-registry

echo "release/ci: $passed passed, $failed failed"
((failed == 0))
