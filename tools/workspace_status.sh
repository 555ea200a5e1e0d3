#!/usr/bin/env bash
# Stamp values for `--stamp` builds (see x_defs in src/cmd/kms/BUILD.bazel). STABLE_ keys
# re-link the binary when they change; Bazel ignores them unless --stamp is given.
set -euo pipefail
echo "STABLE_KMS_VERSION $(git describe --tags --always --dirty 2>/dev/null || echo unknown)"
echo "STABLE_KMS_COMMIT $(git rev-parse HEAD 2>/dev/null || echo unknown)"
