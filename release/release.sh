#!/usr/bin/env bash
# Makes a release: builds the stamped image (one index, linux/amd64 + linux/arm64) with
# Bazel, pushes it, signs its digest with cosign, attaches the SPDX SBOM and an SLSA v1
# provenance as signed attestations, verifies them, and writes the air-gap bundle
# (docs/airgap.md): image with signature and attestations, static binaries for each
# architecture, .deb and .rpm packages of them, systemd units, deploy manifests, SBOM,
# provenance, public key, and a SHA256SUMS of all of it, signed (SHA256SUMS.sigstore.json).
#
#   COSIGN_PASSWORD=... release/release.sh --repository HOST/NAME[:TAG] --key cosign.key [--out DIR]
#
# Signing is key-based and offline (no transparency log): these machines reach no Sigstore
# service. With Sigstore access, sign keylessly instead (docs/release.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() {
	sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
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
build=(tools/bazel build "${bazel_flags[@]}" //release:image //release:sbom
	//release:binaries_amd64 //release:binaries_arm64 //release:packages_amd64 //release:packages_arm64
	//release/cmd/provenance)
say "building the image: ${build[*]}"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
"${build[@]}"
finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)
bin=$(tools/bazel info "${bazel_flags[@]}" bazel-bin 2>/dev/null)
status=$(tools/bazel info "${bazel_flags[@]}" output_path 2>/dev/null)/stable-status.txt
version=$(awk '$1 == "STABLE_KMS_VERSION" { print $2 }' "$status")

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
# The fingerprint sites check the key against (docs/airgap.md): publish it with the release.
fingerprint=$(openssl pkey -pubin -in "$out/cosign.pub" -outform DER | sha256sum | cut -d' ' -f1)
echo "$fingerprint" >"$out/cosign.pub.sha256"

# The bundle's files, then the provenance that names them.
bundle=kms-$version
dir=$out/$bundle
say "writing the air-gap bundle $dir"
rm -rf "${dir:?}" "$dir.tar"
mkdir -p "$dir"
for arch in amd64 arm64; do
	install -D -m 0755 -t "$dir/bin/linux-$arch" "$bin/release/binaries_$arch"/{kms,kek-census,kek-file,kek-gen}
	install -D -m 0644 -t "$dir/packages" "$bin/release/packages_$arch"/*
done
install -D -m 0644 -t "$dir/deploy" release/deploy/{kms-static-pod.yaml,encryption-config-v1.yaml,encryption-config-v2.yaml,kms-tmpfiles.conf}
install -D -m 0644 -t "$dir/deploy/prometheus" release/deploy/prometheus/{kms-alerts.yaml,kms-scrape.yaml}
install -D -m 0644 -t "$dir/deploy/grafana" release/deploy/grafana/kms.json
install -D -m 0644 -t "$dir/systemd" release/deploy/systemd/{kms.service,kms.socket}
install -D -m 0644 -t "$dir/systemd/backends" release/deploy/systemd/backends/*.conf
# The docs AIRGAP.md links to, where its links expect them.
(cd docs && find . -name '*.md' -exec install -D -m 0644 {} "$dir/docs/{}" \;)
install -m 0644 docs/airgap.md "$dir/AIRGAP.md"
install -m 0644 "$out/cosign.pub" "$bin/release/sbom.spdx.json" "$dir/"
echo "${ref#*@}" >"$dir/DIGEST"

say "attaching the SLSA provenance as a signed attestation"
files=()
while IFS= read -r f; do
	files+=(--file "$f=$dir/$f")
done < <(cd "$dir" && find bin deploy packages systemd sbom.spdx.json -type f | LC_ALL=C sort)
"$bin/release/cmd/provenance/provenance_/provenance" \
	--stamp-status-file "$status" --go-mod go.mod --go-sum go.sum --debian-lock release/debian.lock.json \
	--index-layout "$bin/release/image" "${files[@]}" \
	--builder-id https://github.com/cmdkms/kms/blob/main/release/release.sh \
	--builder-version "go=$(go env GOVERSION)" --builder-version "bazel=$(bazel_version)" \
	--builder-version "cosign=$(lock_version cosign)" \
	--invocation-id "$(cat /proc/sys/kernel/random/uuid)" --started "$started" --finished "$finished" \
	--out "$dir/provenance.json" -- "${build[@]}"
"$COSIGN" attest --key "$key" --type slsaprovenance1 --predicate "$dir/provenance.json" "${offline[@]}" "${flags[@]}" "$ref"

say "verifying signature and attestations"
"$COSIGN" verify --key "$out/cosign.pub" --insecure-ignore-tlog "${flags[@]}" "$ref" >/dev/null
for type in spdxjson slsaprovenance1; do
	"$COSIGN" verify-attestation --key "$out/cosign.pub" --type "$type" --insecure-ignore-tlog "${flags[@]}" "$ref" >/dev/null
done

# `cosign save` writes the image with its signature and attestations as one OCI layout,
# which `cosign verify --local-image` checks and `cosign load` pushes.
"$COSIGN" save --dir "$dir/image" "$ref"
# Modes as a package would have them (cosign save writes some files 0755).
find "$dir" -type d -exec chmod 0755 {} +
find "$dir" -type f -exec chmod 0644 {} +
chmod 0755 "$dir"/bin/*/*
# Every file of the bundle, checksummed; the list signed with the release key.
(cd "$dir" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) >"$out/SHA256SUMS"
mv "$out/SHA256SUMS" "$dir/SHA256SUMS"
# (A Sigstore bundle: the new format has no cosign load bug to avoid here.)
"$COSIGN" sign-blob --key "$key" --use-signing-config=false --tlog-upload=false -y \
	--bundle "$dir/SHA256SUMS.sigstore.json" "$dir/SHA256SUMS" >/dev/null
"$COSIGN" verify-blob --key "$out/cosign.pub" --insecure-ignore-tlog --bundle "$dir/SHA256SUMS.sigstore.json" "$dir/SHA256SUMS"
tar -C "$out" --sort=name --owner=0 --group=0 --numeric-owner -cf "$dir.tar" "$bundle"

echo "$ref"
say "released $ref; air-gap bundle $dir.tar; release key fingerprint (publish it) $fingerprint"
