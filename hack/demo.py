"""The local demo (`make demo`, `make demo-down`): the product's main job, end to end.

Starts the local control plane, a scripted OpenAI-compatible model (or the real OpenAI
API when OPENAI_API_KEY is set), installs the operator with Helm (its pod runs through
the process-kubelet), applies examples/02-approval.yaml, and walks the run through
AwaitingApproval, an approval with the kubectl plugin, and Succeeded. It leaves
everything running for exploring until `make demo-down`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from localcluster import cluster  # noqa: E402

BIN = ROOT / "bin"
VENV_BIN = Path(sys.executable).parent
RELEASE, OPERATOR_NS, RUN = "agentrun", "agentrun-system", "approval"

# What the scripted model answers for examples/02-approval.yaml (model gpt-4o): ask to
# run a gated shell command that writes a file, then answer once it ran.
SCRIPT = {
    "gpt-4o": [
        {
            "text": "I will write the file with the shell.",
            "tool_calls": [
                {
                    "name": "shell",
                    "arguments": {"command": "echo hello > hello.txt && cat hello.txt && ls"},
                }
            ],
        },
        {"text": "I created hello.txt in your workspace; it says: hello."},
    ],
    # examples/01-minimal.yaml, suggested for exploring afterwards.
    "gpt-4o-mini": [
        {"text": "An operator encodes how to run an application as a controller that keeps it so."}
    ],
}


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def run(
    *argv: str, env: dict[str, str] | None = None, check: bool = True, stdin: str | None = None
) -> str:
    """Run a command, echoing it as a user would type it."""
    shown = " ".join(a if " " not in a else repr(a) for a in argv)
    print(f"    $ {shown.replace(str(ROOT) + '/', '')}", flush=True)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, input=stdin)
    if check and result.returncode != 0:
        sys.exit(f"demo: {argv[0]} failed:\n{result.stderr or result.stdout}")
    return result.stdout


def up(state: Path) -> None:
    began = time.monotonic()
    say("Starting the local control plane: etcd, kube-apiserver, controller-manager, kubelet")
    _stop_model(state)
    started = cluster.start(state)
    kubeconfig = str(started.kubeconfig)
    path = f"{VENV_BIN}:{BIN}:{os.environ['PATH']}"
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": path}
    kubectl = [str(BIN / "kubectl")]

    say("Starting the model")
    values = _start_model(state, env)

    say("Installing the operator with Helm; its pod runs as a local process")
    sets = [f"--set={k}={v}" for k, v in values.items()]
    chart = str(ROOT / "charts" / "agentrun-operator")
    run(str(BIN / "helm"), "upgrade", "--install", RELEASE, chart, "--namespace", OPERATOR_NS,
        "--create-namespace", "--wait", "--timeout=180s", *sets, env=env)  # fmt: skip
    print(run(*kubectl, "-n", OPERATOR_NS, "get", "pods", env=env), flush=True)

    say("Applying examples/02-approval.yaml: an agent that may use the shell, with approval")
    run(*kubectl, "delete", "agentrun", RUN, "--ignore-not-found", "--wait=true", env=env)
    run(*kubectl, "apply", "-f", str(ROOT / "examples" / "02-approval.yaml"), env=env)
    _follow(kubectl, env, until={"AwaitingApproval", "Succeeded", "Failed"})

    say("The run waits for a human. Pending calls, as a reviewer sees them:")
    print(run(*kubectl, "get", "agentrun", RUN, "-o", "wide", env=env), flush=True)
    say("Approving with the kubectl plugin")
    print(run(*kubectl, "agentrun", "approve", RUN, "--yes", env=env), flush=True)
    final = _follow(kubectl, env, until={"Succeeded", "Failed"})
    if final != "Succeeded":
        sys.exit(f"demo: the run ended {final}; see `kubectl describe agentrun {RUN}`")

    say("The conversation, from the checkpoint")
    print(run(*kubectl, "agentrun", "history", RUN, env=env), flush=True)
    say(
        f"Done: cluster up and run finished in {time.monotonic() - began:.0f}s (after install). "
        "The cluster stays up; explore it with:"
    )
    print(
        f"""
    export KUBECONFIG={kubeconfig}
    export PATH={VENV_BIN}:{BIN}:$PATH
    kubectl get agentruns -o wide
    kubectl describe agentrun {RUN}
    kubectl agentrun history {RUN}
    kubectl agentrun logs {RUN}
    kubectl apply -f examples/01-minimal.yaml
    kubectl wait --for=condition=Succeeded agentrun/minimal

  Stop everything with: make demo-down{_state_argument(state)}
""",
        flush=True,
    )


def _start_model(state: Path, env: dict[str, str]) -> dict[str, str]:
    """The chart values that point runners at the model."""
    if os.environ.get("OPENAI_API_KEY"):
        # The key goes through stdin, so that it shows in no command line or echo.
        run(str(BIN / "kubectl"), "create", "secret", "generic", "openai-api-key",
            "--from-file=api-key=/dev/stdin", stdin=os.environ["OPENAI_API_KEY"], check=False,
            env=env)  # fmt: skip
        print("    using the real OpenAI API (OPENAI_API_KEY is set)", flush=True)
        return {
            "runner.defaultBaseURL": "https://api.openai.com/v1",
            "runner.defaultApiKeySecret.name": "openai-api-key",
            "runner.defaultApiKeySecret.key": "api-key",
        }

    script = state / "demo-model-script.json"
    script.write_text(json.dumps(SCRIPT, indent=2))
    port_file = state / "model-server.port"
    port_file.unlink(missing_ok=True)
    log = (state / "logs" / "model-server.log").open("ab")
    server = subprocess.Popen(
        [str(VENV_BIN / "agentrun-model-server"), "--port", "0", "--script", str(script),
         "--port-file", str(port_file)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    (state / "model-server.pid").write_text(str(server.pid))
    for _ in range(100):
        if port_file.exists() and port_file.read_text().strip():
            break
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    print(f"    scripted model at {url} (script: {shown})", flush=True)
    return {"runner.defaultBaseURL": url}


def _state_argument(state: Path) -> str:
    """What `make demo-down` needs to find a demo started with STATE=..."""
    return "" if state.resolve() == (ROOT / ".local").resolve() else f" STATE={state}"


def _follow(kubectl: list[str], env: dict[str, str], *, until: set[str]) -> str:
    """Print the run's phase each time it changes; return the first phase in `until`."""
    seen = ""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        out = subprocess.run([*kubectl, "get", "agentrun", RUN, "-o", "json"],
                             env=env, capture_output=True, text=True)  # fmt: skip
        status: dict[str, Any] = (
            json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}
        )
        phase = status.get("phase", "")
        if phase and phase != seen:
            print(f"    phase: {phase:<17} {status.get('message', '')}", flush=True)
            seen = phase
        if phase in until:
            return str(phase)
        time.sleep(0.5)
    sys.exit(f"demo: the run did not reach {sorted(until)} in 5 minutes")


def _stop_model(state: Path) -> None:
    pid_file = state / "model-server.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink()


def down(state: Path) -> None:
    _stop_model(state)
    cluster.stop(state)
    say(f"Stopped the demo's model and control plane ({state}).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state", type=Path, default=ROOT / ".local")
    args = parser.parse_args()
    state = args.state.resolve()
    if args.command == "up":
        up(state)
    else:
        down(state)


if __name__ == "__main__":
    main()
