"""The committed CRD, its chart copy and the README reference follow the API models."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrun import crd

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path",
    [
        "crds/agentrun.dev_agentruns.yaml",
        "charts/agentrun-operator/crds/agentrun.dev_agentruns.yaml",
    ],
)
def test_the_committed_crd_is_what_the_models_generate(path: str) -> None:
    committed = (ROOT / path).read_text()

    assert committed == crd.render(), f"{path} is stale: run `make crds`"


def test_the_readme_reference_is_what_the_models_generate() -> None:
    readme = (ROOT / "README.md").read_text()

    assert readme == crd.with_reference(readme), "README.md's reference is stale: run `make crds`"


def walk(node: dict[str, object], path: str = "") -> list[tuple[str, dict[str, object]]]:
    found = [(path, node)]
    for name, sub in (node.get("properties") or {}).items():  # type: ignore[attr-defined]
        found.extend(walk(sub, f"{path}.{name}"))
    items = node.get("items")
    if isinstance(items, dict):
        found.extend(walk(items, f"{path}[]"))
    return found


def test_every_spec_and_status_field_has_a_description_for_kubectl_explain() -> None:
    schema = crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    undescribed = [
        path
        for part in ("spec", "status")
        for path, node in walk(schema["properties"][part], part)
        if not node.get("description") and not path.endswith("[]")
    ]

    assert undescribed == []
