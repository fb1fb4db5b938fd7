"""agentrun-operator: runs LLM agents as Kubernetes custom resources, durably.

Two programs share this package and meet only through `api` and `checkpoint`:
the operator (`controller`, `decisions`, `jobs`, `rbac`, `metrics`) and the
runner (`runner`, `agent`, `tools`) that runs inside each Job's pod.

Glossary, used alike in names, logs, Event reasons and docs:

run
    One AgentRun: a prompt, a model and the tools it may use.
attempt
    One Job started for a run. A run has attempts 1, 2, ... A new attempt
    starts after a failure (while `retry.maxAttempts` allows) or after the
    pending calls of a paused run are decided.
step
    One node of the agent's loop that changes the history: a model response,
    or a batch of tool results.
checkpoint
    The durable state of a run, stored in ConfigMaps the run owns: the
    history, usage, pending calls and the attempt that owns it.
segment
    One ConfigMap's share of the history.
pending call
    A tool call that requires approval and has no decision yet.
decision
    A reviewer's Approve or Deny for one pending call, in `spec.approvals`.
"""
