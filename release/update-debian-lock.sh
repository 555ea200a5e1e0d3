#!/usr/bin/env bash
# Pins the Debian packages of the image's base in release/debian.lock.json, and the
# qemu-user emulator of the arm64 image test in release/qemu.lock.json, to the newest
# version apt's own configuration offers, then downloads each once to check the sha256.
# Run it (as root, after apt-get update) to take CA or zoneinfo updates; commit the result.
# The base's packages are architecture "all"; qemu-user-static is the build machine's.
#
# Only versions from the main archive (pool/main/...) are taken: the lock stores paths
# relative to the archive root, and the builder joins them to whatever Debian mirror the
# building machine has configured, which is always the main archive (the sid chroot that
# tools/bazel runs Bazel in has no debian-security source). Security fixes to these
# data-only packages reach the main archive with the next point release.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

lock() { # LOCK PACKAGE...: writes LOCK pinning the packages
	local lock=$1 p best best_file best_sum best_arch version file sum arch got i
	shift
	local entries=()
	for p in "$@"; do
		best='' best_file='' best_sum='' best_arch=''
		while IFS=$'\t' read -r version file sum arch; do
			[[ $file == pool/main/* ]] || continue
			if [[ -z $best ]] || dpkg --compare-versions "$version" gt "$best"; then
				best=$version best_file=$file best_sum=$sum best_arch=$arch
			fi
		done < <(apt-cache show "$p" | awk -v OFS='\t' '
			/^Version: /      { v = $2 }
			/^Filename: /     { f = $2 }
			/^SHA256: /       { s = $2 }
			/^Architecture: / { a = $2 }
			/^$/ { if (v != "") print v, f, s, a; v = f = s = a = "" }
			END  { if (v != "") print v, f, s, a }')
		[[ -n $best ]] || { echo "no version of $p in the main archive; run apt-get update" >&2; exit 1; }
		# (apt-get names the file with the version's epoch, the archive without.)
		mkdir "$tmp/$p"
		(cd "$tmp/$p" && apt-get -q download "$p=$best" >/dev/null 2>&1) || { echo "apt-get download $p=$best failed" >&2; exit 1; }
		got=$(cat "$tmp/$p"/*.deb | sha256sum | cut -d' ' -f1)
		[[ $got == "$best_sum" ]] || { echo "$p=$best: downloaded sha256 $got, index says $best_sum" >&2; exit 1; }
		echo "$p $best $best_sum" >&2
		entries+=("$(printf '    {\n      "name": "%s",\n      "version": "%s",\n      "architecture": "%s",\n      "filename": "%s",\n      "sha256": "%s"\n    }' \
			"$p" "$best" "$best_arch" "$best_file" "$best_sum")")
	done
	{
		printf '{\n  "packages": [\n'
		for i in "${!entries[@]}"; do
			((i == 0)) || printf ',\n'
			printf '%s' "${entries[$i]}"
		done
		printf '\n  ]\n}\n'
	} >"$tmp/lock"
	mv "$tmp/lock" "$lock"
	echo "wrote release/$lock" >&2
}

lock debian.lock.json ca-certificates tzdata
lock qemu.lock.json qemu-user-static
