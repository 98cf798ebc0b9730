"""The Helm chart, rendered by Helm's Go engine: lint, Kubernetes schemas, what each part does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from gateway.config import TurnoutConfig, with_environment
from gateway.serving.listeners import place_metrics
from tests.deploy.chart import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    Rendered,
    container,
    env_of,
    full_name,
    is_operator_resource,
    production_values,
    render,
    validate_manifest,
)

VALUE_SETS = ["default", "production"]


def values_named(which: str) -> dict[str, Any] | None:
    return production_values() if which == "production" else None


def rendered_config(rendered: Rendered) -> dict[str, Any]:
    configmap = rendered.one("ConfigMap", full_name("config"))
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["turnout.yaml"])
    return config


@pytest.mark.parametrize("which", VALUE_SETS)
def test_chart_lints_without_errors_or_warnings(which: str) -> None:
    report = helm.lint(CHART, values_named(which), strict=True, kube_version="v1.27.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("which", VALUE_SETS)
def test_every_rendered_manifest_is_valid_kubernetes(
    chart: helm.Chart, which: str, kube_version: str
) -> None:
    rendered = render(chart, values_named(which))
    core = [m for m in rendered.manifests if not is_operator_resource(m)]
    for manifest in core:
        validate_manifest(manifest, kube_version)
    kinds = {m["kind"] for m in core}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds


def test_production_values_render_every_optional_part(chart: helm.Chart) -> None:
    rendered = render(chart, production_values())
    kinds = {m["kind"] for m in rendered.manifests}
    assert {"HorizontalPodAutoscaler", "CronJob", "ServiceMonitor", "PrometheusRule"} <= kinds


# ServiceMonitor and PrometheusRule are Prometheus Operator CRDs: kubernetes-validate has no schema
# for them, so their structure is checked here against what the operator reads.
def test_service_monitors_select_the_admin_and_vllm_services_by_port_name(
    chart: helm.Chart,
) -> None:
    rendered = render(chart, production_values())
    monitors = rendered.of_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {full_name("gateway"), full_name("vllm")}
    # The gateway serves /metrics on its admin listener: its monitor selects the admin Service.
    scraped = {full_name("gateway"): full_name("admin"), full_name("vllm"): full_name("vllm")}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        wanted = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s
            for s in rendered.of_kind("Service")
            if wanted.items() <= s["metadata"]["labels"].items()
        ]
        assert [s["metadata"]["name"] for s in services] == [scraped[monitor["metadata"]["name"]]]
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports
            assert endpoint["path"] == "/metrics"


def test_the_gateway_monitor_scrapes_the_port_that_serves_metrics_and_not_the_public_one(
    chart: helm.Chart,
) -> None:
    rendered = render(chart, production_values())
    gateway = container(rendered.one("Deployment", full_name("gateway")), "gateway")
    env = {name: var["value"] for name, var in env_of(gateway).items() if "value" in var}
    config = with_environment(TurnoutConfig.model_validate(rendered_config(rendered)), env)
    placement = place_metrics(config.server, config.auth)
    container_ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}

    def container_port(service: str, port_name: str) -> int:
        ports = rendered.one("Service", service)["spec"]["ports"]
        (port,) = [p for p in ports if p["name"] == port_name]
        return container_ports[port["targetPort"]]

    (endpoint,) = rendered.one("ServiceMonitor", full_name("gateway"))["spec"]["endpoints"]
    assert config.auth.keys_file is not None  # production values configure tenant keys
    assert placement.admin
    assert placement.own_port is None
    assert container_port(full_name("admin"), endpoint["port"]) == config.server.admin_port
    assert not placement.public
    assert container_port(full_name("gateway"), "http") == config.server.port


def test_prometheus_rule_holds_every_group_of_the_chart_rule_files(chart: helm.Chart) -> None:
    rendered = render(chart, production_values())
    (rule,) = rendered.of_kind("PrometheusRule")
    expected = [
        group
        for path in sorted((CHART / "files" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    assert expected, "the chart holds no rule files"
    assert rule["spec"]["groups"] == expected
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names))
    for group in rule["spec"]["groups"]:
        assert group["rules"]
        for each in group["rules"]:
            assert isinstance(each["expr"], str | int)
            assert ("alert" in each) != ("record" in each)


def test_monitoring_crds_are_off_by_default_for_clusters_without_the_operator(
    chart: helm.Chart,
) -> None:
    rendered = render(chart)
    assert not [m for m in rendered.manifests if is_operator_resource(m)]


def test_dashboards_become_configmaps_the_grafana_sidecar_imports(chart: helm.Chart) -> None:
    rendered = render(chart, production_values())
    dashboards = [
        m for m in rendered.of_kind("ConfigMap") if m["metadata"]["labels"].get("grafana_dashboard")
    ]
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert files
    assert len(dashboards) == len(files)
    by_file = {name: m for m in dashboards for name in m["data"]}
    for path in files:
        configmap = by_file[path.name]
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["namespace"] == "monitoring"
        assert configmap["data"][path.name] == path.read_text()


@pytest.mark.parametrize("which", VALUE_SETS)
def test_rendered_config_passes_turnout_config_check(
    chart: helm.Chart, which: str, tmp_path: Path
) -> None:
    config_file = tmp_path / "turnout.yaml"
    config_file.write_text(
        render(chart, values_named(which))
        .one("ConfigMap", full_name("config"))["data"]["turnout.yaml"]
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "check", str(config_file)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{config_file}: OK")


def test_config_with_an_unknown_key_fails_turnout_config_check(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """The check above can fail: a key the config schema does not know is refused."""
    values = {"config": {"base_model": "tiny", "routes": {"chat": {"canary": "chat@v2"}}}}
    config_file = tmp_path / "turnout.yaml"
    config_file.write_text(
        render(chart, values).one("ConfigMap", full_name("config"))["data"]["turnout.yaml"]
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "check", str(config_file)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "routes.chat.canary: unknown key" in done.stderr


def test_backends_default_to_every_vllm_pod_by_its_stable_name(chart: helm.Chart) -> None:
    rendered = render(chart, {"vllm": {"replicas": 2}})
    service = rendered.one("Service", full_name("vllm"))
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    port = service["spec"]["ports"][0]["port"]
    vllm = full_name("vllm")
    assert rendered.one("StatefulSet", vllm)["spec"]["serviceName"] == vllm
    assert rendered_config(rendered)["backends"] == [
        {"url": f"http://{vllm}-{n}.{vllm}:{port}"} for n in (0, 1)
    ]


def test_an_object_store_is_copied_onto_the_vllm_pods(chart: helm.Chart) -> None:
    values = {
        "vllm": {"adapterSync": {"enabled": True}},
        "config": {"adapters": {"store": "s3://bucket/team", "backend_path": "/adapters"}},
        "objectStore": {"accessKeyId": "id", "secretAccessKey": "secret"},
    }
    vllm = render(chart, values).one("StatefulSet", full_name("vllm"))
    sync = container(vllm, "adapter-sync")
    assert "aws s3 sync" in sync["args"][0]
    assert {"name": "TURNOUT_STORE", "value": "s3://bucket/team"} in sync["env"]
    assert "AWS_ACCESS_KEY_ID" in env_of(sync)
    server_mounts = {m["mountPath"]: m for m in container(vllm, "vllm")["volumeMounts"]}
    assert server_mounts["/adapters"]["readOnly"] is True


def test_explicit_backends_are_kept_and_vllm_can_be_left_out(chart: helm.Chart) -> None:
    backends = [{"url": "http://vllm-a.gpu:8000"}, {"url": "http://vllm-b.gpu:8000"}]
    values = {"vllm": {"enabled": False}, "config": {"base_model": "llama", "backends": backends}}
    rendered = render(chart, values)
    assert rendered_config(rendered)["backends"] == backends
    assert full_name("vllm") not in rendered.names("StatefulSet")


def test_no_backends_and_no_vllm_is_refused_with_the_key_named(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"config\.backends is empty"):
        render(chart, {"vllm": {"enabled": False}})


def test_config_is_mounted_as_a_directory_so_edits_reach_the_running_gateway(
    chart: helm.Chart,
) -> None:
    rendered = render(chart)
    gateway = rendered.one("Deployment", full_name("gateway"))
    main = container(gateway, "gateway")
    assert main["args"] == ["serve", "--config", "/etc/turnout/config/turnout.yaml"]
    (mount,) = [m for m in main["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/turnout/config"
    assert "subPath" not in mount  # kubelet never updates subPath mounts
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == full_name("config")
    # A config checksum on the pod would restart every gateway on each route change.
    annotations = gateway["spec"]["template"]["metadata"].get("annotations", {})
    assert not [key for key in annotations if "checksum" in key]


def test_gateway_pods_probe_health_and_readiness_and_run_locked_down(chart: helm.Chart) -> None:
    gateway = render(chart).one("Deployment", full_name("gateway"))
    main = container(gateway, "gateway")
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"http": 8080, "admin": 8081}
    assert env_of(main)["TURNOUT_ADMIN_PORT"]["value"] == "8081"
    assert main["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    capture = next(m for m in main["volumeMounts"] if m["name"] == "capture")
    assert capture["mountPath"] == "/var/lib/turnout"


def test_admin_api_has_its_own_cluster_internal_service(chart: helm.Chart) -> None:
    admin = render(chart, production_values()).one("Service", full_name("admin"))
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [
        {"name": "admin", "port": 8081, "targetPort": "admin", "protocol": "TCP"}
    ]


def test_default_install_bundles_redis_and_points_the_gateway_at_it(chart: helm.Chart) -> None:
    rendered = render(chart)
    assert full_name("redis") in rendered.names("Deployment")
    redis_port = rendered.one("Service", full_name("redis"))["spec"]["ports"][0]["port"]
    env = env_of(container(rendered.one("Deployment", full_name("gateway")), "gateway"))
    assert env["TURNOUT_REDIS_URL"]["value"] == f"redis://{full_name('redis')}:{redis_port}/0"
    assert "TURNOUT_API_KEYS_FILE" not in env
    assert "WARNING: no API keys" in rendered.notes


def test_production_gateway_autoscales_and_uses_external_redis_s3_and_existing_secrets(
    chart: helm.Chart,
) -> None:
    values = production_values()
    rendered = render(chart, values)
    gateway = rendered.one("Deployment", full_name("gateway"))
    assert "replicas" not in gateway["spec"]  # the HPA owns the count
    hpa = rendered.one("HorizontalPodAutoscaler", full_name("gateway"))
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["scaleTargetRef"]["name"] == full_name("gateway")
    pdb = rendered.one("PodDisruptionBudget", full_name("gateway"))
    assert pdb["spec"]["minAvailable"] == 2
    assert full_name("redis") not in rendered.names("Deployment")
    assert rendered.of_kind("Secret") == []  # every secret comes from an existing Secret

    main = container(gateway, "gateway")
    env = env_of(main)
    assert env["TURNOUT_REDIS_URL"]["value"] == values["redis"]["externalUrl"]
    assert env["TURNOUT_API_KEYS_FILE"]["value"] == "/etc/turnout/secrets/api-keys.yaml"
    assert env["TURNOUT_ADMIN_KEYS_FILE"]["value"] == "/etc/turnout/secrets/admin-keys.yaml"
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"]:
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "turnout-object-store"
    secrets_mount = next(m for m in main["volumeMounts"] if m["name"] == "auth")
    assert secrets_mount["mountPath"] == "/etc/turnout/secrets"
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == "turnout-auth"
    assert volumes["capture"]["persistentVolumeClaim"]["claimName"] == "turnout-capture"
    assert rendered_config(rendered)["adapters"]["store"].startswith("s3://")
    assert "authorization: Bearer" in rendered.notes


def test_inline_keys_and_credentials_become_secrets_the_gateway_reads(chart: helm.Chart) -> None:
    values = {
        "auth": {"apiKeys": "keys: [a]\n", "adminKeys": "keys: [b]\n"},
        "objectStore": {
            "accessKeyId": "AKIA",
            "secretAccessKey": "s3cret",
            "endpointUrl": "http://minio.storage:9000",
        },
    }
    rendered = render(chart, values)
    auth = rendered.one("Secret", full_name("auth"))
    assert auth["stringData"] == {"api-keys.yaml": "keys: [a]\n", "admin-keys.yaml": "keys: [b]\n"}
    store = rendered.one("Secret", full_name("object-store"))
    assert store["stringData"] == {
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "AWS_ENDPOINT_URL": "http://minio.storage:9000",
    }
    gateway = rendered.one("Deployment", full_name("gateway"))
    env = env_of(container(gateway, "gateway"))
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": full_name("object-store"),
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == full_name("auth")


def test_redis_url_with_a_password_comes_from_a_secret(chart: helm.Chart) -> None:
    values = {"redis": {"existingSecret": "redis-url", "bundled": {"enabled": False}}}
    rendered = render(chart, values)
    env = env_of(container(rendered.one("Deployment", full_name("gateway")), "gateway"))
    assert env["TURNOUT_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-url",
        "key": "url",
    }


def test_several_gateways_without_shared_state_are_refused(chart: helm.Chart) -> None:
    values = {"gateway": {"replicas": 3}, "redis": {"bundled": {"enabled": False}}}
    with pytest.raises(helm.HelmRenderError, match="needs shared state"):
        render(chart, values)


@pytest.mark.parametrize("which", VALUE_SETS)
def test_vllm_serves_the_base_model_with_runtime_lora_loading(
    chart: helm.Chart, which: str
) -> None:
    rendered = render(chart, values_named(which))
    vllm = rendered.one("StatefulSet", full_name("vllm"))
    server = container(vllm, "vllm")
    args = server["args"]
    base_model = rendered_config(rendered)["base_model"]
    assert server["image"].startswith("vllm/vllm-openai:")
    assert f"--served-model-name={base_model}" in args
    assert "--enable-lora" in args
    for flag in ["--model=", "--max-lora-rank=", "--max-loras=", "--max-cpu-loras="]:
        assert [a for a in args if a.startswith(flag)], flag
    assert env_of(server)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert server["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert server["startupProbe"]["httpGet"]["path"] == "/health"


def test_vllm_pods_get_as_many_gpus_as_their_tensor_parallel_size(chart: helm.Chart) -> None:
    vllm = render(chart, {"vllm": {"tensorParallelSize": 4}}).one("StatefulSet", full_name("vllm"))
    server = container(vllm, "vllm")
    assert "--tensor-parallel-size=4" in server["args"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert server["resources"]["requests"]["nvidia.com/gpu"] == 4


def test_vllm_is_reachable_only_from_the_gateway_and_prometheus(chart: helm.Chart) -> None:
    rendered = render(chart, production_values())
    assert rendered.one("Service", full_name("vllm"))["spec"]["type"] == "ClusterIP"
    policy = rendered.one("NetworkPolicy", full_name("vllm"))
    vllm_pods = rendered.one("StatefulSet", full_name("vllm"))["spec"]["template"]["metadata"]
    gateway_pods = rendered.one("Deployment", full_name("gateway"))["spec"]["template"]["metadata"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= vllm_pods["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    gateway_peer, prometheus_peer = rule["from"]
    assert gateway_peer.keys() == {"podSelector"}  # this namespace only
    assert gateway_peer["podSelector"]["matchLabels"].items() <= gateway_pods["labels"].items()
    assert not gateway_peer["podSelector"]["matchLabels"].items() <= vllm_pods["labels"].items()
    assert prometheus_peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }
    assert prometheus_peer["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "prometheus"}
    }


# What every enabled retraining needs besides its routes.
RETRAIN = {
    "enabled": True,
    "baseModel": "Qwen/Qwen2.5-0.5B-Instruct",
    "adminKey": {"existingSecret": "turnout-retrain", "key": "admin-key"},
}


def test_retraining_is_off_by_default(chart: helm.Chart) -> None:
    rendered = render(chart)
    assert rendered.of_kind("CronJob") == []
    assert rendered.of_kind("Job") == []


def test_retraining_runs_the_whole_flywheel_cycle_per_route_on_the_training_image(
    chart: helm.Chart,
) -> None:
    values = production_values()
    rendered = render(chart, values)
    cronjobs = rendered.of_kind("CronJob")
    assert len(cronjobs) == len(values["retrain"]["routes"])
    for route, cronjob in zip(values["retrain"]["routes"], cronjobs, strict=True):
        assert cronjob["spec"]["schedule"] == values["retrain"]["schedule"]
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (train,) = pod["containers"]
        assert train["image"] == f"{values['image']['repository']}:0.1.0-training"
        assert train["args"] == [
            "flywheel", "run", "--route", route,
            "--config", "/etc/turnout/config/turnout.yaml",
            "--base-model", values["retrain"]["baseModel"],
            "--work-root", "/var/lib/turnout/retrain",
            "--admin-url", f"http://{full_name('admin')}:8081",
            "--min-train-examples", "50",
        ]  # fmt: skip
        assert train["resources"]["limits"]["nvidia.com/gpu"] == 1
        env = env_of(train)
        assert env["TURNOUT_REDIS_URL"]["value"] == values["redis"]["externalUrl"]
        assert "AWS_ACCESS_KEY_ID" in env
        assert env["TURNOUT_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "turnout-retrain", "key": "admin-key",
        }  # fmt: skip
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["capture"]["persistentVolumeClaim"]["claimName"] == "turnout-capture"


def test_retraining_without_a_schedule_is_a_job_per_release_revision(chart: helm.Chart) -> None:
    values = {"retrain": {**RETRAIN, "routes": ["chat"], "schedule": ""}}
    files = chart.render(values, name="demo", namespace=NAMESPACE, revision=7)
    jobs = [
        doc
        for path, text in files.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "Job"
    ]
    assert [job["metadata"]["name"] for job in jobs] == [f"{full_name('retrain')}-chat-7"]


def test_retraining_a_route_that_is_not_configured_is_refused(chart: helm.Chart) -> None:
    values = {"retrain": {**RETRAIN, "routes": ["nope"]}}
    with pytest.raises(helm.HelmRenderError, match='"nope" is not a route'):
        render(chart, values)


@pytest.mark.parametrize("missing", ["baseModel", "adminKey"])
def test_retraining_without_a_base_model_or_an_admin_key_is_refused(
    chart: helm.Chart, missing: str
) -> None:
    empty = {"baseModel": "", "adminKey": {"existingSecret": ""}}[missing]
    values = {"retrain": {**RETRAIN, "routes": ["chat"], missing: empty}}
    # values.schema.json refuses it before any template runs.
    with pytest.raises(helm.HelmValuesError, match=missing):
        render(chart, values)


def test_notes_tell_the_user_how_to_call_a_route(chart: helm.Chart) -> None:
    notes = render(chart, production_values()).notes
    assert f"port-forward svc/{full_name('gateway')}" in notes
    assert '"model": "chat"' in notes
    assert f"http://{full_name('gateway')}.{NAMESPACE}.svc:80/v1" in notes


# vLLM's own argument parser, in a child process so the test process never imports vLLM.
PARSE_VLLM_ARGS = """
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
for args in json.load(sys.stdin):
    parsed = parser.parse_args(args)
    print(json.dumps([parsed.model, parsed.served_model_name, parsed.enable_lora]))
