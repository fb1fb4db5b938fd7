"""Fixtures of the runner's end-to-end tests: the real console script, a real API server.

Each test creates AgentRun objects and claims their checkpoint as the operator would,
then starts `agentrun-runner` as a local process with the admin kubeconfig (what the
process-kubelet does with a ServiceAccount token instead), its working directory a
temporary workspace, its model the scripted OpenAI-compatible server. No operator runs:
these tests drive attempts by hand.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from pydantic_ai import ModelMessage

from agentrun import api, checkpoint, history, rbac
from agentrun.modelserver import ScriptedModelServer

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / "bin" / "kubectl"
RUNNER = Path(sys.executable).parent / "agentrun-runner"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    uid: str
    key: str
    """The scripted model's key: the run's model is `openai:<key>`."""


@dataclasses.dataclass(frozen=True)
class Exited:
    code: int
    output: str

    def steps(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("{")]


class Runners:
    """Runs and their attempts in one namespace, as a test drives them."""

    def __init__(
        self,
        *,
        api_client: Any,
        kubeconfig: Path,
        namespace: str,
        model: ScriptedModelServer,
        workspace: Path,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.model = model
        self.workspace = workspace
        self.processes: list[subprocess.Popen[str]] = []

    def create(self, name: str, *, turns: list[dict[str, Any]], **spec: Any) -> Run:
        """An AgentRun named `name` whose model answers with `turns`; attempt 1 claimed."""
        key = f"{self.namespace}-{name}"[:120]
        self.model.set_script(key, turns)
        body: Any = self.custom.create_namespaced_custom_object(
            api.GROUP,
            api.VERSION,
            self.namespace,
            api.PLURAL,
            {
                "apiVersion": f"{api.GROUP}/{api.VERSION}",
                "kind": api.KIND,
                "metadata": {"name": name},
                "spec": {
                    "prompt": "Do the task.",
                    "model": f"openai:{key}",
                    "provider": {"baseURL": self.model.base_url},
                    **spec,
                },
            },
        )
        run = Run(name=name, uid=body["metadata"]["uid"], key=key)
        self.claim(run, 1)
        return run

    def claim(self, run: Run, attempt: int) -> api.CheckpointRecord:
        return checkpoint.claim(
            self.core, namespace=self.namespace, run_name=run.name, run_uid=run.uid, attempt=attempt
        )

    def pod_credentials(self, run: Run, folder: Path) -> dict[str, str]:
        """What the process-kubelet gives a run's pod: the Role the operator grants, a
        token of the run's ServiceAccount in `folder`, and the service's address."""
        objects = rbac.objects(run_name=run.name, run_uid=run.uid)
        for obj in objects:
            self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj))
        account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        answer: Any = self.core.create_namespaced_service_account_token(
            account, self.namespace, request
        )
        cluster = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]
        folder.mkdir()
        (folder / "token").write_text(answer.status.token)
        (folder / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        (folder / "namespace").write_text(self.namespace)
        server = urllib.parse.urlsplit(cluster["server"])
        return {
            "AGENTRUN_SERVICEACCOUNT_DIR": str(folder),
            "KUBERNETES_SERVICE_HOST": str(server.hostname),
            "KUBERNETES_SERVICE_PORT": str(server.port),
        }

    def patch_spec(self, run: Run, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, run.name, {"spec": spec}
        )

    def start(
        self, run: Run, attempt: int, *, credentials: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """The runner of `attempt`, as the admin unless `credentials` (environment) say else."""
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AGENTRUN_", "KUBERNETES_", "KUBECONFIG"))
        }
        environment.update(credentials or {"KUBECONFIG": str(self.kubeconfig)})
        environment.update(
            AGENTRUN_NAME=run.name,
            AGENTRUN_NAMESPACE=self.namespace,
            AGENTRUN_UID=run.uid,
            AGENTRUN_ATTEMPT=str(attempt),
            AGENTRUN_API_KEY="sk-test-never-logged",
            AGENTRUN_LOG_LEVEL="DEBUG",
        )
        process = subprocess.Popen(
            [str(RUNNER)],
            cwd=self.workspace,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

    def run(self, run: Run, attempt: int, *, timeout: float = 120) -> Exited:
        return self.wait(self.start(run, attempt), timeout=timeout)

    @staticmethod
    def wait(process: subprocess.Popen[str], *, timeout: float = 120) -> Exited:
        output, _ = process.communicate(timeout=timeout)
        return Exited(code=process.returncode, output=output)

    def record(self, run: Run) -> api.CheckpointRecord:
        record = checkpoint.read_record(self.core, self.namespace, run.name)
        assert record is not None
        return record

    def history(self, run: Run) -> list[ModelMessage]:
        loaded = checkpoint.load_history(self.core, self.namespace, self.record(run))
        return history.decode(loaded.data)

    def configmaps(self, run: Run) -> list[dict[str, Any]]:
        """The run's checkpoint ConfigMaps, as plain JSON."""
        found: Any = self.core.list_namespaced_config_map(
            self.namespace,
            label_selector=f"{checkpoint.RUN_UID_LABEL}={run.uid}",
            _preload_content=False,
        )
        items: list[dict[str, Any]] = json.loads(found.data)["items"]
        return items

    def requests(self, run: Run) -> list[dict[str, Any]]:
        return self.model.requests(run.key)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def eventually(check: Callable[[], T | None], *, timeout: float = 60, what: str = "") -> T:
    """The first truthy value of `check`, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


@pytest.fixture
def runners(
    api_client: Any,
    kubeconfig: Path,
    namespace: str,
    crd: Path,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> Iterator[Runners]:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    harness = Runners(
        api_client=api_client,
        kubeconfig=kubeconfig,
        namespace=namespace,
        model=model_server,
        workspace=workspace,
    )
    yield harness
    harness.close()
