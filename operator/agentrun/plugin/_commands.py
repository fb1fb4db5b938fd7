"""The commands of `kubectl agentrun`: each reads the cluster, decides, acts once, reports.

`main` (the console script `kubectl-agentrun`) runs the Typer app. The deciding is done
by the pure modules (`_review`, `_transcript`, `_tables`); the cluster calls by
`_cluster`. Every command reports failures as one line on stderr and exits 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, ParamSpec

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agentrun import api, kube, names
from agentrun.plugin import _review, _tables, _transcript
from agentrun.plugin._cluster import Cluster, Scope
from agentrun.plugin._errors import PluginError

__all__ = ["app", "main"]

P = ParamSpec("P")

# A decision is sent with the run's resourceVersion; a run that changed meanwhile (the
# operator writes its status often) is read again and the decision retried this often.
_TRIES = 5

_STYLES = {"system": "dim", "user": "bold green", "assistant": "bold cyan", "tool": "yellow"}

app = typer.Typer(
    name="kubectl agentrun",
    help="Review, follow and inspect AgentRuns (agentrun.dev/v1alpha1).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --- options shared by the commands ----------------------------------------------------

# Accepted before the command (`kubectl agentrun -n team list`) and after it
# (`kubectl agentrun list -n team`), as kubectl users type them either way.
Kubeconfig = Annotated[
    str | None,
    typer.Option(
        "--kubeconfig", help="Kubeconfig file; default: $KUBECONFIG, else ~/.kube/config."
    ),
]
Context = Annotated[str | None, typer.Option("--context", help="Kubeconfig context to use.")]
Namespace = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="Namespace; default: the context's, else default."),
]
AllNamespaces = Annotated[
    bool, typer.Option("--all-namespaces", "-A", help="Runs of every namespace.")
]
RunName = Annotated[
    str, typer.Argument(help="Name of the AgentRun.", metavar="RUN", show_default=False)
]
CallIds = Annotated[
    list[str] | None,
    typer.Argument(
        help="Tool call ids; default: every pending call.", metavar="CALL", show_default=False
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Approver = Annotated[
    str | None,
    typer.Option("--approver", help="Who decides; default: your user as the API server knows it."),
]


def _connect(
    ctx: typer.Context, kubeconfig: str | None, context: str | None, namespace: str | None
) -> Cluster:
    given = Scope(kubeconfig=kubeconfig, context=context, namespace=namespace)
    return Cluster(given.over(ctx.obj if isinstance(ctx.obj, Scope) else Scope()))


def _reporting(command: Callable[P, None]) -> Callable[P, None]:
    """Run a command; its errors become one line on stderr and exit status 1."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except (PluginError, kube.KubeError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # The reader went away (`history RUN | head`): say nothing more to it.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None

    return run


@app.callback()
def _global_options(
    ctx: typer.Context,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    namespace: Namespace = None,
) -> None:
    """Review, follow and inspect AgentRuns (agentrun.dev/v1alpha1).

    Uses your kubeconfig and context, as kubectl does.
    """
    ctx.obj = Scope(kubeconfig=kubeconfig, context=context, namespace=namespace)


# --- list and watch ------------------------------------------------------------------


@app.command("list")
@_reporting
def list_runs(
    ctx: typer.Context,
    all_namespaces: AllNamespaces = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    namespace: Namespace = None,
) -> None:
    """List runs: phase, pending calls, model requests, tokens, attempt, age."""
    cluster = _connect(ctx, kubeconfig, context, namespace)
    runs, _ = cluster.runs(all_namespaces=all_namespaces)
    if not runs:
        where = "" if all_namespaces else f" in {cluster.namespace} namespace"
        typer.echo(f"No resources found{where}.", err=True)
        return

    rows = sorted((_tables.row(run) for run in runs), key=lambda r: (r.namespace, r.name))
    header = (("NAMESPACE",) if all_namespaces else ()) + _tables.COLUMNS
    cells = [row.cells(with_namespace=all_namespaces) for row in rows]
    _print_table(header, cells)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    console = Console(highlight=False)
    if not console.is_terminal:
        sys.stdout.write(_tables.plain(header, rows))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for title in header:
        table.add_column(title, no_wrap=True)
    for cells in rows:
        table.add_row(*cells)
    console.print(table)