"""


def test_vllm_accepts_the_arguments_the_chart_renders(chart: helm.Chart) -> None:
    """Checked with the vLLM installed here (the CPU build), not the image's own copy."""
    rendered = [render(chart, values_named(which)) for which in VALUE_SETS]
    servers = [container(r.one("StatefulSet", full_name("vllm")), "vllm") for r in rendered]
    arguments = [server["args"] for server in servers]
    done = subprocess.run(
        [sys.executable, "-c", PARSE_VLLM_ARGS],
        input=json.dumps(arguments), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert parsed == [
        [values_model(which), [rendered_config(r)["base_model"]], True]
        for which, r in zip(VALUE_SETS, rendered, strict=True)
    ]


def values_model(which: str) -> str:
    values = (
        production_values()
        if which == "production"
        else yaml.safe_load((CHART / "values.yaml").read_text())
    )
    model: str = values["vllm"]["model"]
    return model


def test_gateway_workers_become_the_serve_flag_and_need_shared_state(chart: helm.Chart) -> None:
    rendered = render(chart, {"gateway": {"workers": 2}})
    deployment = rendered.one("Deployment", full_name("gateway"))
    gateway = container(deployment, "gateway")
    assert gateway["args"][-2:] == ["--workers", "2"]
    # /tmp holds each worker's mapped copy of the cascade detector's shortened encoder (72 MB)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == "512Mi"
    one = render(chart).one("Deployment", full_name("gateway"))
    volumes = {v["name"]: v for v in one["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == "384Mi"
    values = {"gateway": {"replicas": 1, "workers": 2}, "redis": {"bundled": {"enabled": False}}}
    with pytest.raises(helm.HelmRenderError, match=r"gateway\.workers > 1 needs shared state"):
        render(chart, values)
