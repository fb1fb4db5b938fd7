"""Start and stop a local control plane in a state directory.

etcd, kube-apiserver, kube-controller-manager and the process-kubelet (kubelet.py) run
as local processes on 127.0.0.1 ports picked free at start, so several clusters run side
by side (pytest-xdist workers each start one). Called by __main__.py (hack/cluster-up.sh,
make cluster-up) and by the pytest fixtures in tests/cluster_fixtures.py.

A state directory holds:
    kubeconfig        the admin's kubeconfig (client certificate in system:masters)
    cluster.json      the server URL and node name, for status and for callers
    pids              one "component pid" line per process started
    pki/              the CA, the serving and client certificates, the SA key pair
    etcd/             etcd's data, wiped on start unless keep_data
    logs/<component>.log
    pods/<namespace>_<name>_<uid>/   one folder per pod the kubelet ran
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localcluster import certs, processes

__all__ = [
    "BIN_DIR",
    "COMPONENTS",
    "CONTROLLERS",
    "Cluster",
    "ClusterError",
    "load",
    "start",
    "status",
    "stop",
]

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = ROOT / "bin"
NODE_NAME = "localcluster"
SERVICE_CIDR = "10.0.0.0/24"
COMPONENTS = ("etcd", "kube-apiserver", "kubelet", "kube-controller-manager")

# The Job controller and the garbage collector are the point; the rest make Deployments,
# namespaces and ServiceAccounts behave. Node lifecycle and taint eviction stay off, so a
# late kubelet heartbeat never evicts a pod.
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "deployment-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
)

_KUBELET = Path(__file__).resolve().parent / "kubelet.py"


class ClusterError(RuntimeError):
    """The cluster could not start; the message carries the failing component's log tail."""


class _PortTaken(ClusterError):
    """Another process took a port between our probe and the component's bind."""


