"""The runner: one attempt of a run, in its Job's pod (console script `agentrun-runner`).

It reads its AgentRun (a GET of its own object, nothing else), checks that its attempt
owns the checkpoint, loads the history, builds the agent from the spec (`agent`) and runs
it node by node, writing the checkpoint after every model response and every batch of
tool results (`journal`). A resumed run sends no prompt: the history carries it.

Environment: AGENTRUN_NAME, AGENTRUN_NAMESPACE, AGENTRUN_UID, AGENTRUN_ATTEMPT; optional
AGENTRUN_API_KEY (taken out of the environment as soon as it is read, so no tool's process
inherits it; never logged), AGENTRUN_DEFAULT_BASE_URL (the operator's endpoint for runs
that name none), AGENTRUN_LOG_LEVEL, AGENTRUN_MCP_<i>_<header>; and what
`apiserver.credentials` reads.

Exit codes, which the Job's podFailurePolicy maps:

    0      succeeded, or paused for approvals; the record says which
    2      the attempt failed and the record says why (`AttemptFailure`)
    3      fenced: another attempt owns the checkpoint, or the run is gone; nothing written
    other  a crash: the Job starts a new pod, which resumes from the checkpoint

Cold start: about 1 s from process start to the first model request on a two-core
machine (tests/runner/bench.py), nearly all of it imports: the openai SDK 0.3 s, most of
it its `types` package; pydantic-ai 0.3 s; pydantic and the API models 0.1 s; building the
SDK's HTTP client 0.1 s. The API calls take milliseconds, so there is no waiting to
overlap the imports with. The heavy modules are imported only once the attempt is known
to run; the kubernetes client and aiohttp not at all (`apiserver`, `main`). An image must
ship them compiled to bytecode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import sys
import time
import uuid
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from agentrun import api, apiserver, checkpoint, kube

if TYPE_CHECKING:
    from pydantic_ai import Agent, DeferredToolResults, ModelMessage

    from agentrun.journal import Journal
    from agentrun.tools import ToolDeps

__all__ = ["EXIT_FAILED", "EXIT_FENCED", "EXIT_OK", "Settings", "main", "run_attempt"]

log = logging.getLogger("agentrun.runner")

EXIT_OK = 0
EXIT_FAILED = 2
EXIT_FENCED = 3


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the Job tells the runner, from its environment."""

    name: str
    namespace: str
    uid: str
    attempt: int
    api_key: str | None = dataclasses.field(default=None, repr=False)
    default_base_url: str | None = None
    log_level: str = "INFO"

    @property
    def run(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Settings:
        """Read the settings; takes AGENTRUN_API_KEY out of `environ`."""
        missing = [
            key
            for key in ("AGENTRUN_NAME", "AGENTRUN_NAMESPACE", "AGENTRUN_UID", "AGENTRUN_ATTEMPT")
            if not environ.get(key)
        ]
        if missing:
            raise SystemExit(f"agentrun-runner: missing environment: {', '.join(missing)}")
        return cls(
            name=environ["AGENTRUN_NAME"],
            namespace=environ["AGENTRUN_NAMESPACE"],
            uid=environ["AGENTRUN_UID"],
            attempt=int(environ["AGENTRUN_ATTEMPT"]),
            api_key=environ.pop("AGENTRUN_API_KEY", None) or None,
            default_base_url=environ.get("AGENTRUN_DEFAULT_BASE_URL") or None,
            log_level=environ.get("AGENTRUN_LOG_LEVEL") or "INFO",
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `agentrun-runner`; takes no arguments."""
    settings = Settings.from_environ(os.environ)
    _configure_logging(settings.log_level)
    # Start-up builds some 140,000 objects that live as long as the process (pydantic
    # schemas, the openai SDK's types): collections meanwhile free nothing, and every
    # full collection after, the one at exit included, walks them all again. So none
    # until the model is built, then `_started` hides them from the collector. On two
    # cores that saves 0.1 to 0.2 s of CPU before the first model request, 0.4 s at exit.
    gc.disable()
    # The image holds the operator's aiohttp too (kopf needs it), and the openai SDK
    # imports it whenever it is installed, for a transport the runner never uses: 0.2 s
    # of CPU at every start. A None entry makes that import fail as if it were absent.
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]
    sys.exit(asyncio.run(run_attempt(settings)))


def _configure_logging(level: str) -> None:
    sentences = logging.StreamHandler(sys.stdout)
    sentences.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[sentences], force=True)

    # One JSON object a line, nothing around it.
    steps = logging.getLogger("agentrun.steps")
    steps.setLevel(logging.INFO)  # whatever AGENTRUN_LOG_LEVEL says
    steps.propagate = False
    plain = logging.StreamHandler(sys.stdout)
    plain.setFormatter(logging.Formatter("%(message)s"))
    steps.addHandler(plain)

    # Client libraries log every request (and their options at debug): keep them quiet.
    for name in (
        "openai",
        "httpx2",
        "httpcore2",
        "urllib3",
        "kubernetes",
        "mcp",
        "fastmcp",
        "asyncio",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


class _Failed(Exception):
    """The attempt fails with this failure, written to the record."""

    def __init__(self, reason: str, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.final = final


async def run_attempt(settings: Settings) -> int:
    """Run the attempt `settings` names; the exit code."""
    calls = apiserver.connect()
    try:
        return await _Attempt(settings, core=calls, custom=calls).run()
    except checkpoint.Fenced as fenced:
        log.warning(
            "Run %s attempt %d is fenced: %s Exiting.", settings.run, settings.attempt, fenced
        )
        return EXIT_FENCED
    finally:
        calls.close()


class _Attempt:
    def __init__(self, settings: Settings, *, core: Any, custom: Any) -> None:
        self.settings = settings
        self.core = core
        self.custom = custom
        self.messages: list[ModelMessage] = []
        """The history as far as the checkpoint holds it."""
        self.journal: Journal | None = None

    async def run(self) -> int:
        settings = self.settings
        body = self._read_agentrun()
        if body is None:
            return EXIT_FENCED
        index = checkpoint.read_index(self.core, settings.namespace, settings.name)
        if index is None:
            log.warning(
                "Run %s has no checkpoint: nothing was claimed for it. Exiting.", settings.run
            )
            return EXIT_FENCED
        if index.run_uid != settings.uid:
            log.warning(
                "Run %s: the checkpoint belongs to uid %s, not this run's %s. Exiting.",
                settings.run,
                index.run_uid,
                settings.uid,
            )
            return EXIT_FENCED
        if index.record.attempt != settings.attempt:
            log.warning(
                "Run %s: attempt %d owns the checkpoint, not attempt %d. Exiting without writing.",
                settings.run,
                index.record.attempt,
                settings.attempt,
            )
            return EXIT_FENCED
        ended = self._already_ended(index.record)
        if ended is not None:
            return ended

        try:
            return await self._run(body, index)
        except _Failed as failure:
            return await self._fail(index, failure)

    def _read_agentrun(self) -> dict[str, Any] | None:
        settings = self.settings
        try:
            with kube.translated():
                body: dict[str, Any] = self.custom.get_namespaced_custom_object(
                    api.GROUP, api.VERSION, settings.namespace, api.PLURAL, settings.name
                )
        except kube.NotFound:
            log.warning("Run %s is gone. Exiting.", settings.run)
            return None
        if body["metadata"].get("uid") != settings.uid:
            log.warning(
                "Run %s has uid %s, not %s: this pod belongs to a deleted run. Exiting.",
                settings.run,
                body["metadata"].get("uid"),
                settings.uid,
            )
            return None
        return body

    def _already_ended(self, record: api.CheckpointRecord) -> int | None:
        """The exit code again, when a previous pod of this attempt ended it already."""
        if record.outcome in (api.Outcome.SUCCEEDED, api.Outcome.PAUSED):
            log.info(
                "Run %s attempt %d already ended %s.",
                self.settings.run,
                record.attempt,
                record.outcome,
            )
            return EXIT_OK
        failure = record.failure
        if record.outcome == api.Outcome.FAILED and failure and failure.attempt == record.attempt:
            log.info(
                "Run %s attempt %d already failed: %s",
                self.settings.run,
                record.attempt,
                failure.message,
            )
            return EXIT_FAILED
        return None

    async def _run(self, body: dict[str, Any], index: checkpoint.Index) -> int:
        from agentrun import agent, journal, tools

        settings = self.settings
        spec = _spec_of(body)
        loaded = self._load(index)
        writer = checkpoint.Writer(
            self.core,
            namespace=settings.namespace,
            run_name=settings.name,
            run_uid=settings.uid,
            attempt=settings.attempt,
            index=index,
            history=loaded,
        )
        steps = self.journal = journal.Journal(
            writer, run=settings.run, attempt=settings.attempt, messages=len(self.messages)
        )

        limit = spec.limits.timeout_seconds
        if limit is not None and steps.elapsed() >= limit:
            raise _Failed("Timeout", f"The run used its {limit} seconds.", final=True)
        try:
            model = agent.build_model(
                spec, api_key=settings.api_key, default_base_url=settings.default_base_url
            )
        except agent.ModelConfigError as error:
            raise _Failed("InvalidModel", str(error), final=True) from error
        _started()
        deferred = None
        if index.record.pending:
            decided = agent.decisions(spec, index.record.pending)
            if decided.undecided:
                raise _Failed(
                    "DecisionMissing",
                    "The run is paused and these calls have no decision in spec.approvals: "
                    f"{', '.join(decided.undecided)}.",
                )
            deferred = decided.results

        guard = journal.Guard(journal=steps, interrupted=steps.interrupted)
        runnable = agent.build(spec, model=model, capabilities=[guard])
        deps = tools.ToolDeps(
            workspace=Path.cwd().resolve(),
            run_uid=settings.uid,
            tool_timeout=float(spec.limits.tool_timeout_seconds),
        )
        self._log_start(steps, deferred is not None)
        return await self._iterate(runnable, spec=spec, steps=steps, deferred=deferred, deps=deps)

    def _load(self, index: checkpoint.Index) -> checkpoint.History:
        """The history, its messages in `self.messages`; raises _Failed naming a segment
        that does not load."""
        from agentrun import history

        try:
            loaded = checkpoint.load_history(self.core, self.settings.namespace, index.record)
        except checkpoint.CheckpointCorrupt as error:
            raise _Failed("CheckpointCorrupt", str(error), final=True) from error
        try:
            messages = history.decode(loaded.data)
        except history.HistoryInvalid as error:
            segment = loaded.segment_at(error.offset)
            raise _Failed(
                "CheckpointCorrupt",
                f"Segment {segment}: a message of the history no longer loads ({error}).",
                final=True,
            ) from error
        self.messages = messages
        return loaded

    def _log_start(self, steps: Journal, decided: bool) -> None:
        settings, record = self.settings, steps.record
        if not self.messages:
            log.info("Run %s attempt %d started.", settings.run, settings.attempt)
            return
        log.info(
            "Run %s attempt %d resumed from step %d with %d messages%s.",
            settings.run,
            settings.attempt,
            record.step,
            len(self.messages),
            " and the reviewers' decisions" if decided else "",
        )
        for call in record.started:
            log.info(
                "Tool call %s (%s) was interrupted by a crash.", call.tool_call_id, call.tool_name
            )

    async def _iterate(
        self,
        runnable: Agent[ToolDeps, Any],
        *,
        spec: api.AgentRunSpec,
        steps: Journal,
        deferred: DeferredToolResults | None,
        deps: ToolDeps,
    ) -> int:
        from pydantic_ai import CallToolsNode, DeferredToolRequests, ModelRequestNode
        from pydantic_graph import End

        from agentrun import agent, journal

        settings = self.settings
        limit = spec.limits.timeout_seconds
        stored = len(self.messages)
        try:
            async with runnable.iter(
                None if self.messages else spec.prompt,
                message_history=self.messages or None,
                deferred_tool_results=deferred,
                conversation_id=settings.uid,
                run_id=str(uuid.uuid4()),
                deps=deps,
                usage_limits=agent.usage_limits(spec),
                usage=agent.run_usage(steps.record),
                timeout=None if limit is None else limit - steps.elapsed(),
            ) as run:
                node = run.next_node
                while not isinstance(node, End):
                    began = time.monotonic()
                    following = await run.next(node)
                    current = run.all_messages()
                    fresh = current[stored:]
                    # Tool results wait in the next request node until it runs: store them now,
                    # or a resume would run the tools again.
                    if (
                        isinstance(node, CallToolsNode)
                        and isinstance(following, ModelRequestNode)
                        and not any(message is following.request for message in current)
                    ):
                        fresh = [*fresh, following.request]
                    if fresh:
                        await steps.step(
                            fresh,
                            usage=run.usage,
                            seconds=time.monotonic() - began,
                            update={"pending": []},
                        )
                        stored += len(fresh)
                        self.messages = [*self.messages, *fresh]
                    node = following
                assert run.result is not None  # the graph reached End
                output, usage = run.result.output, run.usage
        except Exception as error:
            failure = self._failure_of(_leaf(error))
            if failure is error:
                raise
            raise failure from error

        if isinstance(output, DeferredToolRequests):
            pending = journal.pending_calls(output)
            await steps.end(usage=usage, outcome=api.Outcome.PAUSED, pending=pending)
            log.info(
                "Run %s attempt %d paused: %d calls wait for a decision (%s).",
                settings.run,
                settings.attempt,
                len(pending),
                ", ".join(p.tool_call_id for p in pending),
            )
            steps.log_writes()
            return EXIT_OK
        await steps.end(
            usage=usage,
            outcome=api.Outcome.SUCCEEDED,
            output=journal.cut(str(output), journal.MAX_RECORD_OUTPUT),
            pending=[],
        )
        log.info(
            "Run %s succeeded in attempt %d; model requests over the run: %d.",
            settings.run,
            settings.attempt,
            usage.requests,
        )
        steps.log_writes()
        return EXIT_OK

    def _failure_of(self, error: Exception) -> Exception:
        """Our failure for an error that ended the run; other errors are raised as they are."""
        from pydantic_ai import exceptions as ai

        from agentrun import agent

        if isinstance(error, checkpoint.Fenced | kube.KubeError | _Failed):
            return error
        if isinstance(error, checkpoint.CheckpointFull):
            return _Failed("CheckpointFull", str(error), final=True)
        if isinstance(error, ai.UsageLimitExceeded):
            return _Failed("BudgetExceeded", f"The run reached a limit: {error}", final=True)
        if isinstance(error, ai.RunTimedOut):
            return _Failed("Timeout", "The run used all of spec.limits.timeoutSeconds.", final=True)
        if isinstance(error, ai.ModelHTTPError):
            return _Failed(
                "ModelError",
                f"The model endpoint answered HTTP {error.status_code}: {_detail(error.body)}",
            )
        if isinstance(error, ai.ModelAPIError):
            return _Failed("ModelUnreachable", f"The model endpoint could not be reached: {error}")
        if isinstance(error, agent.McpServerUnreachable):
            return _Failed("McpServerUnreachable", str(error))
        if isinstance(error, ai.UnexpectedModelBehavior):
            return _Failed("ModelError", f"The model's answer could not be used: {error.message}")
        return error

    async def _fail(self, index: checkpoint.Index, failure: _Failed) -> int:
        """Write the failure into the record (the history stays as it is); exit code 2."""
        from agentrun import journal

        settings = self.settings
        writer = checkpoint.Writer(
            self.core,
            namespace=settings.namespace,
            run_name=settings.name,
            run_uid=settings.uid,
            attempt=settings.attempt,
            index=checkpoint.read_index(self.core, settings.namespace, settings.name) or index,
            history=None,
        )
        changes: dict[str, Any] = {
            "outcome": api.Outcome.FAILED,
            "failure": api.AttemptFailure(
                attempt=settings.attempt,
                reason=failure.reason,
                message=str(failure)[: api.MAX_MESSAGE_CHARS],
                final=failure.final,
            ),
        }
        if self.journal is not None:
            changes["elapsed_seconds"] = round(self.journal.elapsed(), 3)
        partial = journal.last_text(self.messages)
        if failure.final and partial:
            changes["output"] = journal.cut(partial, journal.MAX_RECORD_OUTPUT)
        await asyncio.to_thread(writer.commit, writer.record.model_copy(update=changes))
        log.error(
            "Run %s attempt %d failed (%s%s): %s",
            settings.run,
            settings.attempt,
            failure.reason,
            ", final" if failure.final else "",
            failure,
        )
        return EXIT_FAILED


def _started() -> None:
    """Freeze what start-up built and collect garbage again, if `main` paused collections."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _leaf(error: Exception) -> Exception:
    """The error inside a group raised by concurrent tools, when it holds one that matters:
    fencing first, then any other."""
    if not isinstance(error, ExceptionGroup):
        return error
    fenced = error.subgroup(checkpoint.Fenced)
    leaves = (fenced or error).exceptions
    return _leaf(leaves[0]) if leaves else error


def _spec_of(body: dict[str, Any]) -> api.AgentRunSpec:
    try:
        return api.AgentRunSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as error:
        raise _Failed(
            "InvalidSpec", f"The AgentRun's spec does not validate: {error}", final=True
        ) from error


def _detail(body: object) -> str:
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or body
        return str(message)[:500]
    return str(body)[:500] if body else "no details"
