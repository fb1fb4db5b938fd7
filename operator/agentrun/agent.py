"""Builds the pydantic-ai agent of a run from its spec, the same way in every attempt.

Called by `runner` once per attempt. Instructions, tools and the model come from the
spec each time (pydantic-ai takes instructions from the agent that resumes, not from the
history), so every attempt speaks to the model as the first one did.

Models. With `provider.baseURL` set (or the operator's default endpoint), the runner
speaks chat completions to it whatever the provider prefix: every OpenAI-compatible
server offers that API. Without one, `openai:NAME` also goes to OpenAI's chat completions
endpoint: pydantic-ai maps `openai:` to the Responses API, which compatible servers lack,
and chat completions serves every model a run can use. Other prefixes go through
pydantic-ai's model inference, with the API key given to their provider.

Retries. The openai SDK retries 408, 409, 429, 5xx, timeouts and refused connections
itself, with exponential backoff from 0.5 s capped at 8 s, honouring `retry-after` up to
two minutes. `MODEL_RETRIES` = 3 makes that four tries at most (about 3.5 s of backoff
without `retry-after`); what still fails ends the attempt (see `runner`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic_ai import (
    Agent,
    DeferredToolRequests,
    DeferredToolResults,
    RunUsage,
    Tool,
    ToolApproved,
    ToolDenied,
    UsageLimits,
)
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.models import Model
from pydantic_ai.toolsets import WrapperToolset

from agentrun import api, tools

__all__ = [
    "MODEL_RETRIES",
    "Decisions",
    "McpServerUnreachable",
    "ModelConfigError",
    "build",
    "build_model",
    "decisions",
    "run_usage",
    "usage_limits",
]

MODEL_RETRIES = 3
# A resumed run may ask the model to correct a bad tool call a few times before
# pydantic-ai gives up on it; its default of one retry ends runs over a single typo.
TOOL_RETRIES = 3
UNUSED_API_KEY = "unused"
"""Sent to endpoints that need no key: the openai SDK insists on one."""

Output = str | DeferredToolRequests


class ModelConfigError(Exception):
    """spec.model cannot be served as written; another attempt would not help."""


class McpServerUnreachable(Exception):
    """An MCP server of the spec could not be connected to as the attempt started."""


def build_model(
    spec: api.AgentRunSpec, *, api_key: str | None, default_base_url: str | None
) -> Model:
    """The model of `spec.model` (`provider:name`) at the endpoint the spec names."""
    provider, _, name = spec.model.partition(":")
    base_url = (spec.provider.base_url if spec.provider else None) or default_base_url
    if base_url or provider in ("openai", "openai-chat"):
        return _chat_completions(name, base_url=base_url, api_key=api_key)
    return _inferred(spec.model, provider=provider, api_key=api_key)


def _chat_completions(name: str, *, base_url: str | None, api_key: str | None) -> Model:
    from openai import AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    if base_url is None and not api_key:
        raise ModelConfigError(
            "OpenAI's endpoint needs an API key: set spec.provider.apiKeySecretRef, "
            "or spec.provider.baseURL for an endpoint that needs none."
        )
    client = AsyncOpenAI(
        base_url=base_url, api_key=api_key or UNUSED_API_KEY, max_retries=MODEL_RETRIES
    )
    return OpenAIChatModel(name, provider=OpenAIProvider(openai_client=client))


def _inferred(model: str, *, provider: str, api_key: str | None) -> Model:
    from pydantic_ai.exceptions import UserError
    from pydantic_ai.models import infer_model
    from pydantic_ai.providers import Provider, infer_provider, infer_provider_class

    def with_key(name: str) -> Provider[Any]:
        if api_key is None:
            return infer_provider(name)
        provider_class: Any = infer_provider_class(name)
        instance: Provider[Any] = provider_class(api_key=api_key)
        return instance

    try:
        return infer_model(model, provider_factory=with_key)
    except (UserError, ImportError, ValueError, TypeError) as error:
        raise ModelConfigError(
            f"Model {model!r} cannot be used: {error}. Set spec.provider.baseURL to serve it "
            f"through an OpenAI-compatible endpoint."
        ) from error


def build(
    spec: api.AgentRunSpec,
    *,
    model: Model,
    capabilities: Sequence[AbstractCapability[tools.ToolDeps]] = (),
) -> Agent[tools.ToolDeps, Output]:
    """The agent of a run: the spec's instructions and tools, gated ones behind approval."""
    agent_tools = [_builtin(tool) for tool in spec.tools]
    return Agent(
        model,
        instructions=spec.instructions,
        deps_type=tools.ToolDeps,
        output_type=[str, DeferredToolRequests],
        tools=agent_tools,
        toolsets=[_mcp_toolset(index, server) for index, server in enumerate(spec.mcp_servers)],
        capabilities=list(capabilities),
        retries=TOOL_RETRIES,
    )