@dataclass(frozen=True)
class Cluster:
    """A running local cluster, as the fixtures and the operator's tests see it."""

    state_dir: Path
    server: str
    """The apiserver's URL, https://127.0.0.1:PORT."""
    node_name: str

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        """The cluster CA: it signed the apiserver's and the kubelet's certificates."""
        return self.state_dir / "pki" / "ca.crt"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    def log(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"


# Popen handles of the clusters this process started, so that stop() can reap them and
# leave no zombies behind in a long pytest session.
_CHILDREN: dict[Path, list[subprocess.Popen[bytes]]] = {}


def start(
    state_dir: Path,
    *,
    bin_dir: Path = BIN_DIR,
    keep_data: bool = False,
    node_name: str = NODE_NAME,
    python: str = sys.executable,
    timeout: float = 120.0,
    exit_with_caller: bool = False,
) -> Cluster:
    """Start a cluster in state_dir and return once pods can run on its node.

    Ready means: the apiserver's /readyz passes, the `default` ServiceAccount exists in
    namespace `default` (the controller-manager works) and the Node is Ready. Whatever
    ran in state_dir before is stopped first. python runs the kubelet and, through the
    PATH it gives pods, their commands: it needs the kubernetes package. With
    exit_with_caller the processes stop when the calling process dies (test sessions);
    without it they outlive it (`up`).
    """
    state_dir = state_dir.resolve()
    stop(state_dir)
    _reset(state_dir, keep_data=keep_data)
    pki = certs.ensure(state_dir / "pki")
    for _ in range(3):
        try:
            return _start_once(
                state_dir, pki=pki, bin_dir=bin_dir, node_name=node_name, python=python,
                deadline=time.monotonic() + timeout, exit_with_caller=exit_with_caller,
            )  # fmt: skip
        except _PortTaken:
            stop(state_dir)
    raise ClusterError("Three attempts found a port taken by someone else; giving up.")


def stop(state_dir: Path) -> None:
    """Stop every process started in state_dir, pods included; a no-op when none runs."""
    state_dir = state_dir.resolve()
    running = status(state_dir)
    # The kubelet first: it stops its pods' process groups itself. A kubelet that died
    # earlier leaves them behind; their pid files catch those.
    if pid := running.get("kubelet"):
        processes.terminate_groups([pid], grace=15)
    processes.terminate_groups(processes.recorded_pids(state_dir.glob("pods/*/*.pid")), grace=2)
    # etcd last: an apiserver whose etcd is gone never finishes a graceful shutdown.
    for names in (("kube-controller-manager", "kube-apiserver"), ("etcd",)):
        processes.terminate_groups([pid for name in names if (pid := running.get(name))], grace=10)
    for child in _CHILDREN.pop(state_dir, []):
        child.wait()
    (state_dir / "pids").unlink(missing_ok=True)


def status(state_dir: Path) -> dict[str, int | None]:
    """Each component's pid while it runs, None once it is gone."""
    state_dir = state_dir.resolve()
    found: dict[str, int | None] = {}
    try:
        lines = (state_dir / "pids").read_text().splitlines()
    except FileNotFoundError:
        return found
    for line in lines:
        name, _, pid_text = line.partition(" ")
        pid = int(pid_text)
        # Every component's arguments name a file in the state directory.
        ours = processes.alive(pid) and processes.belongs_to(pid, f"{state_dir}/")
        found[name] = pid if ours else None
    return found


def load(state_dir: Path) -> Cluster:
    """The cluster last started in state_dir (whether it still runs or not)."""
    state_dir = state_dir.resolve()
    recorded = json.loads((state_dir / "cluster.json").read_text())
    return Cluster(state_dir, server=recorded["server"], node_name=recorded["nodeName"])


def _start_once(
    state_dir: Path,
    *,
    pki: certs.Pki,
    bin_dir: Path,
    node_name: str,
    python: str,
    deadline: float,
    exit_with_caller: bool,
) -> Cluster:
    etcd_port, peer_port, apiserver_port, kcm_port = _free_ports(4)
    cluster = Cluster(state_dir, server=f"https://127.0.0.1:{apiserver_port}", node_name=node_name)
    _write_kubeconfig(cluster, pki)
    (state_dir / "cluster.json").write_text(
        json.dumps({"server": cluster.server, "nodeName": node_name}) + "\n"
    )
    launch = _Launcher(cluster, deadline=deadline, exit_with_caller=exit_with_caller)
    etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"

    etcd_name = _etcd_name(state_dir)
    launch.run("etcd", _etcd_args(bin_dir, state_dir, etcd_name, etcd_url, peer_url))
    launch.wait_for("etcd to be ready", lambda: _etcd_answers_as(etcd_name, etcd_url))

    # The kubelet starts before the apiserver is ready: its Python start-up overlaps the
    # apiserver's, and it retries until the apiserver answers.
    launch.run("kube-apiserver", _apiserver_args(bin_dir, pki, etcd_url, apiserver_port))
    launch.run("kubelet", _kubelet_args(python, cluster, pki))
    admin = _admin_context(pki)
    launch.wait_for("the apiserver to be ready", lambda: _ok(cluster, "/readyz", admin))

    # The controller-manager gives up when the apiserver is not healthy within seconds.
    launch.run("kube-controller-manager", _controller_manager_args(bin_dir, cluster, pki, kcm_port))
    default_sa = "/api/v1/namespaces/default/serviceaccounts/default"
    launch.wait_for("the default ServiceAccount", lambda: _ok(cluster, default_sa, admin))
    launch.wait_for("the node to be Ready", lambda: _node_ready(cluster, admin))
    return cluster


class _Launcher:
    """Starts components, records their pids and waits while watching them live."""

    def __init__(self, cluster: Cluster, *, deadline: float, exit_with_caller: bool) -> None:
        self._cluster = cluster
        self._deadline = deadline
        self._exit_with_caller = exit_with_caller
        self._started: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, name: str, argv: list[str]) -> None:
        child = processes.spawn(
            argv,
            log=self._cluster.log(name),
            cwd=self._cluster.state_dir,
            parent_death_signal=_parent_death_signal(name) if self._exit_with_caller else None,
        )
        self._started[name] = child
        _CHILDREN.setdefault(self._cluster.state_dir, []).append(child)
        with (self._cluster.state_dir / "pids").open("a") as pids:
            pids.write(f"{name} {child.pid}\n")

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        while not check():
            for name, child in self._started.items():
                if child.poll() is not None:
                    raise self._failure(name, child.returncode)
            if time.monotonic() > self._deadline:
                raise ClusterError(f"Timed out waiting for {what}; see {self._cluster.logs_dir}.")
            time.sleep(0.1)

    def _failure(self, name: str, code: int) -> ClusterError:
        tail = "\n".join(self._cluster.log(name).read_text(errors="replace").splitlines()[-20:])
        error = _PortTaken if "address already in use" in tail else ClusterError
        return error(f"{name} exited with code {code} while the cluster started:\n{tail}")


def _parent_death_signal(component: str) -> signal.Signals:
    # The kubelet stops its pods on SIGTERM. The others get SIGKILL: they all die at
    # once, and an apiserver whose etcd went first never finishes a graceful shutdown.
    return signal.SIGTERM if component == "kubelet" else signal.SIGKILL


