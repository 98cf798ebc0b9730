"""Render the Helm chart with Helm's own Go engine (helm-python-sdk) and read what it made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "turnout"
PRODUCTION_VALUES = REPO / "helm" / "values-production.yaml"
RELEASE = "demo"
NAMESPACE = "ai"
# Manifests must be valid on the oldest Kubernetes the chart supports (Chart.yaml: >= 1.27) and
# on the newest whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
# Custom resources of the Prometheus Operator: no schema for them ships with kubernetes-validate.
OPERATOR_GROUP = "monitoring.coreos.com/"


@dataclass(frozen=True)
class Rendered:
    """One release's manifests, parsed, plus NOTES.txt."""

    manifests: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {m["metadata"]["name"] for m in self.of_kind(kind)}


def production_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return values


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Rendered:
    """Render as `helm template` would for release `demo` in namespace `ai`."""
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests = [
        document
        for path, text in sorted(files.items())
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]
    notes = next((text for path, text in files.items() if path.endswith("NOTES.txt")), "")
    return Rendered(manifests, notes)


def is_operator_resource(manifest: dict[str, Any]) -> bool:
    return str(manifest["apiVersion"]).startswith(OPERATOR_GROUP)


def validate_manifest(manifest: dict[str, Any], kube_version: str) -> None:
    """Check against the Kubernetes OpenAPI schemas, unknown fields rejected (strict)."""
    kubernetes_validate.validate(manifest, kube_version, strict=True)


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def env_of(workload_container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in workload_container.get("env", [])}


def full_name(component: str) -> str:
    return f"{RELEASE}-turnout-{component}"
