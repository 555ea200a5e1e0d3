#!/usr/bin/env bash
# The checked-in .pb.go files let plain `go build` work without Bazel, but go_proto_library's
# output is what they must be. Arguments: a mode, then go_proto_library's generated files.
#   check   (//proto:stubs_test): fail when a checked-in file differs from Bazel's output.
#   update  (tools/bazel run //proto:update): copy Bazel's output over the checked-in files.
set -euo pipefail
mode=$1
shift
status=0
for gen in "$@"; do
	# go_proto_library writes PKG/NAME_go_proto_/IMPORTPATH/FILE; the stub belongs in PKG.
	stub=${gen%/*_go_proto_/*}/${gen##*/}
	case $mode in
	check)
		if ! diff -u "$stub" "$gen"; then
			echo "$stub differs from Bazel's output: run tools/bazel run //proto:update" >&2
			status=1
		fi
		;;
	update)
		install -m 0644 "$gen" "$BUILD_WORKSPACE_DIRECTORY/$stub"
		echo "wrote $stub"
		;;
	*)
		echo "usage: $0 check|update FILE..." >&2
		exit 2
		;;
	esac
done
exit "$status"