def _reset(state_dir: Path, *, keep_data: bool) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    wiped = ["pods", "logs"] if keep_data else ["pods", "logs", "etcd"]
    for name in wiped:
        shutil.rmtree(state_dir / name, ignore_errors=True)
    (state_dir / "logs").mkdir()


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is picked, so the ports differ; another
    # process may still grab one before the component binds it (see _PortTaken).
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _etcd_name(state_dir: Path) -> str:
    # Unique to the state directory and stable across restarts with --keep-data, whose
    # stored member keeps the name it was created with.
    return f"localcluster-{hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]}"


def _etcd_args(
    bin_dir: Path, state_dir: Path, name: str, client_url: str, peer_url: str
) -> list[str]:
    return [
        str(bin_dir / "etcd"),
        f"--name={name}",
        f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={name}={peer_url}",
        # A throwaway test store: losing it on a power cut costs nothing, and fsync
        # dominates the apiserver's write latency on small disks.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def _apiserver_args(bin_dir: Path, pki: certs.Pki, etcd_url: str, port: int) -> list[str]:
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={pki.dir / 'apiserver-generated'}",
        f"--tls-cert-file={pki.cert('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # No kube-proxy and no real endpoints: pods reach the apiserver on loopback.
        "--endpoint-reconciler-type=none",
        # Privileged pods pass validation, so that PodSecurity admission is what refuses
        # them in a restricted namespace, as on a real cluster.
        "--allow-privileged=true",
        # kubectl logs: the apiserver calls the kubelet's log server on the node's
        # InternalIP (127.0.0.1) and verifies its certificate against the cluster CA.
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={pki.ca_cert}",
        "--profiling=false",
    ]


def _controller_manager_args(
    bin_dir: Path, cluster: Cluster, pki: certs.Pki, port: int
) -> list[str]:
    return [
        str(bin_dir / "kube-controller-manager"),
        # No authentication or authorization kubeconfig: its port then serves health
        # checks only, and it does not look for a front proxy CA the apiserver lacks.
        f"--kubeconfig={cluster.kubeconfig}",
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
        "--leader-elect=false",
        # Every controller acts as the admin: simpler, and RBAC for controllers is not
        # what the operator's tests exercise.
        "--use-service-account-credentials=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={pki.dir / 'kcm-generated'}",
        "--profiling=false",
    ]


def _kubelet_args(python: str, cluster: Cluster, pki: certs.Pki) -> list[str]:
    return [
        python,
        str(_KUBELET),
        f"--kubeconfig={cluster.kubeconfig}",
        f"--node-name={cluster.node_name}",
        f"--state={cluster.state_dir}",
        f"--tls-cert={pki.cert('kubelet')}",
        f"--tls-key={pki.key('kubelet')}",
        f"--client-ca={pki.ca_cert}",
    ]


def _write_kubeconfig(cluster: Cluster, pki: certs.Pki) -> None:
    def data(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    # The certificates are embedded, so the file works from any directory and copies of
    # it need nothing else.
    text = f"""\
apiVersion: v1
kind: Config
clusters:
- name: localcluster
  cluster:
    server: {cluster.server}
    certificate-authority-data: {data(pki.ca_cert)}
users:
- name: admin
  user:
    client-certificate-data: {data(pki.cert("admin"))}
    client-key-data: {data(pki.key("admin"))}
contexts:
- name: localcluster
  context:
    cluster: localcluster
    user: admin
    namespace: default
current-context: localcluster
"""
    partial = cluster.kubeconfig.with_suffix(".tmp")
    partial.write_text(text)
    partial.chmod(0o600)
    partial.replace(cluster.kubeconfig)


def _admin_context(pki: certs.Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
    return context


def _get(url: str, context: ssl.SSLContext) -> bytes | None:
    """The body of a 200 answer; None for any other answer or no answer."""
    # Loopback only: an http_proxy in the environment must never see these requests.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=2) as answer:
            return answer.read() if answer.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None


def _etcd_answers_as(name: str, client_url: str) -> bool:
    """Whether the etcd answering on client_url is the member called name.

    Should another cluster's etcd have taken the port first, it would answer too; its
    name tells it apart, and ours then exits (see _PortTaken).
    """
    request = urllib.request.Request(f"{client_url}/v3/cluster/member/list", data=b"{}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=2) as answer:
            members = json.loads(answer.read()).get("members", [])
    except (OSError, http.client.HTTPException, ValueError):
        return False
    return any(member.get("name") == name for member in members)


def _ok(cluster: Cluster, path: str, context: ssl.SSLContext) -> bool:
    return _get(cluster.server + path, context) is not None


def _node_ready(cluster: Cluster, context: ssl.SSLContext) -> bool:
    body = _get(f"{cluster.server}/api/v1/nodes/{cluster.node_name}", context)
    if body is None:
        return False
    conditions = json.loads(body).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
