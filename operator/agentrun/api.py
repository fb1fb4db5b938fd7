"""The AgentRun API, `agentrun.dev/v1alpha1`: the single source of truth.

The spec and status models here generate the CustomResourceDefinition (see
`crd`), and both programs read and write resources through them: the operator
validates what the schema cannot and writes status; the runner reads the spec.
The checkpoint's wire records live here too, since both programs read them.

This module imports no framework (kopf, the kubernetes client, pydantic-ai):
an import-linter contract keeps it that way.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "AgentRunSpec",
    "AgentRunStatus",
    "Approval",
    "ApprovalPolicy",
    "BuiltinTool",
    "Condition",
    "Decision",
    "Limits",
    "McpServer",
    "OnTimeout",
    "PendingApproval",
    "Phase",
    "PodTemplate",
    "Provider",
    "Retry",
    "SecretKeyRef",
    "SecretRef",
    "ToolName",
    "Usage",
]

GROUP = "agentrun.dev"
VERSION = "v1alpha1"
KIND = "AgentRun"
PLURAL = "agentruns"
SINGULAR = "agentrun"
SHORT_NAMES = ["ar"]

# kopf keeps a copy of the last handled spec in an annotation, and all annotations of
# an object share a 256 KiB budget: the two free-text fields stay well below half of it.
MAX_PROMPT_CHARS = 65536
MAX_INSTRUCTIONS_CHARS = 32768

# Bounds that keep CEL rules within the API server's cost budget and status readable.
MAX_TOOLS = 16
MAX_MCP_SERVERS = 16
MAX_APPROVALS = 256
MAX_ID_CHARS = 256
MAX_OUTPUT_CHARS = 32768
MAX_PENDING_ARGUMENT_CHARS = 4096
MAX_MESSAGE_CHARS = 2048

# Fields whose change would rewrite a history that already exists.
IMMUTABLE_FIELDS = ("prompt", "model", "instructions", "provider", "tools", "mcpServers")


class _Model(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        use_attribute_docstrings=True,
    )


class ToolName(enum.StrEnum):
    """The built-in tools that ship in the runner's image."""

    FETCH_URL = "fetch_url"
    READ_FILE = "read_file"
    WRITE_FILE = "write_file"
    LIST_FILES = "list_files"
    SHELL = "shell"


class Decision(enum.StrEnum):
    APPROVE = "Approve"
    DENY = "Deny"


class OnTimeout(enum.StrEnum):
    DENY = "Deny"
    FAIL = "Fail"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    AWAITING_APPROVAL = "AwaitingApproval"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def is_final(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


Name = Annotated[str, Field(min_length=1, max_length=253)]


class SecretKeyRef(_Model):
    """One key of a Secret in the run's namespace."""

    name: Name
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key within the Secret."""


class SecretRef(_Model):
    """A whole Secret in the run's namespace."""

    name: Name
    """Name of the Secret."""


class Provider(_Model):
    """Where the model is served, when not at the provider's public endpoint."""

    base_url: Annotated[str | None, Field(alias="baseURL", max_length=2048)] = None
    """Base URL of an OpenAI-compatible endpoint (vLLM, Ollama, LiteLLM, Azure OpenAI...),
    for example `http://vllm.models:8000/v1`. When set, the runner speaks the chat
    completions API to it."""
    api_key_secret_ref: Annotated[SecretKeyRef | None, Field(alias="apiKeySecretRef")] = None
    """Secret key holding the API key. It reaches the runner's pod only as an environment
    variable from the Secret, never through status, ConfigMaps, Events or logs."""


class BuiltinTool(_Model):
    """A built-in tool the agent may call."""

    name: ToolName
    """One of fetch_url, read_file, write_file, list_files, shell."""
    requires_approval: Annotated[bool | None, Field(alias="requiresApproval")] = None
    """Whether each call waits for a human decision in spec.approvals. Defaults to true for
    shell and false for the others."""

    @property
    def gated(self) -> bool:
        if self.requires_approval is None:
            return self.name == ToolName.SHELL
        return self.requires_approval


class McpServer(_Model):
    """A remote MCP server (streamable HTTP) whose tools the agent may call."""

    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ]
    """Name of the server, unique in the run; prefixes its tools' names."""
    url: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://")]
    """Streamable-HTTP endpoint of the server, for example `http://tools.svc:8000/mcp`."""
    headers_secret_ref: Annotated[SecretRef | None, Field(alias="headersSecretRef")] = None
    """Secret whose keys and values are sent as HTTP headers (for example Authorization)."""
    require_approval: Annotated[
        list[Annotated[str, Field(max_length=256)]], Field(alias="requireApproval", max_length=64)
    ] = []
    """Glob patterns (fnmatch) of this server's tool names whose calls wait for approval."""


