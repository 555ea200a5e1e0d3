#!/usr/bin/env bash
# Stamp values for `--stamp` builds (.bazelrc names this script): the version and commit
# (x_defs in src/cmd/kms/BUILD.bazel) and the release image's creation time,
# SOURCE_DATE_EPOCH when the caller sets it, else the last commit's time, so that
# rebuilding a commit gives the same image. STABLE_ keys re-link what uses them when they
# change; Bazel ignores them unless --stamp is given.
set -euo pipefail
echo "STABLE_KMS_VERSION $(git describe --tags --always --dirty 2>/dev/null || echo devel)"
echo "STABLE_KMS_COMMIT $(git rev-parse HEAD 2>/dev/null || echo unknown)"
echo "STABLE_KMS_SOURCE_DATE_EPOCH ${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
