"""values.schema.json: the shipped values pass, mistakes are refused before anything renders."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart import production_values


def test_default_and_production_values_satisfy_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema(None)
    chart.validate_schema(production_values())


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"gateway": {"replicas": "two"}}, "/gateway/replicas"),
        ({"gateway": {"replicas": 0}}, "/gateway/replicas"),
        ({"replicas": 3}, "'replicas' not allowed"),
        ({"gateway": {"replica": 3}}, "'replica' not allowed"),
        ({"vllm": {"gpuMemoryUtilization": 1.5}}, "/vllm/gpuMemoryUtilization"),
        ({"vllm": {"tensorParallelSize": 0}}, "/vllm/tensorParallelSize"),
        ({"redis": {"externalUrl": "cache:6379"}}, "/redis/externalUrl"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"gateway": {"service": {"type": "Ingress"}}}, "/gateway/service/type"),
        ({"config": {"base_model": None}}, "base_model"),
        ({"retrain": {"routes": "support-triage"}}, "/retrain/routes"),
    ],
)
def test_schema_refuses_bad_values_and_names_the_key(
    chart: helm.Chart, values: dict[str, Any], named: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert named in str(refused.value)


def test_rendering_with_bad_values_fails_before_any_manifest(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="/gateway/replicas"):
        chart.render({"gateway": {"replicas": "two"}}, name="demo")
