"""The operator: kopf handlers that keep each AgentRun moving, and the program's entry.

One supervisor (a kopf daemon) per unfinished run reconciles it: it observes the run,
its current Job and its checkpoint record, asks `decisions.decide` what to do, and
applies the plan once. A spec it has not read yet, and a change of its Job that decisions
read (finished, failed, suspended, deleted), wake it early; otherwise it looks again when
the plan says (a backoff ends, an approval times out) or after
`decisions.RECHECK_SECONDS`. Nothing that decides is remembered between reconciles, so a
restarted operator carries on where it stopped; what the wake-up filters remember is a
cache, whose loss costs one reconcile too many.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import random
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any, cast

import kopf
import kubernetes
import pydantic

from agentrun import api, checkpoint, decisions, jobs, kube, metrics, names, rbac

__all__ = ["main", "reconcile"]

log = logging.getLogger("agentrun.operator")

_FINAL = {api.Phase.SUCCEEDED.value, api.Phase.FAILED.value}


@dataclasses.dataclass
class _Clients:
    core: kubernetes.client.CoreV1Api
    batch: kubernetes.client.BatchV1Api
    custom: kubernetes.client.CustomObjectsApi
    rbac: kubernetes.client.RbacAuthorizationV1Api


@dataclasses.dataclass
class _Operator:
    """What the handlers share: clients, runner defaults, wake-up events, run locks."""

    clients: _Clients
    defaults: jobs.RunnerDefaults
    identity: str
    wakers: dict[str, asyncio.Event] = dataclasses.field(default_factory=dict)
    job_views: dict[str, decisions.JobView] = dataclasses.field(default_factory=dict)
    """What each supervised run's current Job last looked like to decisions, by run uid."""
    read_generations: dict[str, int] = dataclasses.field(default_factory=dict)
    """The spec generation each supervised run's last reconcile read, by run uid."""
    locks: dict[str, threading.Lock] = dataclasses.field(default_factory=dict)
    guard: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def exclusive(self, uid: str) -> Iterator[None]:
        """One reconcile of a run at a time, whichever handler asked for it."""
        with self.guard:
            lock = self.locks.setdefault(uid, threading.Lock())
        with lock:
            yield


_operator: _Operator | None = None


def _state() -> _Operator:
    if _operator is None:
        raise RuntimeError("The operator is not configured: start it through main().")
    return _operator


# --- kopf wiring --------------------------------------------------------------------


@kopf.on.login()
def _login(**_: Any) -> kopf.ConnectionInfo:
    """Credentials from `kube.load_config`, which also knows the process-kubelet's token
    path; kopf's own login knows only the standard in-cluster paths."""
    config = kube.load_config()
    token = kube.bearer_token(config) or ""
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        scheme="Bearer" if token else None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


@kopf.on.startup()
async def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Handler progress and the last-handled spec go to annotations: the status is
    # ours alone, and its schema is structural (kopf's fields would be pruned).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # Events are posted by `_post_events` with our own reasons, not kopf's log lines.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 32
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="reconcile")
    )


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in _FINAL


