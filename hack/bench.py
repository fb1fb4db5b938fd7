"""The benchmark figures of agentrun-operator (issue 7), all measured in one run.

    make bench                                    # .venv/bin/python hack/bench.py
    .venv/bin/python hack/bench.py --quick        # small sizes: a smoke run of minutes
    .venv/bin/python hack/bench.py --runs 100 --growth 25,50,100 --operator-runs 300
    .venv/bin/python hack/bench.py --only 2 --runs 100 --repeat 5   # latency alone: minutes
    .venv/bin/python hack/bench.py --kubeconfig ~/.kube/config --model-url URL

By default it starts everything it measures in a temporary folder and stops it on exit,
Ctrl-C included: a local control plane (hack/localcluster), the scripted model
(agentrun.modelserver) in this process, and the operator as a host process watching
every namespace, as the end-to-end tests run it. It prints the machine, one row per
figure with its goal, and what the figures are made of. tests/runner/bench.py measures
the runner's checkpoint writes and cold start; this program calls it and adds the rest.

With --kubeconfig it uses that cluster instead: the operator must be the chart's, and
the scripted model an `agentrun-model-server` that pods reach at --model-url. Only
figures 1, 2 and 6 run there; see the README's "Performance" section.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import os
import platform
import queue
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

ROOT = Path(__file__).resolve().parents[1]
# localcluster lives in hack/; tests.runner.bench is imported from the repository root.
sys.path[:0] = [str(ROOT / "hack"), str(ROOT)]

from kubernetes import client  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from tests.runner import bench as runner_bench  # noqa: E402
from tests.runner.conftest import Runners  # noqa: E402

from agentrun import api, checkpoint, jobs, kube, segments  # noqa: E402
from agentrun.modelserver import ScriptedModelServer  # noqa: E402
from localcluster import cluster as localcluster  # noqa: E402

KUBECTL = ROOT / "bin" / "kubectl"
VENV_BIN = Path(sys.executable).parent

AGENTRUNS, JOBS = "AgentRuns", "bare Jobs"
# Milestones of a run seen by the watches: its Job exists; the operator has taken it up
# (kopf adds its finalizer before it starts a run's supervisor daemon).
JOB, PICKUP, DONE = "Job", "finalizer", "done"
CREATORS = 16
"""Threads creating a batch's objects: enough that 200 creates take well under a second."""

LIST_FILES = {"name": "list_files", "arguments": {"path": "."}}
THREE_TURNS: list[dict[str, Any]] = [
    {"tool_calls": [LIST_FILES]},
    {"tool_calls": [LIST_FILES]},
    {"text": "The workspace is empty."},
]
ONE_TURN: list[dict[str, Any]] = [{"text": "Done."}]

# The bare Jobs' minimal client: the same three requests through the openai SDK, a fake
# tool result between them, and no checkpoint, kubernetes client or agent framework.
BARE_CLIENT = textwrap.dedent(
    """\
    import os, openai
    chat = openai.OpenAI(base_url=os.environ["MODEL_BASE_URL"], api_key="unused")
    messages = [{"role": "user", "content": "Do the task."}]
    tools = [{"type": "function", "function": {"name": "list_files",
              "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
    for _ in range(3):
        answer = chat.chat.completions.create(
            model=os.environ["MODEL_KEY"], messages=messages, tools=tools).choices[0].message
        if not answer.tool_calls:
            break
        messages.append(answer.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": call.id, "content": "(empty)"}
                     for call in answer.tool_calls]
    raise SystemExit(0 if answer.content else "no final answer")
    """
)

# What the runner imports before its first model request, aiohttp refused as the runner's
# main does. agentrun.runner imports the heavy modules lazily, so `import agentrun.runner`
# alone would hide nearly all of it.
RUNNER_IMPORTS = "; ".join(
    (
        "import sys; sys.modules['aiohttp'] = None",
        "import agentrun.runner, agentrun.agent, agentrun.journal, agentrun.history",
        "import agentrun.apiserver",
        "import openai, pydantic_ai.models.openai, pydantic_ai.providers.openai",
    )
)
CLIENT_IMPORTS = "import openai"


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says which and why."""


# --- sizes and results ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    runs: int
    """Runs of figures 1 and 2."""
    growth: tuple[int, ...]
    """Sizes of figure 6."""
    operator_runs: int
    """Runs of figure 4."""
    steps: int
    """Steps of figure 3's run."""
    starts: int
    """Cold starts of figure 5."""
    max_pods: int
    """Most pods running at once; 0 leaves it to the cluster."""

    @property
    def batches(self) -> list[int]:
        return sorted({*self.growth, self.runs})


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of runs or bare Jobs, created at once and waited for."""

    kind: str
    size: int
    wall: float
    """Seconds from the first create call to the last object finished (client clock)."""
    latencies: dict[str, list[float]]
    """Per milestone (JOB, PICKUP), seconds from each create call returning to the
    milestone seen by a watch."""
    cpu: dict[str, float]
    """CPU seconds each local process spent during the batch (empty on a real cluster)."""
    writes: tuple[float, float] | None = None
    """Checkpoint requests and bytes per run, from the runners' logs (local cluster)."""


@dataclasses.dataclass(frozen=True)
class Row:
    figure: str
    measured: str
    goal: str = ""
    verdict: str = ""


def verdict(met: bool | None) -> str:
    return {True: "meets", False: "MISSES", None: ""}[met]


# --- reading processes ----------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of a live process from /proc; with children, of its reaped children.

    The process-kubelet reaps each pod's process, so its children's time is the CPU of
    every pod it ran, finished ones included.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 of proc(5): utime and stime are 14 and 15, cutime, cstime 16, 17.
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / _TICKS


