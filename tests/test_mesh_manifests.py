"""deploy/: Kubernetes, Istio and Envoy Gateway manifests, checked statically.

No cluster and no CRD schemas are available here, so the schema facts relied on are written down below as
data: for each kind, the keys it may use (a nested mapping; "*" accepts any value). They come from the
published API references: Kubernetes core/apps v1, Istio networking.istio.io/v1alpha3 EnvoyFilter,
Gateway API v1 HTTPRoute and v1beta1 ReferenceGrant, Envoy Gateway gateway.envoyproxy.io/v1alpha1
EnvoyExtensionPolicy (v1.3+: `allowModeOverride`, `metadata.writableNamespaces`). The Envoy config embedded
in the Istio patch is checked for real: against the xds protos and by `envoy --mode validate`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import json_format

from extproc.config import Config, parse_config
from extproc.deploy import envoy_config as ec
from support.envoy import envoy_validate

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
EXAMPLES = REPO / "examples"
ANY = "*"

_METADATA = {"name": ANY, "namespace": ANY, "labels": ANY, "annotations": ANY}
_PROBE = {
    "httpGet": {"path": ANY, "port": ANY},
    "grpc": {"port": ANY, "service": ANY},
    "periodSeconds": ANY,
    "failureThreshold": ANY,
    "initialDelaySeconds": ANY,
    "timeoutSeconds": ANY,
}
_CONTAINER = {
    "name": ANY,
    "image": ANY,
    "imagePullPolicy": ANY,
    "args": ANY,
    "command": ANY,
    "ports": {"name": ANY, "containerPort": ANY, "protocol": ANY},
    "readinessProbe": _PROBE,
    "livenessProbe": _PROBE,
    "startupProbe": _PROBE,
    "resources": {"requests": ANY, "limits": ANY},
    "securityContext": {
        "allowPrivilegeEscalation": ANY,
        "readOnlyRootFilesystem": ANY,
        "capabilities": {"drop": ANY, "add": ANY},
        "runAsNonRoot": ANY,
        "runAsUser": ANY,
    },
    "volumeMounts": {"name": ANY, "mountPath": ANY, "readOnly": ANY},
}
_PARENT_REF = {"group": ANY, "kind": ANY, "name": ANY, "namespace": ANY, "sectionName": ANY, "port": ANY}
_BACKEND_REF = {"group": ANY, "kind": ANY, "name": ANY, "namespace": ANY, "port": ANY, "weight": ANY}
_PROCESSING_MODE_OPTIONS = {"body": ANY, "attributes": ANY}
SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("v1", "ConfigMap"): {"apiVersion": ANY, "kind": ANY, "metadata": _METADATA, "data": ANY, "binaryData": ANY},
    ("apps/v1", "Deployment"): {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": _METADATA,
        "spec": {
            "replicas": ANY,
            "selector": {"matchLabels": ANY},
            "template": {
                "metadata": _METADATA,
                "spec": {
                    "securityContext": {"runAsNonRoot": ANY, "runAsUser": ANY, "seccompProfile": {"type": ANY}},
                    "terminationGracePeriodSeconds": ANY,
                    "containers": _CONTAINER,
                    "volumes": {"name": ANY, "configMap": {"name": ANY}},
                },
            },
        },
    },
    ("v1", "Service"): {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": _METADATA,
        "spec": {
            "selector": ANY,
            "ports": {"name": ANY, "port": ANY, "targetPort": ANY, "protocol": ANY, "appProtocol": ANY},
        },
    },
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": _METADATA,
        "spec": {
            "workloadSelector": {"labels": ANY},
            "configPatches": {
                "applyTo": ANY,
                "match": {
                    "context": ANY,
                    "listener": {"filterChain": {"filter": {"name": ANY, "subFilter": {"name": ANY}}}},
                },
                "patch": {"operation": ANY, "value": ANY},  # value: Envoy config, checked against Envoy below
            },
        },
    },
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": _METADATA,
        "spec": {
            "parentRefs": _PARENT_REF,
            "hostnames": ANY,
            "rules": {"matches": {"path": {"type": ANY, "value": ANY}}, "backendRefs": _BACKEND_REF},
        },
    },
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"): {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": _METADATA,
        "spec": {
            "targetRefs": {"group": ANY, "kind": ANY, "name": ANY, "sectionName": ANY},
            "extProc": {
                "backendRefs": _BACKEND_REF,
                "processingMode": {
                    "allowModeOverride": ANY,
                    "request": _PROCESSING_MODE_OPTIONS,
                    "response": _PROCESSING_MODE_OPTIONS,
                },
                "messageTimeout": ANY,
                "failOpen": ANY,
                "metadata": {"accessibleNamespaces": ANY, "writableNamespaces": ANY},
            },
        },
    },
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": _METADATA,
        "spec": {"from": {"group": ANY, "kind": ANY, "namespace": ANY}, "to": {"group": ANY, "kind": ANY, "name": ANY}},
    },
}
ENUMS = {
    "EnvoyFilter.applyTo": {
        "HTTP_FILTER",
        "NETWORK_FILTER",
        "CLUSTER",
        "LISTENER",
        "HTTP_ROUTE",
        "ROUTE_CONFIGURATION",
    },
    "EnvoyFilter.context": {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"},
    "EnvoyFilter.operation": {"MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"},
    "ExtProc.body": {"Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed"},
    "HTTPRoute.path.type": {"Exact", "PathPrefix", "RegularExpression"},
}
# Gateway API Duration: up to four number+unit groups.
GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
# What the server's admin endpoint serves (extproc/admin.py).
ADMIN_PATHS = {"/healthz", "/readyz", "/metrics"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


ALL = {path.relative_to(DEPLOY).as_posix(): documents(path) for path in sorted(DEPLOY.rglob("*.yaml"))}


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for docs in ALL.values() for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/, found {len(found)}"
    return found[0]


def check_keys(value: Any, schema: Any, where: str) -> None:
    if schema == ANY:
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_keys(item, schema, f"{where}[{i}]")
        return
    assert isinstance(value, dict), f"{where}: expected a mapping, got {value!r}"
    for key, item in value.items():
        assert key in schema, f"{where}.{key}: not a field of this kind (known: {sorted(schema)})"
        check_keys(item, schema[key], f"{where}.{key}")


def test_manifests_exist() -> None:
    assert set(ALL) == {"kubernetes/extproc.yaml", "istio/envoyfilter.yaml", "envoy-gateway/extproc.yaml"}


@pytest.mark.parametrize("file", sorted(ALL))
def test_fields_exist_in_the_published_schemas(file: str) -> None:
    for doc in ALL[file]:
        key = (doc["apiVersion"], doc["kind"])
        assert key in SCHEMAS, f"{file}: {key} has no schema facts here"
        check_keys(doc, SCHEMAS[key], f"{file}:{doc['kind']}/{doc['metadata']['name']}")


def test_schema_check_is_not_vacuous() -> None:
    broken = copy.deepcopy(find("EnvoyExtensionPolicy"))
    broken["spec"]["extProc"][0]["processingMode"]["request"]["bodyMode"] = "Buffered"
    with pytest.raises(AssertionError, match="bodyMode"):
        check_keys(broken, SCHEMAS[("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy")], "broken")


# --- Kubernetes -------------------------------------------------------------------------------------


def server_config() -> Config:
    """The ConfigMap's server config, with /plugins/<name>.wasm (the extproc-plugins ConfigMap, created from
    the committed examples as the manifest's header says) pointing at examples/<name>/<name>.wasm."""
    text = find("ConfigMap", "extproc-config")["data"]["extproc.yaml"]
    data = yaml.safe_load(text)
    for spec in data["plugins"]:
        path = Path(spec["path"])
        assert path.parent == Path("/plugins"), spec["path"]
        wasm = EXAMPLES / path.stem / path.name
        assert wasm.is_file(), f"{spec['path']}: no committed example {wasm.relative_to(REPO)}"
        spec["path"] = str(wasm)
    return parse_config(data, DEPLOY / "kubernetes" / "extproc.yaml")


