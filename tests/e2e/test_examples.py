"""Each example plugin proves its behaviour through a real Envoy, our server and the echo upstream."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from scripts import sdk_build
from tests.examples_build import example_wasm

from .conftest import StackFactory
from .harness import Response, Upstream, request

pytestmark = pytest.mark.e2e

# The examples written with every SDK run the same checks (ids assemblyscript_sdk, rust_sdk, c_sdk).
SDKS = ["assemblyscript", "rust", "c"]
each_sdk = pytest.mark.parametrize("sdk", SDKS, ids=[f"{sdk}_sdk" for sdk in SDKS])


def config_yaml(name: str, config: dict[str, Any], sdk: str = "assemblyscript", **fields: Any) -> str:
    wasm = example_wasm(name) if sdk == "assemblyscript" else sdk_build.example_wasm(sdk, name)
    plugin = {"name": name, "path": str(wasm), "config": config, **fields}
    return json.dumps({"plugins": [plugin]})  # JSON is YAML


def upstream_headers(response: Response) -> list[tuple[str, str]]:
    return [(name, value) for name, value in response.json()["headers"]]


@each_sdk
def test_header_rewrite(make_stack: StackFactory, sdk: str) -> None:
    config = {
        "request": {"set": {"x-team": "payments"}, "remove": ["x-debug"], "rename": {"x-old-id": "x-client-id"}},
        "response": {"set": {"x-frame-options": "DENY"}, "remove": ["set-cookie"]},
    }
    with make_stack(config_yaml("header-rewrite", config, sdk)) as stack:
        response = request(
            "GET", f"{stack.url}/set-cookie", headers=[("x-debug", "1"), ("x-old-id", "a"), ("x-team", "other")]
        )
    assert response.status == 200
    seen = upstream_headers(response)
    assert ("x-team", "payments") in seen and ("x-team", "other") not in seen
    assert ("x-client-id", "a") in seen
    assert all(name not in ("x-debug", "x-old-id") for name, _ in seen)
    assert response.header("x-frame-options") == "DENY"
    assert response.header_values("set-cookie") == []


@each_sdk
def test_json_transform_redacted_field_never_reaches_the_upstream(make_stack: StackFactory, sdk: str) -> None:
    config = {"request": {"redact": ["ssn"], "rename": {"name": "full_name"}}}
    body = json.dumps({"name": "Ada", "ssn": "123-45-6789", "plan": "pro"}).encode()
    with make_stack(config_yaml("json-transform", config, sdk)) as stack:
        response = request("POST", f"{stack.url}/users", headers=[("content-type", "application/json")], body=body)
        plain = request("POST", f"{stack.url}/notes", headers=[("content-type", "text/plain")], body=b'{"ssn":1}')
    assert response.status == 200
    echoed = response.json()
    assert json.loads(echoed["body"]) == {"full_name": "Ada", "plan": "pro"}
    # The server fixed content-length to the new body, or the upstream would have read a wrong length.
    assert echoed["body_length"] == len(echoed["body"].encode())
    assert plain.json()["body"] == '{"ssn":1}'


def test_cache_control_answers_a_matching_etag_with_304(make_stack: StackFactory, upstream: Upstream) -> None:
    config = {"etag": True, "rules": [{"path": "/text", "cache_control": "public, max-age=60", "vary": ["Accept"]}]}
    with make_stack(config_yaml("cache-control", config)) as stack:
        first = request("GET", f"{stack.url}/text?body=hello")
        etag = first.header("etag")
        assert etag is not None and etag.startswith('"')
        second = request("GET", f"{stack.url}/text?body=hello", headers=[("if-none-match", etag)])
        changed = request("GET", f"{stack.url}/text?body=changed", headers=[("if-none-match", etag)])
    assert first.status == 200 and first.body == b"hello"
    assert first.header("cache-control") == "public, max-age=60"
    assert first.header("vary") == "Accept"
    assert second.status == 304
    assert second.body == b""
    assert second.header("etag") == etag
    assert changed.status == 200 and changed.body == b"changed"


def test_responder_answers_configured_endpoints_only(make_stack: StackFactory, upstream: Upstream) -> None:
    config = {
        "health": "/healthz",
        "routes": [
            {"path": "/mock/user", "json": {"id": 7}},
            {"path": "/old/*", "redirect": "http://example.com/new", "status": 301},
        ],
    }
    with make_stack(config_yaml("responder", config)) as stack:
        before = upstream.count()
        mock = request("GET", f"{stack.url}/mock/user")
        redirect = request("GET", f"{stack.url}/old/page")
        health = request("GET", f"{stack.url}/healthz")
        answered_here = upstream.count()
        passed = request("GET", f"{stack.url}/api/items")
    assert mock.status == 200 and mock.json() == {"id": 7}
    assert redirect.status == 301 and redirect.header("location") == "http://example.com/new"
    assert health.status == 200 and health.json() == {"status": "ok"}
    assert answered_here == before
    assert passed.status == 200 and passed.json()["path"] == "/api/items"


def test_responder_maintenance_mode(make_stack: StackFactory) -> None:
    config = {"health": "/healthz", "maintenance": {"enabled": True, "retry_after": 90}}
    with make_stack(config_yaml("responder", config)) as stack:
        down = request("GET", f"{stack.url}/api/items")
        health = request("GET", f"{stack.url}/healthz")
    assert down.status == 503
    assert down.header("retry-after") == "90"
    assert health.status == 200


def test_rate_limit_holds_exactly_across_concurrent_requests_and_instances(make_stack: StackFactory) -> None:
    capacity, clients = 5, 24
    # One token per 1000 s: none comes back during the test.
    config = {"capacity": capacity, "refill_per_second": 0.001, "key_header": "x-api-key"}
    with make_stack(config_yaml("rate-limit", config, pool_size=8)) as stack:

        def call(_: int) -> Response:
            return request("GET", f"{stack.url}/limited", headers=[("x-api-key", "client-1")])

        with ThreadPoolExecutor(max_workers=clients) as pool:
            responses = list(pool.map(call, range(clients)))
        other_client = request("GET", f"{stack.url}/limited", headers=[("x-api-key", "client-2")])
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) == capacity, statuses
    assert statuses.count(429) == clients - capacity, statuses
    limited = next(r for r in responses if r.status == 429)
    assert limited.header("retry-after") == "1000"
    assert limited.header("x-ratelimit-limit") == str(capacity)
    assert limited.header("x-ratelimit-remaining") == "0"
    assert other_client.status == 200


def test_rate_limit_by_client_address_after_the_bucket_empties(make_stack: StackFactory) -> None:
    with make_stack(config_yaml("rate-limit", {"capacity": 2, "refill_per_second": 0.001})) as stack:
        statuses = [request("GET", f"{stack.url}/x").status for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_api_key(make_stack: StackFactory) -> None:
    config = {"keys": {"k-1": "team-a"}, "forward_as": "x-client", "public": ["/public/*"]}
    with make_stack(config_yaml("api-key", config)) as stack:
        missing = request("GET", f"{stack.url}/api")
        known = request("GET", f"{stack.url}/api", headers=[("x-api-key", "k-1")])
        public = request("GET", f"{stack.url}/public/logo")
    assert missing.status == 401
    assert missing.header("www-authenticate") == 'ApiKey header="x-api-key"'
    assert known.status == 200
    seen = upstream_headers(known)
    assert ("x-client", "team-a") in seen
    assert all(name != "x-api-key" for name, _ in seen)
    assert public.status == 200
