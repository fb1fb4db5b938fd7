"""Pytest fixtures for tests against a real local control plane (hack/localcluster).

Loaded as a plugin by tests/conftest.py. One cluster starts per test session, on free
loopback ports in a temporary state directory (each pytest-xdist worker starts its own),
and stops at the session's end. Missing binaries are built first with
hack/build-control-plane.sh: tests never skip for want of a control plane.

With AGENTRUN_E2E_KUBECONFIG set, the end-to-end tests run against that cluster instead
(kind, with real containers; `make e2e-kind`), and no local control plane starts; see
Target. Only the tests under tests/e2e may run that way.

Fixtures:
    control_plane  session: the running localcluster.cluster.Cluster, with .server (the
                   apiserver's URL), .ca_file, .kubeconfig, .state_dir, .logs_dir,
                   .pods_dir and .node_name; start the operator under test with these.
                   Against an external cluster, an ExternalCluster with .kubeconfig only
    kubeconfig     session: Path of the admin kubeconfig (system:masters)
    api_client     session: a kubernetes.client.ApiClient for the admin
    namespace      function: a fresh namespace named after the test, deleted afterwards
    kubectl        function: a Kubectl bound to the kubeconfig and that namespace

When a test fails, the report gets the tail of each component's log and the logs of
the pods in the test's namespace.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "hack") not in sys.path:
    sys.path.insert(0, str(ROOT / "hack"))

from localcluster import cluster as localcluster  # noqa: E402

__all__ = [
    "KUBECTL",
    "TARGET",
    "ExternalCluster",
    "Kubectl",
    "KubectlError",
    "Target",
    "api_client",
    "control_plane",
    "kubeconfig",
    "kubectl",
    "namespace",
    "wait_until",
]

KUBECTL = localcluster.BIN_DIR / "kubectl"
_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
_LOG_LINES = 40


@dataclass(frozen=True)
class Target:
    """The cluster the tests run against, and how its pods reach servers in this process.

    Locally, pods are processes of this host (the process-kubelet), so a server on
    loopback serves them and images are ignored. Against an external cluster (kind),
    servers listen on every interface and pods reach them at `host`, the address of this
    machine on the nodes' network, and pods run `image`, the project's image.
    """

    kubeconfig: Path | None
    host: str
    image: str

    @classmethod
    def from_environment(cls) -> Target:
        kubeconfig = os.environ.get("AGENTRUN_E2E_KUBECONFIG")
        if not kubeconfig:
            return cls(kubeconfig=None, host="127.0.0.1", image="python")
        return cls(
            kubeconfig=Path(kubeconfig).expanduser(),
            host=os.environ.get("AGENTRUN_E2E_HOST", ""),
            image=os.environ.get("AGENTRUN_E2E_IMAGE", "agentrun-operator:dev"),
        )

    @property
    def external(self) -> bool:
        return self.kubeconfig is not None

    @property
    def bind(self) -> str:
        """The address servers in this process listen on."""
        return "0.0.0.0" if self.external else "127.0.0.1"


TARGET = Target.from_environment()


@dataclass(frozen=True)
class ExternalCluster:
    """A cluster this session did not start: only its kubeconfig is known."""

    kubeconfig: Path


class KubectlError(AssertionError):
    """kubectl exited non-zero where the test expected success."""

    def __init__(self, argv: list[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"kubectl {' '.join(argv[2:])} exited {result.returncode}:\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
        self.result = result


@dataclass(frozen=True)
class Kubectl:
    """Runs bin/kubectl against the test cluster, in namespace unless None."""

    kubeconfig: Path
    namespace: str | None = None

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl with args; KubectlError on a non-zero exit when check is set."""
        argv = [str(KUBECTL), f"--kubeconfig={self.kubeconfig}"]
        if self.namespace is not None:
            argv += ["--namespace", self.namespace]
        argv += args
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(argv, result)
        return result

    def json(self, *args: str, timeout: float = 300) -> Any:
        """The parsed output of `kubectl ARGS -o json`."""
        return json.loads(self(*args, "--output=json", timeout=timeout).stdout)

    def apply(self, *manifests: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
        """kubectl apply the manifests (Python dicts), all in one call."""
        document = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        return self("apply", "--filename=-", input=json.dumps(document))

    def in_namespace(self, namespace: str | None) -> Kubectl:
        return replace(self, namespace=namespace)


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 120, interval: float = 0.5, what: str
) -> Any:
    """Poll condition until it returns something truthy, and return that.

    The timeout only bounds waiting; a slow machine waits longer, it does not fail early.
    """
    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout:g} s waiting for {what}.")
        time.sleep(interval)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not TARGET.external:
        return
    if not TARGET.host:
        raise pytest.UsageError(
            "AGENTRUN_E2E_KUBECONFIG needs AGENTRUN_E2E_HOST: this machine's address as the "
            "cluster's pods reach it (for kind, the gateway of Docker's `kind` network)."
        )
    local_only = [item.nodeid for item in items if "e2e" not in item.path.parts]
    if local_only:
        raise pytest.UsageError(
            "AGENTRUN_E2E_KUBECONFIG runs only the end-to-end tests (tests/e2e); "
            f"{len(local_only)} collected tests need the local control plane, "
            f"{local_only[0]} first."
        )


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[localcluster.Cluster | ExternalCluster]:
    if TARGET.kubeconfig is not None:
        yield ExternalCluster(TARGET.kubeconfig)
        return
    _ensure_binaries()
    state = tmp_path_factory.mktemp("localcluster")
    # Tied to this process: a session killed without teardown leaves no cluster behind.
    started = localcluster.start(state, exit_with_caller=True)
    try:
        yield started
    finally:
        localcluster.stop(state)


