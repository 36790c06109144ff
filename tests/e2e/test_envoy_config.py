"""The rendered Envoy bootstraps are accepted by the Envoy binary the e2e tests run."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import json_format

from support.bootstrap import BODY_MODES, EXT_PROC_FILTER_NAME, render_bootstrap, render_ext_proc_filter
from support.envoy import envoy_validate

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    **{
        f"body-{mode.lower()}": {"request_body_mode": mode, "response_body_mode": mode}
        for mode in sorted(BODY_MODES - {"NONE"})
    },
    "headers-skip": {"request_header_mode": "SKIP", "response_header_mode": "SKIP"},
    "headers-default": {"request_header_mode": "DEFAULT", "response_header_mode": "DEFAULT"},
    "buffered-with-trailers": {
        "request_body_mode": "BUFFERED",
        "request_trailer_mode": "SEND",
        "response_trailer_mode": "SEND",
    },
    "fail-open-no-override-short-timeout": {
        "failure_mode_allow": True,
        "allow_mode_override": False,
        "message_timeout_ms": 250,
    },
    "per-route-disabled": {"per_route_disabled_prefixes": ("/off", "/static/")},
}


def _render(**kwargs: Any) -> dict[str, Any]:
    # --mode validate never binds, so the ports only need to be well-formed.
    return render_bootstrap(listen_port=10000, admin_port=10001, upstream_port=10002, extproc_port=10003, **kwargs)


def _envoy_validate(tmp_path: Path, bootstrap: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    return envoy_validate(path)


def _ext_proc_filter(bootstrap: dict[str, Any]) -> dict[str, Any]:
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = hcm["http_filters"]
    return next(f["typed_config"] for f in filters if f["name"] == EXT_PROC_FILTER_NAME)


def _routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict[str, Any]] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    return routes


@pytest.mark.e2e
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_envoy_accepts_bootstrap(tmp_path: Path, variant: str) -> None:
    result = _envoy_validate(tmp_path, _render(**VARIANTS[variant]))
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "OK" in result.stdout


@pytest.mark.e2e
def test_envoy_validation_is_not_vacuous(tmp_path: Path) -> None:
    # A combination Envoy is known to reject must fail, or the test above proves nothing.
    bootstrap = _render(request_body_mode="FULL_DUPLEX_STREAMED")
    broken = copy.deepcopy(bootstrap)
    _ext_proc_filter(broken)["processing_mode"]["request_trailer_mode"] = "SKIP"
    result = _envoy_validate(tmp_path, broken)
    assert result.returncode != 0
    assert "request_trailer_mode" in result.stdout + result.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ext_proc_config_matches_proto(variant: str) -> None:
    # Parsing with the xds-protos message catches misspelled fields without an Envoy.
    typed = dict(_ext_proc_filter(_render(**VARIANTS[variant])))
    typed.pop("@type")
    message = json_format.ParseDict(typed, ext_proc_pb2.ExternalProcessor())
    assert message.grpc_service.envoy_grpc.cluster_name == "extproc"
    assert list(message.metadata_options.receiving_namespaces.untyped) == ["extproc"]
    assert message.mutation_rules.allow_all_routing.value is True


def test_disabled_prefixes_route_ahead_of_catch_all() -> None:
    routes = _routes(_render(per_route_disabled_prefixes=["/off", "/static/"]))
    assert [r["match"]["prefix"] for r in routes] == ["/off", "/static/", "/"]
    # The filter is off by default and only the catch-all switches it on.
    assert all("typed_per_filter_config" not in route for route in routes[:2])
    per_route = dict(routes[2]["typed_per_filter_config"][EXT_PROC_FILTER_NAME])
    per_route.pop("@type")
    assert not json_format.ParseDict(per_route, ext_proc_pb2.ExtProcPerRoute()).disabled


def test_full_duplex_sends_trailers_by_default() -> None:
    mode = render_ext_proc_filter(request_body_mode="FULL_DUPLEX_STREAMED")["processing_mode"]
    assert mode["request_trailer_mode"] == "SEND"
    assert mode["response_trailer_mode"] == "SKIP"


def test_message_timeout_rendering() -> None:
    assert render_ext_proc_filter(message_timeout_ms=250)["message_timeout"] == "0.250s"
    assert render_ext_proc_filter(message_timeout_ms=5000)["message_timeout"] == "5.000s"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"request_body_mode": "BUFFER"}, ValueError),
        ({"response_header_mode": "send"}, ValueError),
        ({"request_body_mode": "FULL_DUPLEX_STREAMED", "request_trailer_mode": "SKIP"}, ValueError),
        ({"per_route_disabled_prefixes": "/off"}, TypeError),
    ],
    ids=["body-mode-BUFFER", "lowercase-send", "duplex-with-trailers-skipped", "prefixes-as-a-string"],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        _render(**kwargs)