class Approval(_Model):
    """A human decision on one pending tool call. Decided entries cannot change."""

    tool_call_id: Annotated[str, Field(alias="toolCallId", min_length=1, max_length=MAX_ID_CHARS)]
    """Id of the pending call, as shown in status.pendingApprovals."""
    decision: Decision
    """Approve runs the call; Deny tells the model it was denied."""
    reason: Annotated[str | None, Field(max_length=MAX_MESSAGE_CHARS)] = None
    """Why; on Deny the model receives it as the call's result."""
    arguments: Annotated[
        dict[str, Any] | None,
        Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
    ] = None
    """On Approve, arguments that replace the ones the model proposed."""
    approver: Annotated[str | None, Field(max_length=MAX_ID_CHARS)] = None
    """Who decided. The optional admission policy requires it to equal the requesting user."""


class ApprovalPolicy(_Model):
    """What happens to calls nobody decides on."""

    timeout_seconds: Annotated[int | None, Field(alias="timeoutSeconds", ge=1)] = None
    """How long a pending call may wait for a decision; unset waits forever."""
    on_timeout: Annotated[OnTimeout, Field(alias="onTimeout")] = OnTimeout.DENY
    """Deny tells the model the call timed out waiting for approval and goes on;
    Fail ends the run Failed with reason ApprovalTimeout."""


class Limits(_Model):
    """Bounds on the whole run, across attempts. A run stopped by a limit ends Failed with
    reason BudgetExceeded or Timeout and keeps its partial output."""

    max_requests: Annotated[int | None, Field(alias="maxRequests", ge=1, le=100000)] = 50
    """Most model requests over the run."""
    max_total_tokens: Annotated[int | None, Field(alias="maxTotalTokens", ge=1)] = None
    """Most input plus output tokens over the run; unset means no token bound."""
    timeout_seconds: Annotated[int | None, Field(alias="timeoutSeconds", ge=1)] = None
    """Bound on the time the run's attempts spend running, summed; approval waits excluded."""
    tool_timeout_seconds: Annotated[int, Field(alias="toolTimeoutSeconds", ge=1, le=86400)] = 120
    """Bound on one tool call."""


class Retry(_Model):
    """What happens after a failed attempt."""

    max_attempts: Annotated[int, Field(alias="maxAttempts", ge=1, le=100)] = 3
    """Most attempts that may fail before the run is Failed."""
    backoff_seconds: Annotated[int, Field(alias="backoffSeconds", ge=0, le=86400)] = 10
    """Wait before the next attempt after a failed one."""


_PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}


class PodTemplate(_Model):
    """Overrides for the runner's pod."""

    image: Annotated[str | None, Field(max_length=1024)] = None
    """Runner image; defaults to the operator's configured runner image."""
    resources: Annotated[dict[str, Any] | None, Field(json_schema_extra=_PRESERVE)] = None
    """Container resources (requests, limits), as in a Pod."""
    env: Annotated[
        list[dict[str, Any]],
        Field(max_length=64, json_schema_extra={"items": {"type": "object", **_PRESERVE}}),
    ] = []
    """Extra environment variables of the runner container, as in a Pod."""
    node_selector: Annotated[dict[str, str] | None, Field(alias="nodeSelector")] = None
    """Node selector of the runner's pod."""
    tolerations: Annotated[
        list[dict[str, Any]],
        Field(max_length=64, json_schema_extra={"items": {"type": "object", **_PRESERVE}}),
    ] = []
    """Tolerations of the runner's pod."""
    service_account_name: Annotated[
        str | None, Field(alias="serviceAccountName", max_length=253)
    ] = None
    """Run the pod as this ServiceAccount instead of the one the operator creates for the
    run. It needs the same permissions: read this AgentRun, read and write its checkpoint."""