def memory_kib(pid: int, field: str) -> int:
    """A `Vm...` line of /proc/<pid>/status, in KiB (VmHWM: the peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field} line.")


def describe_machine(kubernetes_version: str) -> list[str]:
    models = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    memory = memory_field("/proc/meminfo", "MemTotal") / 1024**2
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        f"CPU: {os.cpu_count()} x {models[0] if models else platform.processor()}",
        f"memory: {memory:.1f} GiB; load average at start: {load}",
        f"Python {platform.python_version()}, Kubernetes {kubernetes_version}, "
        f"{platform.system()} {platform.release()}",
    ]


def memory_field(path: str, field: str) -> int:
    found = re.search(rf"^{field}:\s*(\d+)", Path(path).read_text(), re.M)
    if found is None:
        raise BenchError(f"{path} has no {field} line.")
    return int(found.group(1))


# --- the scripted model ---------------------------------------------------------------------------


class Model(Protocol):
    """Where runs send their model requests, and how the bench scripts the answers."""

    @property
    def base_url(self) -> str: ...

    def set_script(self, key: str, turns: Sequence[Mapping[str, Any]]) -> None: ...


@dataclasses.dataclass(frozen=True)
class RemoteModel:
    """An `agentrun-model-server` already running, scripted over its HTTP endpoints."""

    base_url: str
    """As pods reach it, ending in /v1."""
    admin_url: str
    """As this program reaches it (a port-forward, say), ending in /v1."""

    def set_script(self, key: str, turns: Sequence[Mapping[str, Any]]) -> None:
        root = self.admin_url.removesuffix("/").removesuffix("/v1")
        body = json.dumps([dict(turn) for turn in turns]).encode()
        request = urllib.request.Request(f"{root}/_scripts/{key}", data=body, method="PUT")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30):
            pass


# --- the operator ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Operator:
    """`agentrun-operator -A` as a host process, as tests/e2e/conftest.py runs it."""

    def __init__(self, *, kubeconfig: Path, base_url: str, log: Path) -> None:
        self._kubeconfig, self._base_url, self._log = kubeconfig, base_url, log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchError("The operator is not running.")
        return self._process.pid

    def start(self, *, timeout: float = 120) -> None:
        health = free_port()
        argv = [str(VENV_BIN / "agentrun-operator"), "-A", "--metrics-port", str(free_port())]
        env = {
            **os.environ,
            "KUBECONFIG": str(self._kubeconfig),
            "AGENTRUN_DEFAULT_BASE_URL": self._base_url,
        }
        with self._log.open("ab") as out:
            self._process = subprocess.Popen(
                [*argv, "--health-port", str(health)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _answers(f"http://127.0.0.1:{health}/healthz"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"The operator did not become healthy; see {self._log}.")
            time.sleep(0.2)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


# --- the cluster and what runs on it --------------------------------------------------------------


class Bench:
    """What every measurement needs: clients, the model, and our local processes if any."""

    def __init__(
        self,
        kubeconfig: Path,
        model: Model,
        *,
        image: str,
        max_pods: int,
        local: localcluster.Cluster | None = None,
    ) -> None:
        self.kubeconfig, self.model, self.local = kubeconfig, model, local
        self.image = image
        """Image of the bare Jobs (the process-kubelet ignores it)."""
        self.max_pods = max_pods
        self.operator: Operator | None = None
        os.environ["KUBECONFIG"] = str(kubeconfig)
        configuration = kube.load_config()
        # A connection per creating thread and per watch, or the pool churns.
        configuration.connection_pool_maxsize = CREATORS * 2
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    def kubernetes_version(self) -> str:
        return str(client.VersionApi(self.api_client).get_code().git_version)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each local process the figures account for."""
        if self.local is None:
            return {}
        pids = localcluster.status(self.local.state_dir)
        out = {
            name: cpu_seconds(pid)
            for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubelet")
            if (pid := pids.get(name))
        }
        if kubelet := pids.get("kubelet"):
            out["pods"] = cpu_seconds(kubelet, children=True)
        if self.operator is not None:
            out["operator"] = cpu_seconds(self.operator.pid)
        times = os.times()
        out["bench (model, watches)"] = times.user + times.system
        return out

    @contextlib.contextmanager
    def namespace(self, prefix: str) -> Iterator[str]:
        """A fresh namespace, deleted afterwards and waited for, so that the objects of one
        batch cost the next nothing."""
        name = f"{prefix}-{uuid.uuid4().hex[:5]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        try:
            yield name
        except BaseException:
            # Interrupted or failed: no later batch needs the cluster quiet.
            self.delete_namespace(name, wait=False)
            raise
        self.delete_namespace(name)

    def delete_namespace(self, name: str, *, wait: bool = True, timeout: float = 900) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(name)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.core.read_namespace(name, _preload_content=False)
            except ApiException as error:
                if error.status == 404:
                    return
            time.sleep(1)
        say(f"Namespace {name} still terminating after {timeout:.0f} s; going on.")

    def runner_logs(self, namespace: str) -> list[str]:
        """The runner logs of a namespace's pods, from the process-kubelet's pod folders."""
        if self.local is None:
            return []
        folders = self.local.pods_dir.glob(f"{namespace}_*/runner.log")
        return [path.read_text(errors="replace") for path in folders]


def install_crd(kubeconfig: Path) -> None:
    kubectl = [str(KUBECTL), "--kubeconfig", str(kubeconfig)]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", str(ROOT / "crds")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "crd/agentruns.agentrun.dev"],
        check=True,
        capture_output=True,
    )
    # Discovery of a new resource lags a moment behind Established.
    wait_for_agentruns(kubeconfig, timeout=60)


