"""Safe rollouts through a real Envoy: a shadow version's differences counted while responses stay the live
version's, a canary serving its share with each client kept on one version, a recorded run replayed
against a changed plugin, and each plugin's outcome in Envoy's access log."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from support.metrics import metric, scrape_metrics
from support.plugins import scripted
from support.processes import default_server_cmd, free_port, http_get, wait_until

from .conftest import StackFactory
from .harness import Stack, request

pytestmark = pytest.mark.e2e


def set_header(name: str, value: str) -> str:
    return json.dumps({"headers": {"set": [{"name": name, "value": value}]}})


def config(admin_port: int, *plugins: dict[str, Any], **server: Any) -> str:
    return json.dumps({"server": {"admin_listen": f"127.0.0.1:{admin_port}", **server}, "plugins": list(plugins)})


def upstream_header(stack: Stack, name: str, headers: Sequence[tuple[str, str]] = (), body: bytes | None = None) -> str:
    """The value of `name` in the request as the upstream got it (the echo upstream answers what it saw)."""
    response = request("POST" if body is not None else "GET", f"{stack.url}/echo", headers=headers, body=body)
    assert response.status == 200, response.text
    seen: list[str] = [value for key, value in response.json()["headers"] if key == name]
    assert len(seen) == 1, seen
    return seen[0]


def test_a_shadow_version_s_differences_are_counted_and_never_applied(
    plugin_dir: Path, make_stack: StackFactory
) -> None:
    admin_port = free_port()
    entry = scripted(plugin_dir, "tier", process_request_headers=json.loads(set_header("x-tier", "gold")))
    entry["candidate"] = {
        "path": str(plugin_dir / "scripted.wasm"),
        "fraction": 1,
        "config": {"process_request_headers": set_header("x-tier", "platinum")},
    }
    with make_stack(config(admin_port, entry)) as stack:
        admin = f"http://127.0.0.1:{admin_port}"
        tiers = [upstream_header(stack, "x-tier") for _ in range(10)]

        def compared() -> float:
            labels = {"plugin": "tier", "phase": "process_request_headers"}
            return metric(scrape_metrics(admin), "extproc_candidate_comparisons_total", **labels, result="differ")

        wait_until(lambda: compared() == 10, 10, "ten shadow comparisons")
        samples = scrape_metrics(admin)
        _, text = http_get(f"{admin}/plugins")
        log = stack.wait_for_server_log("differs from the live version")
    assert tiers == ["gold"] * 10
    labels = {"plugin": "tier", "phase": "process_request_headers"}
    assert metric(samples, "extproc_candidate_differences_total", **labels, part="headers") == 10
    assert metric(samples, "extproc_candidate_comparisons_total", **labels, result="agree") == 0
    assert metric(samples, "extproc_plugin_calls_total", plugin="tier@candidate", phase="process_request_headers") == 10
    assert metric(samples, "extproc_plugin_circuit_breaker_state", plugin="tier@candidate", state="closed") == 1
    assert metric(samples, "extproc_plugin_pool_max_instances", plugin="tier@candidate") > 0
    candidate = json.loads(text)["plugins"][0]["candidate"]
    assert {key: candidate[key] for key in ("mode", "fraction", "compared", "agreed", "agreement")} == {
        "mode": "shadow",
        "fraction": 1.0,
        "compared": 10,
        "agreed": 0,
        "agreement": 0.0,
    }
    # What differed is named; the values are not logged.
    assert "shadow tier@candidate differs from the live version in request_headers: headers differ: set x-tier" in log
    assert "platinum" not in log


def canary_picks(plugin: str, key: str, fraction: float) -> bool:
    """The documented rule: blake2b (8 bytes) of the plugin's name, a zero byte and the key, below the fraction."""
    digest = hashlib.blake2b(plugin.encode() + b"\0" + key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def test_a_canary_serves_its_share_and_keeps_each_client_on_one_version(
    plugin_dir: Path, make_stack: StackFactory
) -> None:
    admin_port = free_port()
    entry = scripted(plugin_dir, "pricing", process_request_headers=json.loads(set_header("x-version", "v1")))
    entry["candidate"] = {
        "path": str(plugin_dir / "scripted.wasm"),
        "mode": "canary",
        "fraction": 0.25,
        "key_header": "x-user",
        "config": {"process_request_headers": set_header("x-version", "v2")},
    }
    users = [f"user-{i}" for i in range(40)]
    with make_stack(config(admin_port, entry)) as stack:
        first = {user: upstream_header(stack, "x-version", [("x-user", user)]) for user in users}
        again = {user: upstream_header(stack, "x-version", [("x-user", user)]) for user in users}
        anonymous = upstream_header(stack, "x-version")
        samples = scrape_metrics(f"http://127.0.0.1:{admin_port}")
    expected = {user: "v2" if canary_picks("pricing", user, 0.25) else "v1" for user in users}
    assert first == expected
    assert again == first
    assert 0 < list(expected.values()).count("v2") < len(users)
    assert anonymous == "v1"
    canary_share = 2 * list(expected.values()).count("v2")
    assert metric(samples, "extproc_candidate_exchanges_total", plugin="pricing", version="candidate") == canary_share
    assert metric(
        samples, "extproc_plugin_calls_total", plugin="pricing@candidate", phase="process_request_headers"
    ) == (canary_share)


def test_a_recorded_run_replayed_against_a_changed_plugin_reports_the_exact_differences(
    tmp_path: Path, plugin_dir: Path, make_stack: StackFactory
) -> None:
    records = tmp_path / "records"

    def recording_server(config_path: Path, port: int) -> list[str]:
        return [
            *default_server_cmd(config_path, port),
            "--record",
            str(records),
            "--record-redact-field",
            "password",
        ]

    live = {"headers": {"set": [{"name": "x-tier", "value": "gold"}]}, "dynamic_metadata": {"tier": "gold"}}
    entry = scripted(plugin_dir, "tier", process_request_body=live)
    body = json.dumps({"user": "ada", "password": "hunter2"}).encode()
    with make_stack(
        json.dumps({"plugins": [entry]}), server_cmd=recording_server, request_body_mode="BUFFERED"
    ) as stack:
        for user in ("ada", "bob", "eve"):
            assert upstream_header(stack, "x-tier", [("authorization", f"Bearer {user}-token")], body) == "gold"
        wait_until(lambda: len(list((records / "tier").glob("*.json"))) == 3, 10, "three records")
    texts = [path.read_text() for path in sorted((records / "tier").glob("*.json"))]
    assert all("hunter2" not in text and "-token" not in text for text in texts)

    changed = dict(
        entry,
        config=scripted(plugin_dir, "tier", process_request_body={**live, "dynamic_metadata": {"tier": "silver"}})[
            "config"
        ],
    )
    settings = tmp_path / "changed.yaml"
    settings.write_text(json.dumps({"plugins": [changed]}))
    replay = [sys.executable, "-m", "extproc", "plugin", "replay", str(plugin_dir / "scripted.wasm"), str(records)]
    done = subprocess.run(
        [*replay, "--server-config", str(settings)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines[:6:2]] == ["DIFF"] * 3
    assert lines[1:6:2] == ['  dynamic_metadata.tier: expected "gold", got "silver"'] * 3
    assert "0 same, 3 different, 0 failed" in lines[6]

    original = tmp_path / "original.yaml"
    original.write_text(json.dumps({"plugins": [entry]}))
    same = subprocess.run(
        [*replay, "--server-config", str(original)], capture_output=True, text=True, timeout=120, check=False
    )
    assert same.returncode == 0, same.stdout + same.stderr
    assert "3 same, 0 different, 0 failed" in same.stdout


_OUTCOMES = re.compile(r'plugins="([^"]*)"')


def test_the_access_log_line_carries_each_plugin_s_outcome_and_time(plugin_dir: Path, make_stack: StackFactory) -> None:
    plugins = [
        scripted(plugin_dir, "hdr", process_request_headers=json.loads(set_header("x-a", "1"))),
        scripted(plugin_dir, "quiet", process_request_headers={}),
        {"name": "flaky", "path": str(plugin_dir / "trap.wasm"), "on_error": "fail_open"},
        {"name": "guard", "path": str(plugin_dir / "trap.wasm"), "match": {"path_prefix": "/guarded"}},
    ]
    text = json.dumps({"server": {"outcome_metadata": True}, "plugins": plugins})
    with make_stack(text, plugin_outcomes=True) as stack:
        passed = request("GET", f"{stack.url}/open", headers=[("x-request-id", "open-1")])
        refused = request("GET", f"{stack.url}/guarded", headers=[("x-request-id", "guarded-1")])
        log = stack.wait_for_envoy_log('"guarded-1"')
        log = stack.wait_for_envoy_log('"open-1"')
    assert passed.status == 200 and refused.status == 503
    lines = {rid: next(line for line in log.splitlines() if f'"{rid}"' in line) for rid in ("open-1", "guarded-1")}
    outcomes = {rid: _outcome_entries(line) for rid, line in lines.items()}
    assert outcomes == {
        "open-1": [
            "hdr:request_headers=applied",
            "quiet:request_headers=no_change",
            "flaky:request_headers=failed(trap)",
        ],
        # The plugin that failed the request closed is in its line too: the immediate response carries it.
        "guarded-1": [
            "hdr:request_headers=applied",
            "quiet:request_headers=no_change",
            "flaky:request_headers=failed(trap)",
            "guard:request_headers=failed(trap)",
        ],
    }


def _outcome_entries(line: str) -> list[str]:
    found = _OUTCOMES.search(line)
    assert found is not None, line
    entries = found.group(1).split(" ")
    for entry in entries:
        assert re.fullmatch(r"[^ ]+/[0-9]+us", entry), entry
    return [entry.rpartition("/")[0] for entry in entries]