class AgentRunSpec(_Model):
    """What to run: a prompt, a model, the tools the agent may use, and human decisions."""

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    """The user message that starts the run. Immutable."""
    model: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[a-z0-9][a-z0-9-]*:.+$")]
    """Model as `provider:name`, for example `openai:gpt-4o`. Immutable."""
    instructions: Annotated[str | None, Field(max_length=MAX_INSTRUCTIONS_CHARS)] = None
    """System prompt. Immutable."""
    provider: Provider | None = None
    """Endpoint and credentials of the model. Immutable."""
    tools: Annotated[list[BuiltinTool], Field(max_length=MAX_TOOLS)] = []
    """Built-in tools the agent may call; none when omitted. Immutable."""
    mcp_servers: Annotated[
        list[McpServer], Field(alias="mcpServers", max_length=MAX_MCP_SERVERS)
    ] = []
    """Remote MCP servers whose tools the agent may call. Immutable."""
    approvals: Annotated[list[Approval], Field(max_length=MAX_APPROVALS)] = []
    """Decisions on pending tool calls, keyed by toolCallId. Append-only."""
    approval_policy: Annotated[ApprovalPolicy | None, Field(alias="approvalPolicy")] = None
    """What happens to calls nobody decides on."""
    limits: Limits = Limits()
    """Bounds on requests, tokens and time."""
    retry: Retry = Retry()
    """Attempts and backoff after failures."""
    suspend: bool = False
    """True stops the running pod and keeps the checkpoint; false resumes from it."""
    template: PodTemplate | None = None
    """Overrides for the runner's pod."""
    queue_name: Annotated[str | None, Field(alias="queueName", max_length=63)] = None
    """Kueue LocalQueue to submit the run's Jobs to; Kueue decides when they start."""

    def tool(self, name: ToolName) -> BuiltinTool | None:
        return next((t for t in self.tools if t.name == name), None)

    def decision_for(self, tool_call_id: str) -> Approval | None:
        return next((a for a in self.approvals if a.tool_call_id == tool_call_id), None)


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: str
    """Succeeded, Failed, Running, AwaitingApproval or Suspended."""
    status: str
    """True, False or Unknown."""
    reason: str = ""
    """One CamelCase word saying why."""
    message: str = ""
    """Why, for people."""
    last_transition_time: Annotated[str, Field(alias="lastTransitionTime")] = ""
    """When the status last changed (RFC 3339)."""
    observed_generation: Annotated[int | None, Field(alias="observedGeneration")] = None
    """The spec generation the condition was computed from."""


class Usage(_Model):
    """Tokens used by the run's model requests."""

    input_tokens: Annotated[int, Field(alias="inputTokens")] = 0
    """Tokens sent to the model."""
    output_tokens: Annotated[int, Field(alias="outputTokens")] = 0
    """Tokens the model produced."""
    total_tokens: Annotated[int, Field(alias="totalTokens")] = 0
    """Input plus output tokens."""


class PendingApproval(_Model):
    """A tool call waiting for a decision."""

    tool_call_id: Annotated[str, Field(alias="toolCallId")]
    """Id to name in spec.approvals."""
    tool_name: Annotated[str, Field(alias="toolName")]
    """The tool the model wants to call."""
    arguments: str = ""
    """The call's arguments as JSON text, cut to a bound."""
    requested_at: Annotated[str, Field(alias="requestedAt")] = ""
    """When the model asked (RFC 3339)."""


class CheckpointStatus(_Model):
    """Where the run's checkpoint is and how big."""

    config_map: Annotated[str, Field(alias="configMap")] = ""
    """Name of the checkpoint's index ConfigMap."""
    segments: int = 0
    """ConfigMaps holding the history."""
    messages: int = 0
    """Messages in the history."""
    bytes: int = 0
    """Compressed bytes of the history."""
    last_write_time: Annotated[str, Field(alias="lastWriteTime")] = ""
    """When the runner last wrote it (RFC 3339)."""


class AgentRunStatus(_Model):
    """What the operator observed and did. Written by the operator only."""

    phase: Phase | None = None
    """Pending, Running, AwaitingApproval, Suspended, Succeeded or Failed."""
    conditions: list[Condition] = []
    """Kubernetes-style conditions, one per phase the run has been in."""
    observed_generation: Annotated[int | None, Field(alias="observedGeneration")] = None
    """The spec generation the operator last acted on."""
    attempt: int = 0
    """The current attempt, from 1."""
    failed_attempts: Annotated[int, Field(alias="failedAttempts")] = 0
    """Attempts that failed; the run fails when they reach spec.retry.maxAttempts."""
    job_name: Annotated[str | None, Field(alias="jobName")] = None
    """The current attempt's Job."""
    start_time: Annotated[str | None, Field(alias="startTime")] = None
    """When the first attempt started (RFC 3339)."""
    completion_time: Annotated[str | None, Field(alias="completionTime")] = None
    """When the run reached Succeeded or Failed (RFC 3339)."""
    requests: int = 0
    """Model requests so far."""
    usage: Usage = Usage()
    """Tokens so far."""
    pending_approvals: Annotated[list[PendingApproval], Field(alias="pendingApprovals")] = []
    """Tool calls waiting for a decision."""
    pending_count: Annotated[int, Field(alias="pendingCount")] = 0
    """How many tool calls wait for a decision (the Pending printer column)."""
    output: str | None = None
    """The final answer, cut to a bound; the whole of it lives in the checkpoint."""
    checkpoint: CheckpointStatus | None = None
    """Where the checkpoint is."""
    settled_calls: Annotated[list[str], Field(alias="settledCalls", max_length=4096)] = []
    """Ids of the calls whose decisions an attempt has been started with."""
    ignored_decisions: Annotated[list[str], Field(alias="ignoredDecisions", max_length=4096)] = []
    """Ids in spec.approvals that matched no pending call, ignored with a Warning Event."""
    next_attempt_time: Annotated[str | None, Field(alias="nextAttemptTime")] = None
    """When the next attempt starts after a failed one (RFC 3339)."""
    reason: str | None = None
    """Why the run is in its phase, one CamelCase word (BudgetExceeded, Timeout, ModelError...)."""
    message: str | None = None
    """Why the run is in its phase, for people."""