# A run that turns final stops its supervisor (the `when` filter); the backoff lets the
# reconcile in flight finish its writes instead of being cancelled mid-way.
@kopf.daemon(
    api.GROUP,
    api.VERSION,
    api.PLURAL,
    when=_unfinished,
    cancellation_backoff=10,
    cancellation_timeout=10,
)
async def _supervise(
    name: str, namespace: str | None, uid: str, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Reconcile a run until it is final, waking early on events about it."""
    state = _state()
    assert namespace is not None, "AgentRuns are namespaced"
    wake = state.wakers.setdefault(uid, asyncio.Event())
    while not stopped:
        wake.clear()
        delay = await asyncio.to_thread(reconcile, namespace, name)
        if delay is None:
            break
        await _sleep(wake, stopped, delay)
    state.wakers.pop(uid, None)
    state.job_views.pop(uid, None)
    state.read_generations.pop(uid, None)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    """Until woken by an event about the run, told to stop, or `delay` passes."""
    woken = asyncio.ensure_future(wake.wait())
    halted = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({woken, halted}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        halted.cancel()


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def _run_changed(uid: str, type: str | None, meta: kopf.Meta, **_: Any) -> None:
    if type == "DELETED":
        metrics.forget(uid)
    elif not _spec_unread(uid, meta):
        # Our own status writes and kopf's finalizer leave the spec as the supervisor
        # last read it: waking for them would only repeat a reconcile that changes nothing.
        return
    _wake(uid)


def _spec_unread(uid: str, meta: kopf.Meta) -> bool:
    """Whether the run's spec is newer than the one its supervisor last read.

    A reconcile reads the run afresh at its start, so an event about a generation it has
    read already (kopf's finalizer, arriving mid-reconcile) brings nothing new."""
    return bool(meta.get("generation") != _state().read_generations.get(uid))


@kopf.on.event("batch", "v1", "jobs", labels={jobs.RUN_UID_LABEL: kopf.PRESENT})
async def _job_changed(
    type: str | None, body: kopf.Body, labels: Mapping[str, str], **_: Any
) -> None:
    uid = labels[jobs.RUN_UID_LABEL]
    if type != "DELETED" and not _job_view_changed(uid, dict(body)):
        # The Job's creation and the Job controller's bookkeeping (start time, active
        # pods) change nothing decisions read: waking for them would only repeat a
        # reconcile, on the path of every other run's first one.
        return
    _wake(uid)


def _job_view_changed(uid: str, job: dict[str, Any]) -> bool:
    """Whether `job` differs, for decisions, from how the run's supervisor last saw it."""
    views = _state().job_views
    view = jobs.view(job)
    if views.get(uid) == view:
        return False
    views[uid] = view
    return True


def _wake(uid: str) -> None:
    event = _state().wakers.get(uid)
    if event is not None:
        event.set()


# --- one reconcile ------------------------------------------------------------------


def reconcile(namespace: str, name: str) -> float | None:
    """Observe a run, decide, act. Returns seconds until it should be looked at again,
    or None when it needs no more looking after (final, or gone)."""
    state = _state()
    try:
        with kube.translated():
            run = cast(
                dict[str, Any],
                state.clients.custom.get_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, api.PLURAL, name
                ),
            )
    except kube.NotFound:
        return None
    except kube.KubeError as error:
        metrics.reconcile_failed(error)
        log.warning("Could not read AgentRun %s/%s: %s Will retry in 5s.", namespace, name, error)
        return 5.0
    if run["metadata"].get("deletionTimestamp"):
        return None
    state.read_generations[run["metadata"]["uid"]] = run["metadata"].get("generation", 0)

    with state.exclusive(run["metadata"]["uid"]):
        try:
            return _reconcile(state, run)
        except Exception as error:  # the supervisor must outlive any one failure
            metrics.reconcile_failed(error)
            log.exception("Reconciling AgentRun %s/%s failed; will retry in 10s.", namespace, name)
            return 10.0


def _reconcile(state: _Operator, run: dict[str, Any]) -> float | None:
    meta = run["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    before = _status_of(run)

    try:
        spec = api.AgentRunSpec.model_validate(run.get("spec") or {})
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        _fail_now(state, run, before, "InvalidSpec", f"The spec is invalid: {problems}")
        return None
    try:
        record = _read_record(state, namespace, name, before)
    except checkpoint.CheckpointCorrupt as error:
        # Retrying cannot repair it, and a fresh history would silently lose the run's.
        _fail_now(state, run, before, "CheckpointCorrupt", f"The checkpoint is unreadable: {error}")
        return None

    seen = decisions.Observed(
        name=name,
        generation=meta.get("generation", 0),
        spec=spec,
        status=before,
        job=_read_job(state, namespace, before.job_name) if before.attempt else None,
        record=record,
        now=datetime.datetime.now(datetime.UTC),
    )
    plan = decisions.decide(seen)

    if plan.stop_job is not None:
        _stop_job(state, namespace, plan.stop_job)
    if plan.start_attempt is not None:
        _start_attempt(state, run, spec, plan.start_attempt)
    if plan.status.checkpoint is None or not plan.status.checkpoint.config_map:
        plan.status.checkpoint = plan.status.checkpoint or api.CheckpointStatus()
        plan.status.checkpoint.config_map = names.checkpoint_index(name)
    _write_status(state, run, plan.status)
    _post_events(state, run, plan.events)

    metrics.observe(uid, spec.model, before, plan.status)
    for event in plan.events:
        log.info("AgentRun %s/%s: %s", namespace, name, event.message)
    return plan.wake_after


def _status_of(run: dict[str, Any]) -> api.AgentRunStatus:
    raw = run.get("status") or {}
    known = {k: v for k, v in raw.items() if k in _STATUS_KEYS}
    return api.AgentRunStatus.model_validate(known)


_STATUS_KEYS = {f.alias or n for n, f in api.AgentRunStatus.model_fields.items()}


def _fail_now(
    state: _Operator, run: dict[str, Any], before: api.AgentRunStatus, reason: str, message: str
) -> None:
    """End the run Failed at once, for what no attempt can fix."""
    status = before.model_copy(deep=True)
    status.phase, status.reason, status.message = api.Phase.FAILED, reason, message
    status.conditions = decisions.set_phase_condition(
        status.conditions,
        api.Phase.FAILED,
        reason,
        message,
        now=datetime.datetime.now(datetime.UTC),
        generation=run["metadata"].get("generation", 0),
    )
    _write_status(state, run, status)
    _post_events(state, run, (decisions.Event("Warning", reason, message),))


def _read_record(
    state: _Operator, namespace: str, name: str, status: api.AgentRunStatus
) -> api.CheckpointRecord | None:
    """The checkpoint record; none is read before the first attempt, which claims it.

    A record found then was left by a reconcile whose status write was lost, or by a
    deleted run of the same name; the claim of attempt 1 deals with both, and the next
    reconcile reads what it left. Skipping the read saves a round trip on the path from
    apply to Job."""
    if status.attempt == 0:
        return None
    return checkpoint.read_record(state.clients.core, namespace, name)


def _read_job(state: _Operator, namespace: str, job_name: str | None) -> decisions.JobView | None:
    if not job_name:
        return None
    try:
        with kube.translated():
            job = _json(
                state.clients.batch.read_namespaced_job(job_name, namespace, _preload_content=False)
            )
    except kube.NotFound:
        return None
    view = jobs.view(job)
    if view.finished or view.suspended:
        return view
    with kube.translated():
        pods = _json(
            state.clients.core.list_namespaced_pod(
                namespace, label_selector=f"job-name={job_name}", _preload_content=False
            )
        )
    return dataclasses.replace(view, waiting=jobs.waiting_reason(pods.get("items") or []))


def _json(response: Any) -> dict[str, Any]:
    """The body of a `_preload_content=False` answer. Reading the JSON ourselves skips the
    client's models, which cost more CPU than the request itself (a Job's pod template
    alone is hundreds of objects), and the operator needs only a few fields."""
    body: dict[str, Any] = json.loads(response.data)
    return body


def _discard(response: Any) -> None:
    """Read a `_preload_content=False` answer that is not needed, unparsed: reading it to
    the end returns its connection to the pool."""
    response.read()


def _stop_job(state: _Operator, namespace: str, job_name: str) -> None:
    # Background propagation: the Job goes at once and the garbage collector removes
    # its pods, whose processes get SIGTERM and their grace period.
    with contextlib.suppress(kube.NotFound), kube.translated():
        state.clients.batch.delete_namespaced_job(
            job_name, namespace, propagation_policy="Background"
        )


def _start_attempt(
    state: _Operator, run: dict[str, Any], spec: api.AgentRunSpec, attempt: int
) -> None:
    """RBAC first (the pod needs it), then the checkpoint claim (fencing: a runner of an
    older attempt is refused from here on), then the Job.

    One after another on purpose: side by side, a lone run got its Job a few milliseconds
    sooner, but a hundred runs created at once got theirs later (hack/bench.py --only 2),
    since more of them were in flight at once on an API server already at full load."""
    meta = run["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    for obj in rbac.objects(run_name=name, run_uid=uid):
        _create(state, namespace, obj)

    checkpoint.claim(
        state.clients.core, namespace=namespace, run_name=name, run_uid=uid, attempt=attempt
    )

    job = jobs.build(
        run_name=name, run_uid=uid, spec=spec, attempt=attempt, defaults=state.defaults
    )
    _create(state, namespace, job)
    state.job_views[uid] = jobs.view(job)


def _create(state: _Operator, namespace: str, obj: dict[str, Any]) -> None:
    """Create an object; one that already exists was created by an earlier reconcile."""
    creators: dict[str, Any] = {
        "ServiceAccount": state.clients.core.create_namespaced_service_account,
        "Role": state.clients.rbac.create_namespaced_role,
        "RoleBinding": state.clients.rbac.create_namespaced_role_binding,
        "Job": state.clients.batch.create_namespaced_job,
    }
    with contextlib.suppress(kube.AlreadyExists), kube.translated():
        _discard(creators[obj["kind"]](namespace, obj, _preload_content=False))


def _write_status(state: _Operator, run: dict[str, Any], status: api.AgentRunStatus) -> None:
    """Merge-patch only the status fields that changed; a field that went away is nulled."""
    old = run.get("status") or {}
    new = api.dump(status)
    patch = {k: new.get(k) for k in {*old, *new} if k in _STATUS_KEYS and old.get(k) != new.get(k)}
    if not patch:
        return
    meta = run["metadata"]
    with kube.translated():
        response = state.clients.custom.patch_namespaced_custom_object_status(
            api.GROUP,
            api.VERSION,
            meta["namespace"],
            api.PLURAL,
            meta["name"],
            {"status": patch},
            _preload_content=False,
        )
        _discard(response)


def _post_events(
    state: _Operator, run: dict[str, Any], events: tuple[decisions.Event, ...]
) -> None:
    meta = run["metadata"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for event in events:
        body = {
            "metadata": {
                "generateName": f"{names.fit(meta['name'], limit=200)}.",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{api.GROUP}/{api.VERSION}",
                "kind": api.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": "agentrun-operator"},
            "reportingComponent": "agentrun.dev/operator",
            "reportingInstance": state.identity,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            with kube.translated():
                response = state.clients.core.create_namespaced_event(
                    meta["namespace"], cast(Any, body), _preload_content=False
                )
                _discard(response)
        except kube.KubeError as error:
            # An Event is a courtesy: losing one must not stop the run.
            log.warning("Could not post Event %s on %s: %s", event.reason, meta["name"], error)


# --- the program ----------------------------------------------------------------------


def _defaults_from_env() -> jobs.RunnerDefaults:
    secret = os.environ.get("AGENTRUN_DEFAULT_API_KEY_SECRET")
    secret_ref = None
    if secret:
        secret_name, _, key = secret.partition("/")
        secret_ref = api.SecretKeyRef(name=secret_name, key=key or "api-key")
    command = os.environ.get("AGENTRUN_RUNNER_COMMAND", "agentrun-runner").split()
    return jobs.RunnerDefaults(
        image=os.environ.get("AGENTRUN_RUNNER_IMAGE", jobs.RunnerDefaults.image),
        command=tuple(command),
        image_pull_policy=os.environ.get("AGENTRUN_RUNNER_PULL_POLICY", "IfNotPresent"),
        base_url=os.environ.get("AGENTRUN_DEFAULT_BASE_URL") or None,
        api_key_secret=secret_ref,
        log_level=os.environ.get("AGENTRUN_RUNNER_LOG_LEVEL", "INFO"),
        resources=json.loads(os.environ.get("AGENTRUN_RUNNER_RESOURCES") or "{}"),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentrun-operator", description="Run LLM agents as Kubernetes AgentRuns."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--peering", metavar="NAME", help="coordinate replicas through this KopfPeering (HA)"
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness endpoint port")
    parser.add_argument("--verbose", action="store_true", help="log the operator's mechanics")
    return parser


def _watch_namespaces_created_during_startup() -> None:
    """Close a gap in kopf 1.45.2's namespace observer, used when `-n` names a pattern.

    It lists the namespaces, then starts a watch that lists them once more and ignores
    that second listing. A namespace created between the two lists is never watched,
    until the operator restarts: runs applied there wait forever with no status. (An e2e
    test hit it: its namespace was created 0.1 s after the operator started.) Taking the
    second listing in as well adds nothing twice, since kopf keeps the namespaces in a set.
    """
    from kopf._core.reactor import observation

    skipping = observation.process_discovered_namespace_event

    async def taking_every_event(*, raw_event: Any, **kwargs: Any) -> None:
        if raw_event["type"] is None:
            raw_event = {**raw_event, "type": "ADDED"}
        await skipping(raw_event=raw_event, **kwargs)

    # The observer looks the function up by name each time it starts, so this holds.
    observation.process_discovered_namespace_event = taking_every_event


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `agentrun-operator` console script."""
    args = _parser().parse_args(argv)
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf reports every watch-event handler call at INFO; ours say what happened.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    config = kube.load_config()
    config.connection_pool_maxsize = 32
    client = kubernetes.client.ApiClient(config)
    global _operator
    _operator = _Operator(
        clients=_Clients(
            core=kubernetes.client.CoreV1Api(client),
            batch=kubernetes.client.BatchV1Api(client),
            custom=kubernetes.client.CustomObjectsApi(client),
            rbac=kubernetes.client.RbacAuthorizationV1Api(client),
        ),
        defaults=_defaults_from_env(),
        identity=os.environ.get("POD_NAME") or socket.gethostname(),
    )

    from prometheus_client import start_http_server

    start_http_server(args.metrics_port)
    namespaces = args.namespace or [os.environ.get("AGENTRUN_WATCH_NAMESPACE") or "default"]
    log.info(
        "Starting agentrun-operator, watching %s; metrics on :%d, liveness on :%d/healthz.",
        "all namespaces" if args.all_namespaces else ", ".join(namespaces),
        args.metrics_port,
        args.health_port,
    )
    _watch_namespaces_created_during_startup()
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=() if args.all_namespaces else namespaces,
        standalone=args.peering is None,
        peering_name=args.peering,
        # kopf pauses every replica whose priority equals a peer's: each needs its own,
        # so that exactly one works and the others stand by.
        priority=random.randint(1, 1_000_000) if args.peering else 0,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )
