"""A local Kubernetes control plane without Docker, for development and tests.

etcd, kube-apiserver and kube-controller-manager (built from their pinned Go modules into
bin/ by hack/build-control-plane.sh) run as local processes next to a small
process-kubelet that runs pods' commands on the host. Modules:

    cluster     start, stop and inspect a cluster in a state directory
    certs       the CA and certificates (openssl command line)
    processes   spawning, recognising and stopping our processes
    kubelet     the process-kubelet's main program: node, pod watch, bindings
    node        the Node object, its Lease and heartbeat
    podrunner   one pod's containers as processes, and its status reports
    podenv      a container's environment and command line
    podstatus   pod and container status documents
    logserver   the HTTPS endpoint behind `kubectl logs`

Callers: `python hack/localcluster up|down|status` (hack/cluster-up.sh, make cluster-up),
and the pytest fixtures in tests/cluster_fixtures.py. Import with hack/ on sys.path.
"""