_BUILTINS: dict[api.ToolName, Callable[..., Awaitable[str]]] = {
    api.ToolName.FETCH_URL: tools.fetch_url,
    api.ToolName.READ_FILE: tools.read_file,
    api.ToolName.WRITE_FILE: tools.write_file,
    api.ToolName.LIST_FILES: tools.list_files,
    api.ToolName.SHELL: tools.shell,
}


def _builtin(tool: api.BuiltinTool) -> Tool[tools.ToolDeps]:
    name = api.ToolName(tool.name)
    return Tool(
        _BUILTINS[name],
        requires_approval=tool.gated,
        metadata={tools.IDEMPOTENT_METADATA: name.value in tools.IDEMPOTENT},
    )


def _mcp_toolset(index: int, server: api.McpServer) -> Any:
    """The server's tools, named `<server>_<tool>`, the globbed ones behind approval.

    Header values come from the environment (`AGENTRUN_MCP_<index>_<header>`), where the
    Job puts the keys of the server's headers Secret.
    """
    from pydantic_ai.mcp import MCPToolset

    prefix = f"AGENTRUN_MCP_{index}_"
    headers = {
        key[len(prefix) :]: value for key, value in os.environ.items() if key.startswith(prefix)
    }
    toolset = MCPToolset(
        server.url, id=server.name, headers=headers or None, tool_error_behavior="failed"
    )
    patterns = list(server.require_approval)
    gated = toolset.approval_required(
        lambda ctx, tool_def, args: any(fnmatch.fnmatchcase(tool_def.name, p) for p in patterns)
    )
    return _Connecting(gated.prefixed(server.name), server=server)


@dataclasses.dataclass
class _Connecting(WrapperToolset[tools.ToolDeps]):
    """Names the server that could not be reached.

    The MCP client's own error ("Client failed to connect: Name or service not known")
    says neither which server nor that it was one, and is a bare RuntimeError.
    """

    server: api.McpServer

    async def __aenter__(self) -> Self:
        try:
            await self.wrapped.__aenter__()
        except Exception as error:
            # Some servers take their key in the URL's query string; HTTP errors quote it.
            said = str(error)
            parts = urlsplit(self.server.url)
            for secret in filter(None, (parts.query, parts.password)):
                said = said.replace(secret, "***")
            raise McpServerUnreachable(
                f"MCP server {self.server.name} could not be reached: {said}"
            ) from error
        return self


def usage_limits(spec: api.AgentRunSpec) -> UsageLimits:
    """spec.limits as pydantic-ai's limits, always passed: its default caps runs at 50 requests."""
    return UsageLimits(
        request_limit=spec.limits.max_requests,
        total_tokens_limit=spec.limits.max_total_tokens,
    )


def run_usage(record: api.CheckpointRecord) -> RunUsage:
    """The usage of the attempts so far, to start a resumed run's count from."""
    return RunUsage(
        requests=record.requests,
        input_tokens=record.usage.input_tokens,
        output_tokens=record.usage.output_tokens,
    )


@dataclasses.dataclass(frozen=True)
class Decisions:
    """What the spec says about a paused run's pending calls."""

    results: DeferredToolResults
    undecided: list[str]
    """Pending calls with no decision (and no approval timeout that decides for them)."""


def decisions(
    spec: api.AgentRunSpec, pending: Sequence[api.PendingCall], *, now: datetime | None = None
) -> Decisions:
    """The deferred tool results to resume a paused run with.

    Approve runs the call (with `arguments` in place of the model's, if given); Deny
    tells the model it was denied, with the reason. A call nobody decided within
    approvalPolicy.timeoutSeconds counts as denied when onTimeout is Deny.
    """
    now = now or datetime.now(UTC)
    results = DeferredToolResults()
    undecided = []
    for call in pending:
        decision = spec.decision_for(call.tool_call_id)
        if decision is not None:
            results.approvals[call.tool_call_id] = _result_of(decision)
        elif _timed_out(spec.approval_policy, call, now=now):
            assert spec.approval_policy is not None
            results.approvals[call.tool_call_id] = ToolDenied(
                "The call timed out waiting for approval: no decision came within "
                f"{spec.approval_policy.timeout_seconds} seconds; "
                "the call was not run."
            )
        else:
            undecided.append(call.tool_call_id)
    return Decisions(results=results, undecided=undecided)


def _result_of(decision: api.Approval) -> bool | ToolApproved | ToolDenied:
    if decision.decision == api.Decision.DENY:
        return ToolDenied(decision.reason or "A reviewer denied this call.")
    if decision.arguments is not None:
        return ToolApproved(override_args=decision.arguments)
    return True


def _timed_out(policy: api.ApprovalPolicy | None, call: api.PendingCall, *, now: datetime) -> bool:
    if policy is None or policy.timeout_seconds is None or policy.on_timeout != api.OnTimeout.DENY:
        return False
    try:
        requested = datetime.fromisoformat(call.requested_at)
    except ValueError:
        return False
    return now - requested >= timedelta(seconds=policy.timeout_seconds)
