"""`kubectl agentrun`: review, follow and inspect AgentRuns from the command line.

Installed as the console script `kubectl-agentrun`, so kubectl finds it on PATH as a
plugin. It uses your kubeconfig and context as kubectl does; `--kubeconfig`, `--context`
and `-n/--namespace` go before or after the command. Nothing in the product imports it.

    kubectl agentrun list                        # NAME PHASE PENDING REQUESTS TOKENS ...
    kubectl agentrun list -A                     # every namespace
    kubectl agentrun approve demo                # shows the pending calls, asks, approves
    kubectl agentrun approve demo call_0_0 --reason "looks safe"
    kubectl agentrun approve demo call_0_0 --args '{"command": "ls -la"}'
    kubectl agentrun deny demo call_0_1 --reason "no network access, please"
    kubectl agentrun history demo                # the conversation, readable
    kubectl agentrun history demo --full         # tool output not cut
    kubectl agentrun history demo --json         # pydantic-ai's messages, raw
    kubectl agentrun logs demo -f                # the current attempt's pod log
    kubectl agentrun logs demo --attempt 1
    kubectl agentrun watch -n team --timeout 600 # a line per change of any run

Decisions are appended to the run's spec.approvals with a JSON patch conditional on the
resourceVersion read, so two reviewers never overwrite each other; the approver defaults
to the user the API server authenticates you as. Errors (a wrong run or call id, RBAC
refusals) are one line on stderr and exit status 1.
"""

from agentrun.plugin._commands import app, main

__all__ = ["app", "main"]
