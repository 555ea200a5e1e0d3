#!/usr/bin/env bash
# Workspace status for release builds (`--stamp --workspace_status_command=release/workspace_status.sh`):
# the project's own stamp values plus the image's creation time, SOURCE_DATE_EPOCH when
# the caller sets it, else the last commit's time, so rebuilding a commit gives the same image.
set -euo pipefail
tools/workspace_status.sh
echo "STABLE_KMS_SOURCE_DATE_EPOCH ${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}"
