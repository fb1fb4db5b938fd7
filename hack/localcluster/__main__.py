"""Command line of the local cluster: `python hack/localcluster up|down|status`.

Called by hack/cluster-up.sh and hack/cluster-down.sh (make cluster-up, make
cluster-down). `up` leaves the processes running after it returns; `down` stops every
process of the cluster, pods included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a folder: import the package from hack/, and keep this folder off sys.path
    # so that its module names cannot shadow anyone else's.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from localcluster import cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python hack/localcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state", type=Path, default=Path(".local"), help="default: .local")
    parser.add_argument("--keep-data", action="store_true", help="up: keep etcd's data")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    if args.command == "up":
        return _up(state, keep_data=args.keep_data)
    if args.command == "down":
        cluster.stop(state)
        print(f"Stopped the local cluster in {state}.")
        return 0
    return _status(state)


def _up(state: Path, *, keep_data: bool) -> int:
    running = cluster.status(state)
    if running and all(running.values()):
        print(f"The local cluster in {state} already runs.")
        _usage(cluster.load(state))
        return 0
    began = time.monotonic()
    try:
        started = cluster.start(state, keep_data=keep_data)
    except cluster.ClusterError as error:
        cluster.stop(state)
        print(f"The local cluster did not start: {error}", file=sys.stderr)
        return 1
    print(f"The local cluster runs ({time.monotonic() - began:.1f} s to start), in {state}.")
    _usage(started)
    return 0


def _usage(started: cluster.Cluster) -> None:
    kubectl = cluster.BIN_DIR / "kubectl"
    print(
        f"\n  export KUBECONFIG={started.kubeconfig}\n  {kubectl} get nodes\n\n"
        f"Server {started.server}, node {started.node_name}; logs in {started.logs_dir}.\n"
        f"Stop it with: python hack/localcluster down --state {started.state_dir}"
    )


def _status(state: Path) -> int:
    running = cluster.status(state)
    if not running:
        print(f"No local cluster in {state}.")
        return 1
    for name, pid in running.items():
        print(f"{name:<24} {'running, pid ' + str(pid) if pid else 'not running'}")
    return 0 if all(running.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