class Outcome(enum.StrEnum):
    """How the runner left the checkpoint when its attempt ended."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    PAUSED = "Paused"
    FAILED = "Failed"


class PendingCall(_Model):
    """A tool call that waits for a decision, as the checkpoint records it."""

    tool_call_id: Annotated[str, Field(alias="toolCallId")]
    tool_name: Annotated[str, Field(alias="toolName")]
    arguments: str = ""
    """The call's arguments as JSON text, cut to a bound; the whole is in the history."""
    requested_at: Annotated[str, Field(alias="requestedAt")] = ""


class AttemptFailure(_Model):
    """Why an attempt failed, written by its runner before it exits non-zero."""

    attempt: int
    reason: str
    """ModelError, ModelUnreachable, BudgetExceeded, Timeout, CheckpointCorrupt, ..."""
    message: str
    final: bool = False
    """True when another attempt cannot help (a limit was reached): the run fails now."""


class SegmentRef(_Model):
    """One segment of the history as the record knows it: what of it is committed."""

    name: str
    """Name of the segment's ConfigMap."""
    chunks: int = 0
    """Committed chunks, the segment's binaryData keys `c00000`, `c00001`, ... in order;
    any other key is an uncommitted write and is ignored."""
    bytes: int = 0
    """Compressed bytes of the committed chunks."""
    raw_bytes: Annotated[int, Field(alias="rawBytes")] = 0
    """Bytes of history they hold once decompressed."""
    digest: str = ""
    """SHA-256 (hex, first 32 digits) of the committed chunks' compressed bytes, in order."""


class StartedCall(_Model):
    """A tool call that started and whose result is not in the history yet (write-ahead)."""

    tool_call_id: Annotated[str, Field(alias="toolCallId")]
    tool_name: Annotated[str, Field(alias="toolName")]
    step: int = 0
    """The step whose model response asked for the call."""


class CheckpointRecord(_Model):
    """The small state record beside the history, in the checkpoint's index ConfigMap.

    The operator writes `attempt` before it starts that attempt's Job (fencing); the
    runner of that attempt writes everything else, and only while `attempt` is its own.
    """

    attempt: int = 0
    """The attempt that owns the checkpoint; writes from any other are refused."""
    step: int = 0
    """Steps recorded so far."""
    segments: list[SegmentRef] = []
    """The ConfigMaps holding the history, in order."""
    messages: int = 0
    """Messages in the history."""
    bytes: int = 0
    """Compressed bytes of the history."""
    requests: int = 0
    """Model requests so far, across attempts."""
    usage: Usage = Usage()
    """Tokens so far, across attempts."""
    pending: list[PendingCall] = []
    """Calls waiting for a decision."""
    started: list[StartedCall] = []
    """Calls that started but whose results are not in the history yet. After a crash these
    are not silently run again: see `agentrun.runner`."""
    elapsed_seconds: Annotated[float, Field(alias="elapsedSeconds")] = 0.0
    """Time the run's attempts spent running so far (waiting for approvals or for the next
    attempt excluded); limits.timeoutSeconds bounds it."""
    outcome: Outcome = Outcome.RUNNING
    """How the last runner left the run."""
    output: str | None = None
    """The final answer, whole, once the run succeeded."""
    failure: AttemptFailure | None = None
    """Why the last attempt failed, if it did."""
    updated_at: Annotated[str, Field(alias="updatedAt")] = ""
    """When the record was last written (RFC 3339)."""


def dump(model: BaseModel) -> dict[str, Any]:
    """The model as the API server stores it: camelCase keys, unset optionals left out."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")
