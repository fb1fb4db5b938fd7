"""The Helm chart and the image: what they render, what they grant, what they refuse.

Pure: runs `bin/helm lint` and `bin/helm template` (and hadolint) as programs and reads
their output; no cluster is needed. That the chart installs and the operator works under
it is the end-to-end suite's business.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentrun import rbac

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "agentrun-operator"
HELM = ROOT / "bin" / "helm"
RELEASE, NAMESPACE = "agentrun", "agentrun-system"

needs_helm = pytest.mark.skipif(
    not HELM.is_file(), reason="bin/helm is missing: `make control-plane` builds it"
)

Manifest = dict[str, Any]
Grant = tuple[str, str, str]
"""(API group, resource, verb): one permission, as RBAC checks it."""

# What the operator calls, in the namespaces it serves (see charts/.../_helpers.tpl).
NAMESPACED_GRANTS = {
    *(("agentrun.dev", "agentruns", v) for v in ("get", "list", "watch", "patch", "update")),
    *(("agentrun.dev", "agentruns/status", v) for v in ("get", "patch", "update")),
    ("agentrun.dev", "agentruns/finalizers", "update"),
    *(("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")),
    ("", "pods", "list"),
    *(("", "configmaps", v) for v in ("create", "get", "update", "patch")),
    *(("", "serviceaccounts", v) for v in ("create", "get")),
    *(("rbac.authorization.k8s.io", "roles", v) for v in ("create", "get")),
    *(("rbac.authorization.k8s.io", "rolebindings", v) for v in ("create", "get")),
    ("", "events", "create"),
}
# What kopf watches cluster-wide whatever the operator serves.
CRD_GRANTS = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
NAMESPACE_GRANTS = {("", "namespaces", v) for v in ("list", "watch")}
PEERING_VERBS = ("get", "list", "watch", "patch")

VALUE_SETS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "listed namespaces": ("watchNamespaces={a,b}",),
    "peering": ("peering.enabled=true", "replicaCount=2"),
    "peering in listed namespaces": (
        "peering.enabled=true",
        "replicaCount=2",
        "watchNamespaces={a,b}",
    ),
    "approver policy": ("approverPolicy.enabled=true",),
    "service monitor": ("serviceMonitor.enabled=true",),
}


# --- helpers ------------------------------------------------------------------------


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=False, timeout=120
    )


def _template_args(sets: tuple[str, ...], release: str = RELEASE) -> list[str]:
    flags = [item for value in sets for item in ("--set", value)]
    return ["template", release, str(CHART), "--namespace", NAMESPACE, *flags]


@functools.cache
def _render(*sets: str, release: str = RELEASE, crds: bool = False) -> tuple[Manifest, ...]:
    """The chart's objects for these --set values, parsed."""
    args = _template_args(sets, release) + (["--include-crds"] if crds else [])
    result = _helm(*args)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _of_kind(objects: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def _one(objects: tuple[Manifest, ...], kind: str) -> Manifest:
    found = _of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(objects: tuple[Manifest, ...]) -> Manifest:
    containers = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Manifest = containers[0]
    return container


def _cluster_role(objects: tuple[Manifest, ...], name: str = "agentrun-operator") -> Manifest:
    found = [r for r in _of_kind(objects, "ClusterRole") if r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one ClusterRole {name}, found {len(found)}"
    return found[0]


def _env(objects: tuple[Manifest, ...]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(objects)["env"]}


def _grants(rules: list[Manifest]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _pod_specs(objects: tuple[Manifest, ...]) -> Iterator[tuple[str, Manifest]]:
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj["spec"]


def _keys_with_lines(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, indentation, key) of every mapping key written in a YAML file."""
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(\s|$)", line)
        if match:
            yield number, match.group(1), match.group(2)


def _value_paths(values: Manifest, schema: Manifest, path: str = "") -> Iterator[str]:
    """Every key path of values that the schema should describe, checked as it goes."""
    for key, value in values.items():
        here = f"{path}.{key}" if path else key
        properties = schema.get("properties")
        if properties is None:
            # A free-form map (nodeSelector, resources.requests): typed, not named.
            assert isinstance(schema.get("additionalProperties"), dict), here
            continue
        assert key in properties, f"values.yaml has {here}, the schema does not"
        yield here
        if isinstance(value, dict):
            yield from _value_paths(value, properties[key], here)


def _schema_objects(schema: Manifest, path: str = "") -> Iterator[tuple[str, Manifest]]:
    if schema.get("type") == "object" and "properties" in schema:
        yield path or "(top)", schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _schema_objects(sub, f"{path}.{key}" if path else key)
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _schema_objects(items, f"{path}[]")


# --- lint ---------------------------------------------------------------------------


@needs_helm
def test_the_chart_lints_clean_in_strict_mode() -> None:
    result = _helm("lint", "--strict", str(CHART))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@needs_helm
@pytest.mark.parametrize("sets", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_chart_lints_clean_with_each_set_of_values(sets: tuple[str, ...]) -> None:
    flags = [item for value in sets for item in ("--set", value)]

    result = _helm("lint", "--strict", str(CHART), *flags)

    assert result.returncode == 0, result.stdout + result.stderr


# --- the operator's pod -------------------------------------------------------------


@needs_helm
@pytest.mark.parametrize("sets", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_pod_meets_the_restricted_pod_security_standard(sets: tuple[str, ...]) -> None:
    objects = _render(*sets)

    pods = list(_pod_specs(objects))

    assert pods, "the chart renders no pod"
    for name, spec in pods:
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert pod_context["runAsUser"] == 65532, name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["readOnlyRootFilesystem"] is True, name
            assert not context.get("privileged"), name
            assert "add" not in context["capabilities"], name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") == "tmp", f"{name}: /tmp must be writable"
        assert {"name": "tmp", "emptyDir": {}} in spec["volumes"], name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name


@needs_helm
def test_the_operator_runs_its_console_script_watching_every_namespace_by_default() -> None:
    objects = _render()

    container = _container(objects)

    # The local test cluster runs the command on the host, where the script is on PATH.
    assert container["command"] == ["agentrun-operator"]
    assert "--all-namespaces" in container["args"]
    assert "-n" not in container["args"]
    assert "--peering" not in container["args"]


@needs_helm
def test_the_image_tag_defaults_to_the_charts_app_version_and_runners_use_it_too() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

    objects = _render()

    image = _container(objects)["image"]
    assert image == f"ghcr.io/agentrun-dev/agentrun-operator:{app_version}"
    assert _env(objects)["AGENTRUN_RUNNER_IMAGE"] == image


@needs_helm
def test_runner_defaults_reach_the_operator_as_its_environment() -> None:
    sets = (
        "runner.image=registry.example/runner:7",
        "runner.pullPolicy=Always",
        "runner.logLevel=DEBUG",
        "runner.defaultBaseURL=http://vllm.models:8000/v1",
        "runner.defaultApiKeySecret.name=openai",
        "runner.resources.requests.memory=1Gi",
    )

    env = _env(_render(*sets))

    assert env["AGENTRUN_RUNNER_IMAGE"] == "registry.example/runner:7"
    assert env["AGENTRUN_RUNNER_PULL_POLICY"] == "Always"
    assert env["AGENTRUN_RUNNER_LOG_LEVEL"] == "DEBUG"
    assert env["AGENTRUN_DEFAULT_BASE_URL"] == "http://vllm.models:8000/v1"
    assert env["AGENTRUN_DEFAULT_API_KEY_SECRET"] == "openai/api-key"
    assert env["AGENTRUN_RUNNER_RESOURCES"] == '{"requests":{"memory":"1Gi"}}'
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@needs_helm
def test_unset_runner_defaults_leave_the_operators_own_defaults() -> None:
    objects = _render()

    env = _env(objects)

    for name in ("AGENTRUN_DEFAULT_BASE_URL", "AGENTRUN_DEFAULT_API_KEY_SECRET"):
        assert name not in env
    assert "AGENTRUN_RUNNER_RESOURCES" not in env


@needs_helm
def test_both_probes_ask_kopfs_health_endpoint_on_the_port_the_operator_is_given() -> None:
    objects = _render("health.port=9091", "metrics.port=9090")

    container = _container(objects)

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 9091, "metrics": 9090}
    args = container["args"]
    assert args[args.index("--health-port") + 1] == "9091"
    assert args[args.index("--metrics-port") + 1] == "9090"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


@needs_helm
def test_a_standalone_operator_is_replaced_never_rolled_alongside_the_old_one() -> None:
    objects = _render()

    deployment = _one(objects, "Deployment")

    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


@needs_helm
def test_extra_args_and_env_follow_the_charts_own() -> None:
    sets = ("extraArgs={--verbose}", "extraEnv[0].name=HTTPS_PROXY", "extraEnv[0].value=p:3128")

    objects = _render(*sets)

    assert _container(objects)["args"][-1] == "--verbose"
    assert _env(objects)["HTTPS_PROXY"] == "p:3128"


@needs_helm
def test_pod_labels_cannot_replace_the_labels_the_deployment_selects_by() -> None:
    sets = ("podLabels.team=platform", "podLabels.app\\.kubernetes\\.io/name=other")

    deployment = _one(_render(*sets), "Deployment")

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "platform"
    for key, value in deployment["spec"]["selector"]["matchLabels"].items():
        assert labels[key] == value


# --- RBAC ---------------------------------------------------------------------------


@needs_helm
def test_cluster_wide_rbac_grants_exactly_the_verbs_the_operator_uses() -> None:
    objects = _render()

    role = _cluster_role(objects)
    binding = _one(objects, "ClusterRoleBinding")

    assert _grants(role["rules"]) == NAMESPACED_GRANTS | CRD_GRANTS
    assert binding["roleRef"]["name"] == "agentrun-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "agentrun-operator", "namespace": NAMESPACE}
    ]
    assert not _of_kind(objects, "Role")


@needs_helm
def test_listed_namespaces_get_a_role_each_and_the_operator_watches_only_them() -> None:
    objects = _render("watchNamespaces={a,b}")

    roles = _of_kind(objects, "Role")
    bindings = _of_kind(objects, "RoleBinding")
    cluster_role = _cluster_role(objects)

    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["a", "b"]
    for role in roles:
        assert _grants(role["rules"]) == NAMESPACED_GRANTS
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    # Cluster-wide, only what kopf watches: no namespaced object is reachable.
    assert _grants(cluster_role["rules"]) == CRD_GRANTS | NAMESPACE_GRANTS
    args = _container(objects)["args"]
    assert args[: args.index("--metrics-port")] == ["-n", "a", "-n", "b"]
    assert "--all-namespaces" not in args


@needs_helm
@pytest.mark.parametrize("sets", [(), ("watchNamespaces={a}",)], ids=["cluster", "namespaced"])
def test_the_operator_holds_every_permission_it_grants_a_runner(sets: tuple[str, ...]) -> None:
    # Kubernetes refuses a Role that grants what its creator does not hold.
    runner_rules = rbac.objects(run_name="r", run_uid="u")[1]["rules"]
    objects = _render(*sets)

    held = _grants(_cluster_role(objects)["rules"])
    for role in _of_kind(objects, "Role"):
        held |= _grants(role["rules"])

    assert _grants(runner_rules) <= held


@needs_helm
def test_rbac_create_false_renders_no_operator_roles() -> None:
    sets = ("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=mine")

    objects = _render(*sets)

    names = {r["metadata"]["name"] for r in _of_kind(objects, "ClusterRole")}
    assert "agentrun-operator" not in names
    assert not _of_kind(objects, "ClusterRoleBinding")
    assert not _of_kind(objects, "ServiceAccount")
    pod_spec = _one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "mine"


@needs_helm
def test_the_approver_role_may_read_and_patch_runs_and_nothing_else() -> None:
    objects = _render()

    approver = _cluster_role(objects, "agentrun-operator-approver")

    reads = {
        ("agentrun.dev", resource, verb)
        for resource in ("agentruns", "agentruns/status")
        for verb in ("get", "list", "watch")
    }
    assert _grants(approver["rules"]) == reads | {("agentrun.dev", "agentruns", "patch")}
    assert not _of_kind(objects, "RoleBinding"), "the approver role is bound by admins"


# --- peering ------------------------------------------------------------------------


@needs_helm
def test_cluster_wide_peering_passes_the_flag_and_creates_a_cluster_peering() -> None:
    objects = _render("peering.enabled=true", "replicaCount=2")

    args = _container(objects)["args"]
    operator_role = _cluster_role(objects)

    assert args[args.index("--peering") + 1] == "agentrun"
    assert _one(objects, "ClusterKopfPeering")["metadata"]["name"] == "agentrun"
    peering = {("kopf.dev", "clusterkopfpeerings", verb) for verb in PEERING_VERBS}
    assert peering <= _grants(operator_role["rules"])
    deployment = _one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert _env(objects)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@needs_helm
def test_namespaced_peering_creates_a_peering_and_grants_it_in_each_namespace() -> None:
    objects = _render("peering.enabled=true", "replicaCount=2", "watchNamespaces={a,b}")

    peerings = _of_kind(objects, "KopfPeering")

    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["a", "b"]
    assert not _of_kind(objects, "ClusterKopfPeering")
    for role in _of_kind(objects, "Role"):
        assert _grants(role["rules"]) == NAMESPACED_GRANTS | {
            ("kopf.dev", "kopfpeerings", v) for v in PEERING_VERBS
        }


@needs_helm
def test_kopfs_peering_crds_ship_only_with_peering() -> None:
    def crd_names(objects: tuple[Manifest, ...]) -> set[str]:
        return {c["metadata"]["name"] for c in _of_kind(objects, "CustomResourceDefinition")}

    standalone = crd_names(_render(crds=True))
    peered = crd_names(_render("peering.enabled=true", "replicaCount=2", crds=True))

    peering_crds = {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert not standalone & peering_crds
    assert peered >= peering_crds


@needs_helm
def test_several_replicas_without_peering_are_refused() -> None:
    result = _helm(*_template_args(("replicaCount=2",)))

    assert result.returncode != 0
    assert "replicaCount > 1 needs peering.enabled=true" in result.stderr


# --- values and schema --------------------------------------------------------------


@needs_helm
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("unknownKey=1", "additional properties 'unknownKey' not allowed"),
        ("image.tgg=dev", "additional properties 'tgg' not allowed"),
        ("runner.defaultApiKeySecret.nmae=x", "additional properties 'nmae' not allowed"),
    ],
)
def test_an_unknown_value_key_is_refused_naming_the_key(value: str, message: str) -> None:
    result = _helm(*_template_args((value,)))

    assert result.returncode != 0
    assert message in result.stderr


@needs_helm
def test_a_value_of_the_wrong_kind_is_refused() -> None:
    result = _helm(*_template_args(("image.pullPolicy=Sometimes",)))

    assert result.returncode != 0
    assert "/image/pullPolicy" in result.stderr


def test_every_values_key_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()

    bare = []
    for number, _, key in _keys_with_lines("\n".join(lines)):
        above = [line.strip() for line in lines[: number - 1] if line.strip()]
        if not above or not above[-1].startswith("#"):
            bare.append(f"line {number}: {key}")

    assert not bare, f"keys without a comment: {bare}"


def test_every_values_key_is_described_by_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())

    paths = list(_value_paths(values, schema))

    assert "runner.defaultApiKeySecret.key" in paths
    for path in paths:
        node = schema
        for key in path.split("."):
            node = node["properties"][key]
        assert node.get("description"), f"the schema does not describe {path}"


def test_the_schema_refuses_unknown_keys_at_every_level() -> None:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())

    open_objects = [
        path
        for path, node in _schema_objects(schema)
        if node.get("additionalProperties") is not False
    ]

    assert not open_objects


# --- other objects ------------------------------------------------------------------


@needs_helm
def test_the_service_monitor_scrapes_the_metrics_services_port() -> None:
    objects = _render("serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")

    monitor = _one(objects, "ServiceMonitor")
    service = _one(objects, "Service")

    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


@needs_helm
def test_a_service_monitor_without_the_metrics_service_is_refused() -> None:
    result = _helm(*_template_args(("serviceMonitor.enabled=true", "metrics.enabled=false")))

    assert result.returncode != 0
    assert "serviceMonitor.enabled=true needs metrics.enabled=true" in result.stderr


@needs_helm
def test_the_approver_policy_renders_only_when_enabled_and_matches_the_plain_manifest() -> None:
    plain = list(yaml.safe_load_all((ROOT / "deploy" / "approver-policy.yaml").read_text()))

    default = _render()
    enabled = _render("approverPolicy.enabled=true")

    assert not _of_kind(default, "ValidatingAdmissionPolicy")
    policy = _one(enabled, "ValidatingAdmissionPolicy")
    binding = _one(enabled, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    plain_policy = next(d for d in plain if d["kind"] == "ValidatingAdmissionPolicy")
    assert policy["spec"] == plain_policy["spec"]
    message = policy["spec"]["validations"][0]["message"]
    assert message.startswith("spec.approvals[].approver must equal the requesting user")


@needs_helm
def test_object_names_fit_kubernetes_63_character_limit_for_a_long_release_name() -> None:
    release = "a-release-name-that-is-long-enough-to-need-cutting-" + "x" * 2

    objects = _render("approverPolicy.enabled=true", release=release)

    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63, name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


@needs_helm
def test_notes_tell_the_next_steps() -> None:
    result = _helm("install", RELEASE, str(CHART), "--dry-run=client", "-n", NAMESPACE)

    assert result.returncode == 0, result.stderr
    notes = result.stdout.partition("NOTES:")[2]
    assert "kubectl get agentruns -w" in notes
    assert "kubectl agentrun approve" in notes
    assert "kubectl apply --server-side -f charts/agentrun-operator/crds/" in notes


# --- the image ----------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")

    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_the_operator_as_the_charts_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()

    final_stage = dockerfile.rpartition("\nFROM ")[2]

    assert "USER 65532:65532" in final_stage
    assert 'CMD ["agentrun-operator"]' in final_stage
    assert "COPY --from=builder /opt/venv /opt/venv" in final_stage
    assert not re.search(r"apt-get|gcc|build-essential|pip install", final_stage)
