"""Generates the AgentRun CustomResourceDefinition from the models in `api`.

`make crds` runs this module and commits its output in `crds/` and in the chart;
a test fails when the committed copies are stale. Only this module knows how
pydantic's JSON schema becomes a structural OpenAPI v3 schema, and which CEL
rules guard what the schema alone cannot (immutability, append-only decisions,
cross-field bounds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pydantic
import yaml

from agentrun import api

__all__ = ["build", "main", "reference", "render"]

# Lists that behave as maps: server-side apply merges them by key, and CEL transition
# rules on their items compare an item with the old item of the same key.
_LIST_MAP_KEYS = {"tools": "name", "mcpServers": "name", "approvals": "toolCallId"}

_IMMUTABLE_MESSAGE = "is immutable: the history depends on it; create a new AgentRun to change it"


def _spec_rules() -> list[dict[str, str]]:
    """CEL rules on spec, the ones that compare fields with each other or with the past."""
    rules = []
    for field in ("instructions", "provider", "tools", "mcpServers"):
        rules.append(
            {
                "rule": f"has(self.{field}) == has(oldSelf.{field})"
                f" && (!has(self.{field}) || self.{field} == oldSelf.{field})",
                "message": f"spec.{field} {_IMMUTABLE_MESSAGE}",
                "fieldPath": f".{field}",
            }
        )
    rules.append(
        {
            "rule": "!has(oldSelf.approvals) || (has(self.approvals) && oldSelf.approvals.all("
            "o, self.approvals.exists(n, n.toolCallId == o.toolCallId)))",
            "message": "spec.approvals is append-only: a decided approval cannot be removed",
            "fieldPath": ".approvals",
        }
    )
    rules.append(
        {
            "rule": "!has(self.limits) || !has(self.limits.timeoutSeconds)"
            " || !has(self.limits.toolTimeoutSeconds)"
            " || self.limits.toolTimeoutSeconds <= self.limits.timeoutSeconds",
            "message": "spec.limits.toolTimeoutSeconds must not exceed spec.limits.timeoutSeconds",
            "fieldPath": ".limits.toolTimeoutSeconds",
        }
    )
    return rules


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One node of pydantic's JSON schema, rewritten as a structural CRD schema."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        return _inline({**target, **extra}, defs)

    # Optional fields come as anyOf [X, null]; a CRD expresses optional by omission.
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            rest.pop("default")
        if len(options) == 1:
            return _inline({**options[0], **rest}, defs)

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "$defs", "required") or (key == "default" and value in ({}, [])):
            continue
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        elif key == "description":
            # Docstrings wrap at the source's width; kubectl explain wraps on its own.
            out[key] = " ".join(value.split())
        elif key == "items":
            out[key] = _inline(value, defs)
        elif key == "additionalProperties":
            # Structural schemas forbid additionalProperties false; unknown fields are
            # refused by kubectl's strict field validation and pruned otherwise.
            if isinstance(value, dict) and value:
                out[key] = _inline(value, defs)
        else:
            out[key] = value
    if "required" in schema:
        out["required"] = schema["required"]
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("type", "object")
    return out


def _object_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _inline(raw, raw.get("$defs", {}))


def _spec_schema() -> dict[str, Any]:
    spec = _object_schema(api.AgentRunSpec)
    props = spec["properties"]

    for field, key in _LIST_MAP_KEYS.items():
        props[field]["x-kubernetes-list-type"] = "map"
        props[field]["x-kubernetes-list-map-keys"] = [key]

    for field in ("prompt", "model"):
        props[field]["x-kubernetes-validations"] = [
            {"rule": "self == oldSelf", "message": f"spec.{field} {_IMMUTABLE_MESSAGE}"}
        ]
    props["approvals"]["items"]["x-kubernetes-validations"] = [
        {"rule": "self == oldSelf", "message": "a decided approval cannot be changed"}
    ]

    # Nested defaults apply only inside objects that exist: default these to empty.
    for field in ("limits", "retry"):
        props[field]["default"] = {}
    # A stored empty list lets reviewers append with a JSON patch (`add /spec/approvals/-`),
    # which fails on a missing list.
    props["approvals"]["default"] = []
    spec["x-kubernetes-validations"] = _spec_rules()
    return spec


def _status_schema() -> dict[str, Any]:
    status = _object_schema(api.AgentRunStatus)
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    for cond in status["properties"]["conditions"]["items"]["properties"].values():
        cond.pop("default", None)
    status["properties"]["conditions"]["items"]["required"] = ["type", "status"]
    return status


_PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "Requests", "type": "integer", "jsonPath": ".status.requests"},
    {"name": "Tokens", "type": "integer", "jsonPath": ".status.usage.totalTokens"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
    {"name": "Pending", "type": "integer", "jsonPath": ".status.pendingCount", "priority": 1},
]


def build() -> dict[str, Any]:
    """The CustomResourceDefinition as a plain dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "An LLM agent run: a prompt, a model and the tools "
                            "the agent may use, run to completion in a Job with its "
                            "conversation checkpointed after every step.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _spec_schema(),
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `make crds` from operator/agentrun/api.py. Do not edit.\n"
    return header + yaml.safe_dump(build(), sort_keys=False, width=100)


REFERENCE_START = "<!-- reference:start (generated by make crds) -->"
REFERENCE_END = "<!-- reference:end -->"


def with_reference(document: str) -> str:
    """A Markdown document with the reference between its markers brought up to date."""
    head, found, rest = document.partition(REFERENCE_START)
    _, found_end, tail = rest.partition(REFERENCE_END)
    if not (found and found_end):
        raise ValueError(
            f"the document lacks the markers {REFERENCE_START!r} ... {REFERENCE_END!r}"
        )
    return f"{head}{REFERENCE_START}\n{reference()}{REFERENCE_END}{tail}"


def main(argv: list[str] | None = None) -> None:
    """Write the CRD to each path given (or stdout); a Markdown path gets the reference."""
    paths = (argv if argv is not None else sys.argv[1:]) or ["-"]
    text = render()
    for path in paths:
        if path == "-":
            sys.stdout.write(text)
        elif path.endswith(".md"):
            Path(path).write_text(with_reference(Path(path).read_text()))
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)


def reference() -> str:
    """The AgentRun reference as a Markdown table, for the README, from the same schema."""
    schema = build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rows = ["| field | type | meaning |", "| --- | --- | --- |"]
    for part in ("spec", "status"):
        rows.extend(_rows(part, schema["properties"][part]))
    return "\n".join(rows) + "\n"


def _rows(path: str, node: dict[str, Any]) -> list[str]:
    out = []
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}"
        kind = sub.get("type", "object")
        if kind == "array":
            kind = f"[]{sub.get('items', {}).get('type', 'object')}"
        facts = []
        if name in node.get("required", []):
            facts.append("required")
        if "enum" in sub:
            facts.append("one of " + ", ".join(f"`{v}`" for v in sub["enum"]))
        if "default" in sub and sub["default"] not in ({}, []):
            facts.append(f"default `{json.dumps(sub['default'])}`")
        note = f" ({'; '.join(facts)})" if facts else ""
        text = sub.get("description", "").replace("|", "\\|")
        out.append(f"| `{here}` | {kind} | {text}{note} |")
        child = sub.get("items", sub) if kind.startswith("[]") else sub
        out.extend(_rows(here + ("[]" if kind.startswith("[]") else ""), child))
    return out


if __name__ == "__main__":
    main()