@pytest.fixture(scope="session")
def kubeconfig(control_plane: localcluster.Cluster | ExternalCluster) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api_client: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    # The end-to-end tests' operator serves only `e2e-*` namespaces, so that it leaves
    # alone the runs that other tests drive by hand.
    prefix = "e2e-" if "e2e" in Path(str(request.node.path)).parts else ""
    name = _namespace_name(request.node.name, prefix=prefix)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are refused until the serviceaccount controller made the `default` account.
    wait_until(
        lambda: _exists(lambda: core.read_namespaced_service_account("default", name)),
        timeout=60,
        what=f"the default ServiceAccount of namespace {name}",
    )
    yield name
    # Not awaited: the namespace controller and the kubelet finish it in the background.
    try:
        core.delete_namespace(name, _preload_content=False)
    except ApiException as error:
        if error.status != 404:
            raise


@pytest.fixture
def kubectl(kubeconfig: Path, namespace: str) -> Kubectl:
    return Kubectl(kubeconfig, namespace)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    started = funcargs.get("control_plane")
    if report.failed and isinstance(started, localcluster.Cluster):
        for title, text in _diagnostics(started, funcargs.get("namespace")):
            report.sections.append((title, text))
    return report


def _diagnostics(started: localcluster.Cluster, namespace: Any) -> Iterator[tuple[str, str]]:
    for component in localcluster.COMPONENTS:
        yield f"{component} log (last {_LOG_LINES} lines)", _tail(started.log(component))
    if isinstance(namespace, str):
        for log in sorted(started.pods_dir.glob(f"{namespace}_*/*.log")):
            yield f"pod {log.parent.name}, {log.name} (last {_LOG_LINES} lines)", _tail(log)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"(unreadable: {error})"
    return "\n".join(lines[-_LOG_LINES:])


def _ensure_binaries() -> None:
    if all((localcluster.BIN_DIR / name).exists() for name in _BINARIES):
        return
    localcluster.BIN_DIR.mkdir(exist_ok=True)
    # xdist workers start together: one builds, the others wait on the lock.
    with (localcluster.BIN_DIR / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((localcluster.BIN_DIR / name).exists() for name in _BINARIES):
            subprocess.run([str(ROOT / "hack" / "build-control-plane.sh")], check=True)


def _namespace_name(test_name: str, *, prefix: str = "") -> str:
    # A namespace name is a DNS label: at most 63 characters of [a-z0-9-]. A random
    # suffix keeps reruns and parametrised tests apart.
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower().removeprefix("test_")).strip("-")
    base = base[: 57 - len(prefix)].rstrip("-") or "test"
    return f"{prefix}{base}-{secrets.token_hex(3)[:5]}"


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True
