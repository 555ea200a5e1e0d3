#!/usr/bin/env bash
# Makes a release: builds the stamped image with Bazel, pushes it, signs its digest with
# cosign, attaches the SPDX SBOM as a signed attestation, verifies both, and writes an
# air-gap bundle (image + signature + attestation, public key, SBOM) that verifies offline.
#
#   COSIGN_PASSWORD=... release/release.sh --repository HOST/NAME[:TAG] --key cosign.key [--out DIR]
#
# Signing is key-based and offline (no transparency log): these machines reach no Sigstore
# service. With Sigstore access, sign keylessly instead (README, "Release").
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() {
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

repository='' key='' out=$repo_root/dist
while (($#)); do
	case $1 in
	--repository) repository=${2:?}; shift 2 ;;
	--key) key=${2:?}; shift 2 ;;
	--out) out=${2:?}; shift 2 ;;
	*) usage ;;
	esac
done
[[ -n $repository && -n $key ]] || usage
[[ -f $key ]] || die "no key file $key (cosign generate-key-pair makes one)"
[[ -n ${COSIGN_PASSWORD+set} ]] || die "set COSIGN_PASSWORD to the key's password"
key=$(realpath "$key")
mkdir -p "$out"
out=$(realpath "$out")

ensure_cosign
cd "$repo_root"
# The same flags for build and run, so `run` pushes exactly the image that was built.
bazel_flags=(--stamp)
say "building the image"
tools/bazel build "${bazel_flags[@]}" //release:image //release:archive //release:sbom
bin=$(tools/bazel info "${bazel_flags[@]}" bazel-bin 2>/dev/null)
version=$(awk '$1 == "STABLE_KMS_VERSION" { print $2 }' "$(tools/bazel info output_path 2>/dev/null)/stable-status.txt")

say "pushing to $repository"
# Bazel runs the push in its chroot, which sees only some host paths: take its stdout.
ref=$(tools/bazel run "${bazel_flags[@]}" //release:push -- --repository "$repository")
echo "$ref" >"$out/pushed"
read -ra flags <<<"$(cosign_registry_flags "$ref")"
offline=(--use-signing-config=false --tlog-upload=false -y --new-bundle-format=false)

say "signing $ref"
"$COSIGN" sign --key "$key" "${offline[@]}" "${flags[@]}" "$ref"
say "attaching the SBOM as a signed SPDX attestation"
"$COSIGN" attest --key "$key" --type spdxjson --predicate "$bin/release/sbom.spdx.json" "${offline[@]}" "${flags[@]}" "$ref"

"$COSIGN" public-key --key "$key" >"$out/cosign.pub"
say "verifying signature and attestation"
"$COSIGN" verify --key "$out/cosign.pub" --insecure-ignore-tlog "${flags[@]}" "$ref" >/dev/null
"$COSIGN" verify-attestation --key "$out/cosign.pub" --type spdxjson --insecure-ignore-tlog "${flags[@]}" "$ref" >/dev/null

# The air-gap bundle: `cosign save` writes the image with its signature and attestation as
# one OCI layout, which `cosign verify --local-image` checks and `cosign load` pushes.
bundle=kms-$version
say "writing the air-gap bundle $out/$bundle.tar"
rm -rf "${out:?}/$bundle"
mkdir -p "$out/$bundle"
"$COSIGN" save --dir "$out/$bundle/image" "$ref"
install -m 0644 "$out/cosign.pub" "$bin/release/sbom.spdx.json" "$out/$bundle/"
echo "${ref#*@}" >"$out/$bundle/DIGEST"
"$COSIGN" verify --local-image --key "$out/$bundle/cosign.pub" --insecure-ignore-tlog "$out/$bundle/image" >/dev/null
tar -C "$out" --sort=name --owner=0 --group=0 --numeric-owner -cf "$out/$bundle.tar" "$bundle"

echo "$ref"
say "released $ref; air-gap bundle $out/$bundle.tar"
