"""A container's environment and command line, resolved as the kubelet resolves them.

Called by podrunner.py before each start of a container. Follows the Kubernetes rules:
envFrom sources first (later ones win), then env entries in order; a `value` may refer
to variables defined before it as $(NAME); command and args may refer to any of them;
`$$` escapes a dollar and an unknown reference stays as written.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

__all__ = ["ConfigError", "StartError", "command_line", "expand", "resolve"]

log = logging.getLogger("localcluster.kubelet")

Pod = dict[str, Any]


class ConfigError(Exception):
    """A Secret, ConfigMap or key the container needs is missing (and not optional).

    The container waits with reason CreateContainerConfigError and the runner tries
    again, as the kubelet does: the object may be created a moment later.
    """


class StartError(Exception):
    """The container cannot start at all, such as when it has no command."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Replace $(NAME) by env[NAME]; `$$` gives `$`; anything else stays literal."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env.get(name, text[i : end + 1]))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def resolve(
    pod: Pod, container: dict[str, Any], *, base: Mapping[str, str], core: Any
) -> dict[str, str]:
    """The container's environment: base, then envFrom, then env.

    Raises ConfigError when a required source is missing or unreadable.
    """
    namespace = pod["metadata"]["namespace"]
    sources = _Sources(core, namespace)
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        data = sources.env_from(source)
        env.update({prefix + key: value for key, value in data.items()})
    for var in container.get("env") or []:
        if "valueFrom" in var:
            value = _value_from(pod, container, var["name"], var["valueFrom"], sources)
            if value is not None:
                env[var["name"]] = value
        else:
            env[var["name"]] = expand(var.get("value", ""), env)
    return env


def command_line(container: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with references expanded; StartError when there is no command.

    A real kubelet falls back on the image's entrypoint; there is no image here.
    """
    command = container.get("command") or []
    if not command:
        raise StartError(
            f"container {container['name']!r} has no command: the process-kubelet runs "
            "no images, so every container needs an explicit command"
        )
    return [expand(part, env) for part in [*command, *(container.get("args") or [])]]


class _Sources:
    """Reads Secrets and ConfigMaps once per resolve, as plain str -> str data."""

    def __init__(self, core: Any, namespace: str) -> None:
        self._core = core
        self._namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(self, kind: str, name: str, *, optional: bool) -> dict[str, str] | None:
        if (kind, name) not in self._cache:
            self._cache[kind, name] = self._read(kind, name)
        found = self._cache[kind, name]
        if found is None and not optional:
            raise ConfigError(f"{kind} {name!r} not found")
        return found

    def env_from(self, source: dict[str, Any]) -> dict[str, str]:
        if "secretRef" in source:
            kind, ref = "secret", source["secretRef"]
        else:
            kind, ref = "configmap", source["configMapRef"]
        return self.data(kind, ref["name"], optional=bool(ref.get("optional"))) or {}

    def _read(self, kind: str, name: str) -> dict[str, str] | None:
        read = (
            self._core.read_namespaced_secret
            if kind == "secret"
            else self._core.read_namespaced_config_map
        )
        try:
            answer = read(name, self._namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise ConfigError(f"cannot read {kind} {name!r}: {error.reason}") from error
        data: dict[str, str] = json.loads(answer.data).get("data") or {}
        if kind == "secret":
            # Environment values are text; a binary key is still passed, mangled visibly.
            return {
                key: base64.b64decode(value).decode(errors="replace") for key, value in data.items()
            }
        return data


_LABEL_OR_ANNOTATION = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


def _value_from(
    pod: Pod, container: dict[str, Any], name: str, source: dict[str, Any], sources: _Sources
) -> str | None:
    for kind, field in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
        if field in source:
            ref = source[field]
            optional = bool(ref.get("optional"))
            data = sources.data(kind, ref["name"], optional=optional)
            if data is not None and ref["key"] in data:
                return data[ref["key"]]
            if optional:
                return None
            raise ConfigError(f"key {ref['key']!r} not found in {kind} {ref['name']!r}")
    if "fieldRef" in source:
        return _field(pod, source["fieldRef"]["fieldPath"])
    log.warning(
        "Pod %s/%s: env %s of container %s uses %s, which the process-kubelet does not "
        "support; it is set empty.",
        pod["metadata"]["namespace"], pod["metadata"]["name"], name, container["name"],
        next(iter(source), "an unknown source"),
    )  # fmt: skip
    return ""


def _field(pod: Pod, path: str) -> str:
    metadata, spec = pod["metadata"], pod["spec"]
    # Every pod runs on this node's loopback address.
    fields = {
        "metadata.name": metadata["name"],
        "metadata.namespace": metadata["namespace"],
        "metadata.uid": metadata["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in fields:
        return str(fields[path])
    if match := _LABEL_OR_ANNOTATION.fullmatch(path):
        return str(metadata.get(match[1], {}).get(match[2], ""))
    raise ConfigError(f"fieldRef {path!r} is not supported by the process-kubelet")
