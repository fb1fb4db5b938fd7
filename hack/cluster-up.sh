#!/usr/bin/env bash
# Starts the local control plane (make cluster-up): etcd, kube-apiserver,
# kube-controller-manager and the process-kubelet, as processes that outlive this script.
#
# State (kubeconfig, logs, pods) goes to $LOCALCLUSTER_STATE, default .local in the
# repository; the kubeconfig ends up at $LOCALCLUSTER_STATE/kubeconfig. Extra arguments
# go to `python hack/localcluster up` (--keep-data). Builds bin/ first when it lacks a
# binary. Stop it with hack/cluster-down.sh.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="${LOCALCLUSTER_STATE:-$root/.local}"
python="$root/.venv/bin/python"
[[ -x $python ]] || python=python3

for binary in etcd kube-apiserver kube-controller-manager kubectl; do
  if [[ ! -x $root/bin/$binary ]]; then
    "$root/hack/build-control-plane.sh"
    break
  fi
done

exec "$python" "$root/hack/localcluster" up --state "$state" "$@"
