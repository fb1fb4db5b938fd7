#!/usr/bin/env bash
# Stops the local control plane started by hack/cluster-up.sh (make cluster-down): every
# process of it, pods included. State in $LOCALCLUSTER_STATE, default .local.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="${LOCALCLUSTER_STATE:-$root/.local}"
python="$root/.venv/bin/python"
[[ -x $python ]] || python=python3

exec "$python" "$root/hack/localcluster" down --state "$state"