def wait_for_agentruns(kubeconfig: Path, *, timeout: float) -> None:
    kubectl = [str(KUBECTL), "--kubeconfig", str(kubeconfig), "get", "agentruns", "-A"]
    deadline = time.monotonic() + timeout
    while subprocess.run(kubectl, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise BenchError("The cluster serves no AgentRuns: install the chart (its CRD) first.")
        time.sleep(0.5)


# --- watching -------------------------------------------------------------------------------------


class Watch:
    """Events of one resource in one namespace, each stamped with the client's monotonic
    clock as soon as it is read, handed to `on_event(object, seen_at)` on a thread."""

    def __init__(
        self, list_call: Callable[..., Any], on_event: Callable[[dict[str, Any], float], None]
    ) -> None:
        self._list = list_call
        self._on_event = on_event
        self._stopped = threading.Event()
        self._version = self._relist()
        self._thread = threading.Thread(target=self._follow, daemon=True, name="watch")
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _relist(self) -> str:
        # Raw JSON: the client's models cost milliseconds an object, which would delay
        # the timestamps of the events behind.
        answer = json.loads(self._list(_preload_content=False).data)
        for item in answer["items"]:
            self._on_event(item, time.monotonic())
        return str(answer["metadata"]["resourceVersion"])

    def _follow(self) -> None:
        while not self._stopped.is_set():
            try:
                self._stream()
            except Exception as error:  # a dropped watch: list again and carry on
                if self._stopped.is_set():
                    return
                say(f"A watch failed ({error}); listing again.")
                time.sleep(0.5)
                self._version = self._relist()

    def _stream(self) -> None:
        answer = self._list(
            watch=True, resource_version=self._version, allow_watch_bookmarks=True,
            timeout_seconds=60, _preload_content=False, _request_timeout=(10, 90),
        )  # fmt: skip
        try:
            for line in _lines(answer):
                seen = time.monotonic()
                event = json.loads(line)
                if event["type"] == "ERROR":
                    raise BenchError(event["object"].get("message", "watch error"))
                self._version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._on_event(event["object"], seen)
                if self._stopped.is_set():
                    return
        finally:
            answer.release_conn()


def _lines(answer: Any) -> Iterator[bytes]:
    """The lines of a streamed response body as they arrive: one watch event each."""
    pending = b""
    for chunk in answer.stream(amt=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line)


def job_outcome(job: dict[str, Any]) -> str | None:
    """'Complete' or 'Failed' once the Job controller says so, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return None


class Gate:
    """Lets at most `limit` Jobs of a namespace run at once, unsuspending them in order.

    It stands in for the capacity of a node, which the process-kubelet does not enforce:
    it runs every pod bound to it at once, and 200 runners of about 150 MB each would not
    fit in this machine's memory. A real cluster's scheduler holds the surplus pods
    Pending instead. The AgentRuns' Jobs come suspended through spec.queueName (the
    product's Kueue path); the bare Jobs are created suspended.
    """

    def __init__(self, batch: Any, namespace: str, limit: int) -> None:
        self._batch, self._namespace, self._limit = batch, namespace, limit
        self._events: queue.Queue[tuple[str, bool, bool] | None] = queue.Queue()
        self._waiting: collections.deque[str] = collections.deque()
        self._running: set[str] = set()
        self._known: set[str] = set()
        self._thread = threading.Thread(target=self._admit_loop, daemon=True, name="gate")
        self._thread.start()

    def offer(self, job: dict[str, Any]) -> None:
        """Called from the Job watch: the patches happen on the gate's own thread, so that
        they never delay the watch's timestamps."""
        suspended = bool((job.get("spec") or {}).get("suspend"))
        self._events.put((job["metadata"]["name"], suspended, job_outcome(job) is not None))

    def stop(self) -> None:
        self._events.put(None)
        self._thread.join(timeout=10)

    def _admit_loop(self) -> None:
        while (event := self._events.get()) is not None:
            name, suspended, finished = event
            if finished:
                self._running.discard(name)
            elif suspended and name not in self._known:
                self._waiting.append(name)
            self._known.add(name)
            while self._waiting and len(self._running) < self._limit:
                admitted = self._waiting.popleft()
                self._running.add(admitted)
                self._unsuspend(admitted)

    def _unsuspend(self, name: str) -> None:
        for attempt in range(3):
            try:
                self._batch.patch_namespaced_job(
                    name, self._namespace, {"spec": {"suspend": False}}, _preload_content=False
                )
                return
            except ApiException as error:
                say(f"Could not unsuspend Job {name} ({error.reason}); attempt {attempt + 1}.")
                time.sleep(1)


class Progress:
    """What the watches saw of one batch, on the client's monotonic clock."""

    def __init__(self, names: Sequence[str]) -> None:
        self.expected = set(names)
        self.marks: dict[str, dict[str, float]] = collections.defaultdict(dict)
        """Per milestone (JOB, PICKUP, DONE), when each object first reached it."""
        self.failed: dict[str, str] = {}
        self._changed = threading.Condition()

    def mark(self, milestone: str, name: str, at: float) -> None:
        with self._changed:
            if name in self.expected:
                self.marks[milestone].setdefault(name, at)
                self._changed.notify_all()

    def finish(self, name: str, at: float, *, failure: str | None = None) -> None:
        if failure is None:
            self.mark(DONE, name, at)
            return
        with self._changed:
            self.failed.setdefault(name, failure)
            self._changed.notify_all()

    def wait(self, milestone: str, *, timeout: float, what: str) -> float:
        """When the last object reached `milestone`; raises BenchError on a failure or the
        timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(reached := self.marks[milestone]) < len(self.expected):
                if self.failed:
                    name, why = next(iter(self.failed.items()))
                    raise BenchError(f"{what}: {name} failed: {why}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{what}: {len(reached)} of {len(self.expected)} reached {milestone} "
                        f"after {timeout:.0f} s."
                    )
                self._changed.wait(min(left, 5))
            return max(reached.values())


# --- one batch ------------------------------------------------------------------------------------


def agentrun_manifest(name: str, *, key: str, base_url: str, queued: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "prompt": "Do the task.",
        "model": f"openai:{key}",
        "provider": {"baseURL": base_url},
        "tools": [{"name": "list_files"}],
    }
    if queued:
        spec["queueName"] = "bench"
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def bare_job_manifest(
    name: str, *, key: str, base_url: str, image: str, suspended: bool
) -> dict[str, Any]:
    container = {
        "name": "client",
        "image": image,
        "command": ["python", "-c", BARE_CLIENT],
        "env": [
            {"name": "MODEL_BASE_URL", "value": base_url},
            {"name": "MODEL_KEY", "value": key},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "suspend": suspended,
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def create_all(create: Callable[[str], object], names: Sequence[str]) -> dict[str, float]:
    """Create every object at once from a pool of threads: when each create returned."""

    def one(name: str) -> tuple[str, float]:
        create(name)
        return name, time.monotonic()

    pool = concurrent.futures.ThreadPoolExecutor(CREATORS)
    try:
        return dict(pool.map(one, names))
    finally:
        # Interrupted, no create may land once the namespace's deletion has begun: one
        # that slips past admission would wait for the namespace controller's resync.
        pool.shutdown(wait=True, cancel_futures=True)


class Observer:
    """Turns the watches' events into a batch's milestones, and feeds the gate."""

    def __init__(self, kind: str, progress: Progress, gate: Gate | None) -> None:
        self._kind, self._progress, self._gate = kind, progress, gate

    def job(self, job: dict[str, Any], seen: float) -> None:
        name = job["metadata"]["name"]
        if self._kind == AGENTRUNS:
            run = (job["metadata"].get("labels") or {}).get(jobs.RUN_LABEL)
            if run is not None:
                self._progress.mark(JOB, run, seen)
        else:
            self._progress.mark(JOB, name, seen)
            if outcome := job_outcome(job):
                failure = None if outcome == "Complete" else outcome
                self._progress.finish(name, seen, failure=failure)
        if self._gate is not None:
            self._gate.offer(job)

    def run(self, run: dict[str, Any], seen: float) -> None:
        name, status = run["metadata"]["name"], run.get("status") or {}
        if run["metadata"].get("finalizers"):
            self._progress.mark(PICKUP, name, seen)
        if status.get("phase") == "Succeeded":
            self._progress.finish(name, seen)
        elif status.get("phase") == "Failed":
            why = f"{status.get('reason')}: {status.get('message')}"
            self._progress.finish(name, seen, failure=why)


def measure(
    bench: Bench,
    *,
    kind: str,
    namespace: str,
    names: Sequence[str],
    turns: list[dict[str, Any]],
    hold: bool = False,
) -> Batch:
    """Create `names` at once in `namespace`, each running the scripted `turns`, and wait
    until every one has finished; with `hold`, until each has its Job, held suspended."""
    key = namespace
    bench.model.set_script(key, turns)
    progress = Progress(names)
    limit = 0 if hold else bench.max_pods
    gate = Gate(bench.batch, namespace, limit) if hold or limit else None

    observe = Observer(kind, progress, gate)
    watches = [Watch(_lister(bench.batch.list_namespaced_job, namespace), observe.job)]
    if kind == AGENTRUNS:
        runs = _lister(bench.custom.list_namespaced_custom_object, namespace, custom=True)
        watches.append(Watch(runs, observe.run))
        create = _run_creator(bench, namespace, key=key, queued=gate is not None)
    else:
        create = _job_creator(bench, namespace, key=key, suspended=gate is not None)

    before = bench.cpu()
    began = time.monotonic()
    try:
        created = create_all(create, names)
        ended = progress.wait(
            JOB if hold else DONE, timeout=600 + 10 * len(names), what=f"{len(names)} {kind}"
        )
    finally:
        for watch in watches:
            watch.stop()
        if gate is not None:
            gate.stop()
    after = bench.cpu()

    latencies = {
        milestone: [seen[name] - created[name] for name in names if name in seen]
        for milestone, seen in progress.marks.items()
        if milestone != DONE
    }
    cpu = {name: after[name] - before[name] for name in after if name in before}
    writes = checkpoint_writes(bench.runner_logs(namespace)) if kind == AGENTRUNS else None
    return Batch(kind, len(names), ended - began, latencies, cpu, writes)


def _lister(
    call: Callable[..., Any], namespace: str, *, custom: bool = False
) -> Callable[..., Any]:
    if custom:
        return lambda **kw: call(api.GROUP, api.VERSION, namespace, api.PLURAL, **kw)
    return lambda **kw: call(namespace, **kw)


def _run_creator(bench: Bench, namespace: str, *, key: str, queued: bool) -> Callable[[str], Any]:
    def create(name: str) -> Any:
        body = agentrun_manifest(name, key=key, base_url=bench.model.base_url, queued=queued)
        return bench.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, body, _preload_content=False
        )

    return create


def _job_creator(
    bench: Bench, namespace: str, *, key: str, suspended: bool
) -> Callable[[str], Any]:
    def create(name: str) -> Any:
        body = bare_job_manifest(
            name, key=key, base_url=bench.model.base_url, image=bench.image, suspended=suspended
        )
        # The client sends a dict as it is; its models would only be converted back.
        return bench.batch.create_namespaced_job(namespace, cast(Any, body), _preload_content=False)

    return create


def checkpoint_writes(logs: Sequence[str]) -> tuple[float, float] | None:
    """Mean checkpoint requests and request bytes per run, from the runners' last lines."""
    found = [match for text in logs if (match := runner_bench.WRITES.search(text))]
    if not found:
        return None
    requests = statistics.mean(int(match.group(1)) for match in found)
    return requests, statistics.mean(int(match.group(2)) for match in found)


# --- figures 1, 2 and 6: overhead, latency, growth ------------------------------------------------


def compare(bench: Bench, size: int) -> tuple[Batch, Batch]:
    """N bare Jobs, then N AgentRuns, each batch in a namespace of its own."""
    with bench.namespace(f"bench-jobs-{size}") as namespace:
        names = [f"bare-{n:04d}" for n in range(size)]
        bare = measure(bench, kind=JOBS, namespace=namespace, names=names, turns=THREE_TURNS)
    say(f"{size} bare Jobs: {bare.wall:.1f} s.")
    with bench.namespace(f"bench-runs-{size}") as namespace:
        names = [f"run-{n:04d}" for n in range(size)]
        runs = measure(bench, kind=AGENTRUNS, namespace=namespace, names=names, turns=THREE_TURNS)
    say(f"{size} AgentRuns: {runs.wall:.1f} s ({runs.wall / bare.wall:.2f}x).")
    return bare, runs


def held(bench: Bench, size: int) -> Batch:
    """Figure 2 with the operator alone: N AgentRuns whose Jobs stay suspended, so that no
    runner competes with the operator for this machine's cores, as on a cluster whose
    runners have nodes of their own. The runs never start; the namespace goes after."""
    with bench.namespace(f"bench-held-{size}") as namespace:
        names = [f"held-{n:04d}" for n in range(size)]
        return measure(
            bench, kind=AGENTRUNS, namespace=namespace, names=names, turns=ONE_TURN, hold=True
        )


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def spread(values: Sequence[float]) -> str:
    """p50 / p99 in milliseconds."""
    return f"{statistics.median(values) * 1000:.0f} / {percentile(values, 0.99) * 1000:.0f} ms"


def overhead_rows(
    sizes: Sizes, results: Mapping[int, tuple[Batch, Batch]], alone: Batch
) -> list[Row]:
    bare, runs = results[sizes.runs]
    ratio = runs.wall / bare.wall
    latencies, quiet = runs.latencies[JOB], alone.latencies[JOB]
    rows = [
        Row(
            f"1. Operator overhead, {sizes.runs} runs of 3 turns",
            f"{ratio:.2f} = {runs.wall:.0f} s / {bare.wall:.0f} s",
            "<= 1.15",
            verdict(ratio <= 1.15),
        ),
        Row(
            f"2. Apply-to-Job p50 / p99, {sizes.runs} at once",
            spread(latencies),
            "100 / 500 ms",
            verdict(statistics.median(latencies) <= 0.1 and percentile(latencies, 0.99) <= 0.5),
        ),
        Row(
            "2.   the same, Jobs held: no pod running",
            spread(quiet),
            "100 / 500 ms",
            verdict(statistics.median(quiet) <= 0.1 and percentile(quiet, 0.99) <= 0.5),
        ),
    ]
    for size in sizes.growth:
        bare, runs = results[size]
        ratio = runs.wall / bare.wall
        rows.append(
            Row(
                f"6. Growth: overhead at {size} runs",
                f"{ratio:.2f} = {runs.wall:.0f} s / {bare.wall:.0f} s",
                "<= 1.15",
                verdict(ratio <= 1.15),
            )
        )
    return rows


def growth_details(results: Mapping[int, tuple[Batch, Batch]]) -> list[str]:
    """Figure 6 in full: how the wall times, latencies and CPU per run grow with N."""
    lines = [
        "Growth (wall seconds; apply-to-Job and apply-to-finalizer p50 / p99; pod CPU per run):",
        f"  {'runs':>5} {'bare':>6} {'runs':>6} {'ratio':>6}  {'to Job':>16}  "
        f"{'to finalizer':>16}  {'pod CPU':>13}",
    ]
    for size, (bare, runs) in sorted(results.items()):
        pods = "n/a"
        if "pods" in runs.cpu and "pods" in bare.cpu:
            pods = f"{runs.cpu['pods'] / size:.2f} / {bare.cpu['pods'] / size:.2f} s"
        lines.append(
            f"  {size:>5} {bare.wall:>6.1f} {runs.wall:>6.1f} {runs.wall / bare.wall:>6.2f}  "
            f"{spread(runs.latencies[JOB]):>16}  {spread(runs.latencies.get(PICKUP, [0])):>16}  "
            f"{pods:>13}"
        )
    return lines


def explain_overhead(bare: Batch, runs: Batch, imports: Imports | None) -> list[str]:
    """Where the AgentRuns' extra time went, from the CPU each process spent per run."""
    if not runs.cpu:
        return ["No CPU accounting on a cluster this program did not start."]
    size = runs.size
    lines = [f"CPU seconds per run at {size} runs: {AGENTRUNS}, {JOBS}, difference:"]
    extra = {name: (runs.cpu[name] - bare.cpu.get(name, 0.0)) / size for name in runs.cpu}
    for name in sorted(runs.cpu, key=lambda n: -extra[n]):
        lines.append(
            f"  {name:<24} {runs.cpu[name] / size:6.2f}  {bare.cpu.get(name, 0) / size:6.2f}"
            f"  {extra[name]:+6.2f}"
        )
    total = sum(extra.values())
    cores = os.cpu_count() or 1
    lines.append(
        f"  In all {total:+.2f} CPU-s per run: on {cores} cores, {total * size / cores:.0f} s "
        f"of the {runs.wall - bare.wall:.0f} s the AgentRuns took longer."
    )
    top = max(extra, key=lambda name: extra[name])
    if total > 0:
        lines.append(f"  The difference is dominated by {top}: {extra[top] / total:.0%} of it.")
    if imports is not None:
        spent = ", ".join(f"{name} {seconds:.2f}" for name, seconds in imports.packages[:4])
        lines.append(
            f"  Importing costs a runner {imports.runner_cpu:.2f} CPU-s before its first request "
            f"({spent} s by -X importtime), the bare client {imports.client_cpu:.2f} (openai)."
        )
    if runs.writes is not None:
        requests, sent = runs.writes
        lines.append(
            f"  Each run wrote its checkpoint in {requests:.0f} requests of {sent / 1024:.1f} KiB."
        )
    pickup = runs.latencies.get(PICKUP)
    if pickup:
        lines.append(
            f"  Apply-to-Job: kopf's finalizer is seen after {spread(pickup)} (p50 / p99), the "
            f"Job after {spread(runs.latencies[JOB])}."
        )
    return lines


# --- figure 4: the operator's footprint -----------------------------------------------------------


def footprint(bench: Bench, sizes: Sizes) -> list[Row]:
    """A fresh operator over `operator_runs` one-turn runs created in batches: its peak
    resident set, and its CPU per run."""
    operator = bench.operator
    assert operator is not None
    # A fresh process: VmHWM is the peak over a process's whole life.
    operator.stop()
    operator.start()
    # Batches of at most the pods allowed at once: created together, they all run at once.
    batch = sizes.max_pods or 50
    total = sizes.operator_runs
    with bench.namespace("bench-operator") as namespace:
        began = cpu_seconds(operator.pid)
        idle_peak = memory_kib(operator.pid, "VmHWM")
        for first in range(0, total, batch):
            names = [f"op-{n:04d}" for n in range(first, min(total, first + batch))]
            measure(bench, kind=AGENTRUNS, namespace=namespace, names=names, turns=ONE_TURN)
            say(f"Operator footprint: {first + len(names)} of {total} runs done.")
        spent = cpu_seconds(operator.pid) - began
        peak = memory_kib(operator.pid, "VmHWM")
        resident = memory_kib(operator.pid, "VmRSS")
    return [
        Row(
            f"4. Operator peak RSS, {total} runs",
            f"{peak / 1024:.0f} MiB (start {idle_peak / 1024:.0f}, end {resident / 1024:.0f})",
            "< 150 MiB",
            verdict(peak < 150 * 1024),
        ),
        Row(f"4. Operator CPU per run, {total} runs", f"{spent / total * 1000:.0f} ms", "report"),
    ]


# --- figures 3 and 5: the runner, through tests/runner/bench.py -----------------------------------


def runner_figures(bench: Bench, sizes: Sizes) -> tuple[list[Row], list[str], Imports]:
    """Figures 3 and 5 by tests/runner/bench.py, with the naive rewrite and the imports
    added. Runs before the operator starts: these runners are driven by hand."""
    assert isinstance(bench.model, ScriptedModelServer)
    with bench.namespace("bench-runner") as namespace, tempfile.TemporaryDirectory() as folder:
        runners = Runners(
            api_client=bench.api_client, kubeconfig=bench.kubeconfig, namespace=namespace,
            model=bench.model, workspace=Path(folder),
        )  # fmt: skip
        try:
            amplification = _captured(
                runner_bench.write_amplification,
                runners,
                steps=sizes.steps,
                size=runner_bench.SLICE,
            )
            naive = naive_rewrite(bench, namespace, f"amplification-{runner_bench.SLICE}")
            cold = _captured(runner_bench.cold_start, runners, starts=sizes.starts)
        finally:
            runners.close()
    imports = import_profile()
    packages = imports.packages
    rows = amplification_rows(amplification, naive, steps=sizes.steps)
    rows.append(cold_start_row(cold, starts=sizes.starts))
    details = [
        "tests/runner/bench.py said:",
        *_indented(amplification + cold),
        "What the runner imports before its first request (python -X importtime, median of 3):",
        *(f"  {name:<24} {seconds:5.2f} s" for name, seconds in packages[:8]),
        f"  {'all':<24} {sum(seconds for _, seconds in packages):5.2f} s "
        f"({imports.runner_cpu:.2f} CPU-s without -X importtime)",
    ]
    return rows, details, imports


def _captured(function: Callable[..., None], *args: Any, **kwargs: Any) -> str:
    """What a function of tests/runner/bench.py prints: its figures."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        function(*args, **kwargs)
    return out.getvalue()


def _indented(text: str) -> list[str]:
    return [f"  {line.strip()}" for line in text.splitlines() if line.strip()]


def naive_rewrite(bench: Bench, namespace: str, run: str) -> float:
    """Bytes a writer would send that stored the whole history, compressed anew, at every
    step, divided by what the checkpoint stores. Steps are the checkpoint's chunks: each
    holds exactly what one step appended (see agentrun.segments)."""
    record = checkpoint.read_record(bench.core, namespace, run)
    if record is None:
        raise BenchError(f"Run {run} has no checkpoint record.")
    appended = [
        raw
        for segment in record.segments
        for raw in step_bytes(bench.core.read_namespaced_config_map(segment.name, namespace))
    ]
    history, rewritten = b"", 0
    for raw in appended:
        history += raw
        # At the checkpoint's own compression level.
        rewritten += len(zlib.compress(history, segments._LEVEL))
    return rewritten / record.bytes


def step_bytes(segment: Any) -> list[bytes]:
    """The history bytes of each chunk of a segment ConfigMap, in order."""
    chunks = dict(sorted((segment.binary_data or {}).items()))
    raw = b""
    pieces = []
    for data in chunks.values():
        window = raw[-segments.WINDOW :]
        decompressor = zlib.decompressobj(zdict=window) if window else zlib.decompressobj()
        piece = decompressor.decompress(base64.b64decode(data))
        pieces.append(piece)
        raw += piece
    return pieces


def amplification_rows(text: str, naive: float, *, steps: int) -> list[Row]:
    def figure(label: str) -> float:
        found = re.search(rf"{re.escape(label)}: ([\d.]+)", text)
        if found is None:
            raise BenchError(f"tests/runner/bench.py printed no {label!r}:\n{text}")
        return float(found.group(1))

    everything = figure("all checkpoint request bytes / stored")
    chunks = figure("history chunks written / stored")
    return [
        Row(
            f"3. Checkpoint bytes sent / stored, {steps} steps",
            f"{everything:.2f}",
            "<= 1.5",
            verdict(everything <= 1.5),
        ),
        Row(
            "3.   history chunks only",
            f"{chunks:.2f}",
            "<= 1.5",
            verdict(chunks <= 1.5),
        ),
        Row("3.   naive: whole history each step", f"{naive:.1f}", "comparison"),
    ]


def cold_start_row(text: str, *, starts: int) -> Row:
    found = re.search(r"median ([\d.]+) s", text)
    if found is None:
        raise BenchError(f"tests/runner/bench.py printed no cold start:\n{text}")
    median = float(found.group(1))
    return Row(
        f"5. Runner cold start, median of {starts}",
        f"{median:.2f} s",
        "<= 1 s",
        verdict(median <= 1.0),
    )


@dataclasses.dataclass(frozen=True)
class Imports:
    """What importing costs the runner and the bare client, each in a fresh interpreter."""

    packages: list[tuple[str, float]]
    """The runner's import seconds per top-level package (-X importtime), largest first."""
    runner_cpu: float
    """CPU seconds of an interpreter that imports what the runner does, and exits."""
    client_cpu: float
    """The same for the bare client: openai alone."""


def import_profile(repeats: int = 3) -> Imports:
    """Each figure the median of `repeats` fresh interpreters."""
    per_package: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(repeats):
        for name, seconds in _importtime().items():
            per_package[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in per_package.items()}
    return Imports(
        packages=sorted(medians.items(), key=lambda item: -item[1]),
        runner_cpu=statistics.median(_import_cpu(RUNNER_IMPORTS) for _ in range(repeats)),
        client_cpu=statistics.median(_import_cpu(CLIENT_IMPORTS) for _ in range(repeats)),
    )


def _import_cpu(code: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _importtime() -> dict[str, float]:
    code = RUNNER_IMPORTS
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    # "import time: self [us] | cumulative | imported package": the self times of a
    # package's modules add up to what importing it cost, nested imports excluded.
    totals: dict[str, float] = collections.defaultdict(float)
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[0].strip().isdigit():
            package = parts[2].strip().split(".")[0]
            totals[package] += int(parts[0]) / 1e6
    return totals


# --- output ---------------------------------------------------------------------------------------


def say(text: str) -> None:
    """Progress, on stderr, so that stdout holds only the figures."""
    print(f"[{datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def table(rows: Sequence[Row]) -> list[str]:
    header = Row("figure", "measured", "goal", "verdict")
    widths = [max(len(getattr(row, f)) for row in [header, *rows]) for f in ("figure", "measured")]
    goal = max(len(row.goal) for row in [header, *rows])

    def line(row: Row) -> str:
        return (
            f"{row.figure:<{widths[0]}}  {row.measured:<{widths[1]}}  {row.goal:<{goal}}  "
            f"{row.verdict}".rstrip()
        )

    rule = "-" * (widths[0] + widths[1] + goal + 14)
    return [line(header), rule, *(line(row) for row in rows)]


# --- the program ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Sizes]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, help="runs of figures 1 and 2 (default 200)")
    parser.add_argument("--growth", help="sizes of figure 6, comma-separated (default 50,100,200)")
    parser.add_argument("--operator-runs", type=int, help="runs of figure 4 (default 1000)")
    parser.add_argument("--steps", type=int, help="steps of figure 3's run (default 200)")
    parser.add_argument("--starts", type=int, help="cold starts of figure 5 (default 20)")
    parser.add_argument(
        "--max-pods",
        type=int,
        help="most pods running at once (default 32 on the local cluster, 0 = no limit, "
        "the default with --kubeconfig)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only",
        choices=("2", "4"),
        help="one figure alone, to iterate on the operator: 2 with the Jobs held (no pods), "
        "or 4 (local cluster only)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="with --only 2: batches of --runs (default 1)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="measure this cluster; start none")
    parser.add_argument("--model-url", help="with --kubeconfig: the model server as pods see it")
    parser.add_argument("--model-admin-url", help="the same as this program sees it")
    parser.add_argument("--image", default="agentrun-operator:dev", help="bare Jobs' image")
    args = parser.parse_args(argv)
    if args.kubeconfig and not args.model_url:
        parser.error("--kubeconfig needs --model-url: an agentrun-model-server pods can reach.")
    if args.kubeconfig and args.only == "4":
        parser.error("--only 4 measures the operator process: it needs the local cluster.")

    quick = {"runs": 20, "growth": "10,20", "operator_runs": 50, "steps": 50, "starts": 5}
    full = {"runs": 200, "growth": "50,100,200", "operator_runs": 1000, "steps": 200, "starts": 20}
    defaults = quick if args.quick else full

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    sizes = Sizes(
        runs=pick("runs"),
        growth=tuple(int(size) for size in str(pick("growth")).split(",")),
        operator_runs=pick("operator_runs"),
        steps=pick("steps"),
        starts=pick("starts"),
        max_pods=args.max_pods if args.max_pods is not None else (0 if args.kubeconfig else 32),
    )
    return args, sizes


@contextlib.contextmanager
def environment(args: argparse.Namespace, sizes: Sizes) -> Iterator[Bench]:
    """The cluster, the model and (on our own cluster) the operator, stopped on exit."""
    if args.kubeconfig:
        wait_for_agentruns(args.kubeconfig, timeout=10)
        remote = RemoteModel(args.model_url, args.model_admin_url or args.model_url)
        yield Bench(args.kubeconfig, remote, image=args.image, max_pods=sizes.max_pods)
        return
    with contextlib.ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentrun-bench-")))
        say(f"Starting a local control plane in {state}.")
        # Started first, while this process has one thread: the components then die with
        # it even if it is killed (see localcluster.processes.spawn).
        started = localcluster.start(state / "cluster", exit_with_caller=True)
        stack.callback(localcluster.stop, state / "cluster")
        install_crd(started.kubeconfig)
        model = stack.enter_context(ScriptedModelServer())
        bench = Bench(
            started.kubeconfig, model, image=args.image, max_pods=sizes.max_pods, local=started
        )
        bench.operator = Operator(
            kubeconfig=started.kubeconfig, base_url=model.base_url, log=state / "operator.log"
        )
        stack.callback(bench.operator.stop)
        yield bench


def latency_alone(bench: Bench, sizes: Sizes, repeats: int) -> tuple[list[Row], list[str]]:
    """Figure 2 with the Jobs held, `repeats` times: the per-batch figures, and the median
    of each over the batches, since one batch on a shared machine says little; with the
    CPU and API requests per run that explain them."""
    batches = []
    requests: collections.Counter[str] = collections.Counter()
    for repeat in range(repeats):
        before = api_requests(bench)
        batch = held(bench, sizes.runs)
        requests += api_requests(bench) - before
        batches.append(batch)
        say(f"Batch {repeat + 1} of {repeats}: apply-to-Job {spread(batch.latencies[JOB])}.")
    details = ["Per batch: apply-to-Job and apply-to-finalizer p50 / p99; CPU ms per run:"]
    for batch in batches:
        spent = ", ".join(
            f"{name.split()[0]} {seconds / batch.size * 1000:.0f}"
            for name, seconds in batch.cpu.items()
        )
        details.append(
            f"  {spread(batch.latencies[JOB]):>16}  {spread(batch.latencies.get(PICKUP, [0])):>16}"
            f"  {spent}"
        )
    total = repeats * sizes.runs
    common = [f"{name} {count / total:.1f}" for name, count in requests.most_common(12)]
    details += [
        "API requests per run, all clients, batch and namespace deletion included:",
        *(f"  {line}" for line in textwrap.wrap(", ".join(common), 86)),
    ]
    p50 = statistics.median(statistics.median(batch.latencies[JOB]) for batch in batches)
    p99 = statistics.median(percentile(batch.latencies[JOB], 0.99) for batch in batches)
    cpu = statistics.median(batch.cpu.get("operator", 0.0) / batch.size for batch in batches)
    rows = [
        Row(
            f"2. Apply-to-Job p50 / p99, {sizes.runs} held, median of {repeats}",
            f"{p50 * 1000:.0f} / {p99 * 1000:.0f} ms",
            "100 / 500 ms",
            verdict(p50 <= 0.1 and p99 <= 0.5),
        ),
        Row(f"   operator CPU per run, median of {repeats}", f"{cpu * 1000:.0f} ms", "report"),
    ]
    return rows, details


def api_requests(bench: Bench) -> collections.Counter[str]:
    """The API server's request counters so far, by verb, resource and subresource; none
    where its metrics cannot be read (a cluster that does not let us)."""
    answer = subprocess.run(
        [KUBECTL, "--kubeconfig", bench.kubeconfig, "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
    )
    text = answer.stdout if answer.returncode == 0 else ""
    counts: collections.Counter[str] = collections.Counter()
    for labels, value in re.findall(r"^apiserver_request_total\{(.*)\} (\S+)$", text, re.M):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        what = "/".join(filter(None, (fields.get("resource"), fields.get("subresource"))))
        counts[f"{fields.get('verb')} {what}"] += int(float(value))
    return counts


def run_all(
    bench: Bench, sizes: Sizes, *, only: str | None = None, repeat: int = 1
) -> tuple[list[Row], list[str]]:
    if only == "2":
        if bench.operator is not None:
            bench.operator.start()
        say(f"Figure 2 alone: {repeat} x {sizes.runs} AgentRuns whose Jobs stay suspended.")
        return latency_alone(bench, sizes, repeat)
    if only == "4":
        say(f"Figure 4: the operator over {sizes.operator_runs} runs.")
        return footprint(bench, sizes), []

    rows: list[Row] = []
    details: list[str] = []
    imports: Imports | None = None
    if bench.local is not None:
        say("Figures 3 and 5: the runner, by tests/runner/bench.py.")
        runner_rows, details, imports = runner_figures(bench, sizes)
        rows += runner_rows
        assert bench.operator is not None
        bench.operator.start()
    else:
        rows += [Row("3, 4, 5. Runner and operator process figures", "skipped: local cluster only")]

    say(f"Figure 2 alone: {sizes.runs} AgentRuns whose Jobs stay suspended.")
    alone = held(bench, sizes.runs)
    results = {}
    for size in sizes.batches:
        say(f"Figures 1, 2 and 6: {size} bare Jobs, then {size} AgentRuns.")
        results[size] = compare(bench, size)
    rows[:0] = overhead_rows(sizes, results, alone)
    details[:0] = [*explain_overhead(*results[sizes.runs], imports), *growth_details(results)]

    if bench.local is not None:
        say(f"Figure 4: the operator over {sizes.operator_runs} runs.")
        rows += footprint(bench, sizes)
    return sorted(rows, key=lambda row: row.figure[:1]), details


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args, sizes = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that every process and cluster started is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    try:
        with environment(args, sizes) as bench:
            machine = describe_machine(bench.kubernetes_version())
            rows, details = run_all(bench, sizes, only=args.only, repeat=args.repeat)
    except BenchError as error:
        say(f"The benchmark stopped: {error}")
        return 1
    except KeyboardInterrupt:
        say("Interrupted; everything this run started is stopped.")
        return 130
    print(f"agentrun-operator benchmark, {datetime.now():%Y-%m-%d %H:%M}")
    print(*machine, sep="\n")
    print(
        f"sizes: runs {sizes.runs}, growth {','.join(map(str, sizes.growth))}, operator runs "
        f"{sizes.operator_runs}, steps {sizes.steps}, starts {sizes.starts}, "
        f"max pods at once {sizes.max_pods or 'unlimited'}"
    )
    print()
    print(*table(rows), sep="\n")
    print()
    print(*details, sep="\n")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"\nWall time of the benchmark: {time.monotonic() - began:.0f} s; load average: {load}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