@app.command()
@_reporting
def watch(
    ctx: typer.Context,
    run: Annotated[
        str | None, typer.Argument(help="Only this run.", metavar="RUN", show_default=False)
    ] = None,
    all_namespaces: AllNamespaces = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop after this many seconds.")
    ] = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    namespace: Namespace = None,
) -> None:
    """Print a line whenever a run's phase, pending calls or requests change."""
    cluster = _connect(ctx, kubeconfig, context, namespace)
    if run is not None:
        cluster.run(run)  # a misspelt name fails now rather than waiting forever

    seen: dict[tuple[str, str], tuple[str, int, int]] = {}
    events = cluster.watch_runs(name=run, all_namespaces=all_namespaces, timeout=timeout)
    for kind, body in events:
        row = _tables.row(body)
        key = (row.namespace, row.name)
        if kind == "DELETED":
            seen.pop(key, None)
        elif seen.get(key) == row.progress:
            continue
        else:
            seen[key] = row.progress
        _print_change(row, deleted=kind == "DELETED", with_namespace=all_namespaces)


def _print_change(row: _tables.Row, *, deleted: bool, with_namespace: bool) -> None:
    name = f"{row.namespace}/{row.name}" if with_namespace else row.name
    when = datetime.now().strftime("%H:%M:%S")
    if deleted:
        line = f"{when}  {name}  deleted"
    else:
        line = (
            f"{when}  {name}  {row.phase}  pending={row.pending}  requests={row.requests}"
            f"  tokens={row.tokens}  attempt={row.attempt}"
        )
    typer.echo(line)
    sys.stdout.flush()


# --- approve and deny --------------------------------------------------------------


@app.command()
@_reporting
def approve(
    ctx: typer.Context,
    run: RunName,
    calls: CallIds = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record.")] = None,
    args: Annotated[
        str | None,
        typer.Option("--args", help="JSON object replacing the call's arguments (one call only)."),
    ] = None,
    approver: Approver = None,
    yes: Yes = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    namespace: Namespace = None,
) -> None:
    """Approve pending tool calls: the ones named, or every pending one after showing them."""
    arguments = None if args is None else _review.parse_arguments(args)
    verdict = _review.Verdict(
        api.Decision.APPROVE, reason=reason, arguments=arguments, approver=approver
    )
    _decide(_connect(ctx, kubeconfig, context, namespace), run, calls or [], verdict, yes=yes)


@app.command()
@_reporting
def deny(
    ctx: typer.Context,
    run: RunName,
    calls: CallIds = None,
    reason: Annotated[
        str,
        typer.Option("--reason", help="Required: why; the model receives it as the call's result."),
    ] = "",
    approver: Approver = None,
    yes: Yes = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    namespace: Namespace = None,
) -> None:
    """Deny pending tool calls with a reason: the ones named, or every pending one."""
    if not reason.strip():
        raise PluginError("deny needs --reason: the model is told why its call was denied.")
    verdict = _review.Verdict(api.Decision.DENY, reason=reason, approver=approver)
    _decide(_connect(ctx, kubeconfig, context, namespace), run, calls or [], verdict, yes=yes)


def _decide(
    cluster: Cluster, run: str, wanted: list[str], verdict: _review.Verdict, *, yes: bool
) -> None:
    """Append one decision per selected call to the run's spec.approvals, then report."""
    verdict = dataclasses.replace(verdict, approver=verdict.approver or cluster.username())
    for _ in range(_TRIES):
        body = cluster.run(run)
        chosen = _review.select(body, wanted)
        entries = _review.entries(chosen, verdict)
        if not wanted:
            _confirm(run, chosen, verdict.decision, yes=yes)
            # From here on the reviewer has agreed to exactly these calls: a retry must
            # not take in a call that became pending after they were shown.
            wanted = [call.tool_call_id for call in chosen]
        try:
            cluster.patch_run(run, _review.patch(body, entries))
        except kube.Conflict:
            continue
        for call in chosen:
            typer.echo(_decided(call, run, verdict))
        return
    raise PluginError(f"Run {run} kept changing while deciding; nothing was decided. Try again.")


def _confirm(
    run: str, calls: Sequence[api.PendingApproval], decision: api.Decision, *, yes: bool
) -> None:
    """Show the calls about to be decided; ask, unless told not to.

    Where nobody can answer (a script, a pipe), deciding every pending call needs --yes:
    a call that became pending since the script was written would otherwise be decided
    unseen."""
    typer.echo(f"Pending calls on run {run}:")
    for call in calls:
        typer.echo(f"  {call.tool_name} ({call.tool_call_id}): {call.arguments or '{}'}")
    if yes:
        return
    if not _can_ask():
        raise PluginError(
            "Nothing was decided: there is no terminal to ask on. Name the calls, or pass "
            "--yes to decide all of them."
        )
    verb = "Approve" if decision == api.Decision.APPROVE else "Deny"
    count = f"{len(calls)} call{'s' if len(calls) != 1 else ''}"
    if not typer.confirm(f"{verb} {count} on run {run}?", default=False):
        raise PluginError("Nothing was decided.")