def test_plugins_configmap_command_covers_the_config() -> None:
    """The header's `kubectl create configmap extproc-plugins` puts exactly the config's plugins in /plugins."""
    header = (DEPLOY / "kubernetes" / "extproc.yaml").read_text().split("\napiVersion:", 1)[0]
    files = re.findall(r"--from-file=(\S+)", header)
    assert files and all((REPO / f).is_file() for f in files), files
    configured = [spec.path for spec in server_config().plugins]
    assert sorted(configured) == sorted(REPO / f for f in files)


def test_deployment_service_and_probes_agree() -> None:
    deployment, service = find("Deployment"), find("Service")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["appProtocol"] == "grpc"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "admin" and get["path"] in ADMIN_PATHS, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    config = server_config()
    assert config.server.listen_port == ports["grpc"]
    assert config.server.admin_listen is not None and config.server.admin_listen.port == ports["admin"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["spec"]["volumes"]}
    assert mounts["plugins"] == "/plugins" and volumes["plugins"] == "extproc-plugins"
    assert volumes["config"] == "extproc-config"
    assert option_value(container["args"], "--config").startswith(mounts["config"] + "/")


def option_value(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- Istio ----------------------------------------------------------------------------------------------


def istio_ext_proc() -> dict[str, Any]:
    (patch,) = find("EnvoyFilter")["spec"]["configPatches"]
    assert patch["applyTo"] in ENUMS["EnvoyFilter.applyTo"]
    assert patch["match"]["context"] in ENUMS["EnvoyFilter.context"]
    assert patch["patch"]["operation"] in ENUMS["EnvoyFilter.operation"]
    value: dict[str, Any] = patch["patch"]["value"]
    assert value["name"] == ec.EXT_PROC_FILTER
    return value


def test_istio_patch_is_the_generated_filter_for_the_configmap() -> None:
    service = find("Service")
    typed = istio_ext_proc()["typed_config"]
    cluster = typed["grpc_service"]["envoy_grpc"]["cluster_name"]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    meta = service["metadata"]
    assert cluster == f"outbound|{port}||{meta['name']}.{meta['namespace']}.svc.cluster.local"
    json_format.ParseDict({k: v for k, v in typed.items() if k != "@type"}, ext_proc_pb2.ExternalProcessor())

    config = server_config()
    generated = ec.ext_proc_filter(config, ec.phase_needs(config), ec.Options(servers=(ec.Endpoint("x", 1),)))
    expected = copy.deepcopy(generated["typed_config"])
    expected["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster
    assert typed == expected, "regenerate the patch with `extproc envoy-config` for the ConfigMap's plugins"


@pytest.mark.e2e
def test_envoy_accepts_the_istio_patch(tmp_path: Path) -> None:
    config = server_config()
    proxy = ec.Proxy(ec.Endpoint("127.0.0.1", 10000), ec.Endpoint("127.0.0.1", 9901), ec.Endpoint("127.0.0.1", 80))
    document = ec.bootstrap(config, ec.phase_needs(config), ec.Options(servers=(ec.Endpoint("127.0.0.1", 1),)), proxy)
    value = istio_ext_proc()
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0] = value
    # Istio creates the cluster; stand in for it under the name the patch uses.
    document["static_resources"]["clusters"][1]["name"] = value["typed_config"]["grpc_service"]["envoy_grpc"][
        "cluster_name"
    ]
    document["static_resources"]["clusters"][1]["load_assignment"]["cluster_name"] = document["static_resources"][
        "clusters"
    ][1]["name"]
    path = tmp_path / "istio.yaml"
    path.write_text(yaml.safe_dump(document))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Envoy Gateway ------------------------------------------------------------------------------------


def test_envoy_gateway_policy_matches_the_plugins() -> None:
    policy, service, grant = find("EnvoyExtensionPolicy"), find("Service"), find("ReferenceGrant")
    config = server_config()
    needs = ec.phase_needs(config)
    plan = ec.plan_routes(config.plugins)

    (target,) = policy["spec"]["targetRefs"]
    route = find("HTTPRoute", target["name"])
    assert target["kind"] == "HTTPRoute" and target["group"] == "gateway.networking.k8s.io"
    paths = [m["path"] for rule in route["spec"]["rules"] for m in rule["matches"]]
    assert all(p["type"] in ENUMS["HTTPRoute.path.type"] for p in paths)
    # Segment-wise PathPrefix only for prefixes ending in "/"; the others as "<prefix>.*" regexes,
    # so that every path a plugin's string prefix matches is routed through ext_proc.
    assert not plan.everything
    routed = sorted(p["value"] if p["type"] == "PathPrefix" else p["value"].removesuffix(".*") for p in paths)
    assert routed == list(plan.prefixes)
    for p in paths:
        assert (p["type"] == "PathPrefix") == p["value"].endswith("/"), p
    other = find("HTTPRoute", "other-routes")
    assert [m["path"]["value"] for r in other["spec"]["rules"] for m in r["matches"]] == ["/"]

    (ext_proc,) = policy["spec"]["extProc"]
    (backend,) = ext_proc["backendRefs"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["namespace"] == service["metadata"]["namespace"]
    assert backend["port"] in [p["port"] for p in service["spec"]["ports"]]
    mode = ext_proc["processingMode"]
    assert mode["allowModeOverride"] is True
    # `request` present: headers are sent; a body mode only where a plugin reads that body.
    assert mode["request"].get("body") == ("Buffered" if needs.request_body else None)
    assert ("response" in mode) == needs.response_headers
    assert mode.get("response", {}).get("body") == ("Buffered" if needs.response_body else None)
    assert {mode["request"].get("body"), mode.get("response", {}).get("body")} - {None} <= ENUMS["ExtProc.body"]
    assert GATEWAY_DURATION.match(ext_proc["messageTimeout"])
    assert ext_proc["messageTimeout"] == f"{ec.derived_message_timeout_ms(needs.plugins)}ms"
    assert ext_proc["metadata"]["writableNamespaces"] == ["extproc"]

    assert grant["metadata"]["namespace"] == backend["namespace"]
    assert grant["spec"]["from"] == [
        {"group": "gateway.envoyproxy.io", "kind": "EnvoyExtensionPolicy", "namespace": policy["metadata"]["namespace"]}
    ]
    assert grant["spec"]["to"] == [{"group": "", "kind": "Service", "name": backend["name"]}]


def test_admin_paths_are_served() -> None:
    source = (REPO / "extproc" / "admin.py").read_text()
    for path in ADMIN_PATHS:
        assert f'"{path}"' in source, f"extproc/admin.py does not serve {path}"