def _can_ask() -> bool:
    """Whether someone can answer a question: scripts and pipes are not asked."""
    return sys.stdin.isatty()


def _decided(call: api.PendingApproval, run: str, verdict: _review.Verdict) -> str:
    verb = "Approved" if verdict.decision == api.Decision.APPROVE else "Denied"
    line = f"{verb} {call.tool_name} ({call.tool_call_id}) on run {run}"
    if verdict.arguments is not None:
        line += f" with arguments {json.dumps(verdict.arguments, ensure_ascii=False)}"
    return line + "."


# --- history and logs --------------------------------------------------------------


@app.command()
@_reporting
def history(
    ctx: typer.Context,
    run: RunName,
    full: Annotated[bool, typer.Option("--full", help="Do not cut long tool output.")] = False,
    raw: Annotated[
        bool, typer.Option("--json", help="The raw history: pydantic-ai's messages as JSON.")
    ] = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    namespace: Namespace = None,
) -> None:
    """Show the run's conversation from its checkpoint: messages, tool calls and results."""
    cluster = _connect(ctx, kubeconfig, context, namespace)
    cluster.run(run)  # says "not found" plainly, where the checkpoint would not
    data = cluster.history(run)
    if raw:
        sys.stdout.buffer.write(data + b"\n")
        return

    entries = _transcript.render(json.loads(data), full=full)
    if not entries:
        typer.echo(f"Run {run} has no messages yet.")
        return
    console = Console(highlight=False)
    if not console.is_terminal:
        sys.stdout.write(_transcript.to_text(entries))
        return
    for entry in entries:
        console.print(Text(entry.title, style=_STYLES.get(entry.who, "")))
        for line in entry.lines:
            console.print(Text(f"  {line}"))
        console.print()


@app.command()
@_reporting
def logs(
    ctx: typer.Context,
    run: RunName,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the log.")] = False,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="An earlier attempt; default: the current.")
    ] = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    namespace: Namespace = None,
) -> None:
    """Print the logs of the pods of the run's current attempt (its Job), like kubectl logs."""
    cluster = _connect(ctx, kubeconfig, context, namespace)
    job = _job_of(cluster.run(run), attempt)
    pods = cluster.pods(job, wait=follow)
    if not pods:
        raise PluginError(f"Job {job} of run {run} has no pods (not yet, or no longer).")

    # A Job replaces a pod that died, and the new pod resumes the attempt: show each in
    # turn. Following makes sense only for the newest.
    if follow:
        newest = cluster.wait_started(pods[-1])
        if reason := _never_started(newest):
            raise PluginError(reason)
        _copy(cluster.log(newest, follow=True))
        return
    unstarted = {pod["metadata"]["name"]: reason for pod in pods if (reason := _never_started(pod))}
    if len(unstarted) == len(pods):
        raise PluginError(unstarted[pods[-1]["metadata"]["name"]])
    for pod in pods:
        if len(pods) > 1:
            typer.echo(f"==> pod {pod['metadata']['name']} <==")
        if reason := unstarted.get(pod["metadata"]["name"]):
            typer.echo(reason, err=True)
        else:
            _copy(cluster.log(pod, follow=False))


def _never_started(pod: dict[str, Any]) -> str | None:
    """Why the pod has no log to read, when its runner never started: the API server would
    only say that it "could not find the requested resource"."""
    name = pod["metadata"]["name"]
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    runner = next(
        (c for c in statuses if c.get("name") == "runner"), statuses[0] if statuses else None
    )
    if runner is None:
        return f"Pod {name} has not started its runner yet."
    waiting = (runner.get("state") or {}).get("waiting")
    if waiting is None or runner.get("lastState", {}).get("terminated"):
        return None
    why = ": ".join(x for x in (waiting.get("reason"), waiting.get("message")) if x)
    return f"Pod {name} has not started its runner ({why or 'waiting'})."


def _job_of(run: dict[str, Any], attempt: int | None) -> str:
    """The Job of `attempt` (default: the current one) of the run."""
    name = run["metadata"]["name"]
    status = run.get("status") or {}
    current = int(status.get("attempt") or 0)
    if current == 0:
        phase = status.get("phase") or "not set yet"
        raise PluginError(f"Run {name} has not started an attempt yet (phase {phase}).")
    if attempt is None or attempt == current:
        return str(status.get("jobName") or names.job(name, current))
    if not 1 <= attempt < current:
        raise PluginError(f"Run {name} is at attempt {current}; there is no attempt {attempt}.")
    return names.job(name, attempt)


def _copy(chunks: Iterable[bytes]) -> None:
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
        out.flush()


def main() -> None:
    """The console script `kubectl-agentrun`."""
    app(prog_name="kubectl agentrun")
