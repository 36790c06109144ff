"""Recording plugin calls (extproc serve --record), replaying them against a module (extproc plugin replay)
and turning them into CASES.yaml (extproc plugin cases), in process and through the command line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.comparison import Difference, differences, plain
from extproc.config import ListenAddress, parse_config
from extproc.contract import HeaderChanges, ImmediateReply, PluginOutput
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import PluginThreads
from extproc.recording import Recorder, RecordError, RecordOptions, load_records, redact_input
from extproc.rollout import Observe
from extproc.testing import exchange_async, request, response, run_cases
from extproc.workers import Supervisor
from support.plugins import scripted


def set_header(name: str, value: str) -> dict[str, Any]:
    return {"headers": {"set": [{"name": name, "value": value}]}}


@pytest.fixture
def record(tmp_path: Path, threads: PluginThreads) -> Iterator[Any]:
    """record(entries, exchanges, **options): run the exchanges through a server plugin set that records
    into tmp_path/rec, and return that folder once every record is written."""
    sets: list[PluginSet] = []

    def make(entries: list[dict[str, Any]], exchanges: list[tuple[Any, Any]], **options: Any) -> Path:
        directory = tmp_path / "rec"
        recorder = Recorder(RecordOptions(directory, **options))
        config = parse_config({"plugins": entries}, tmp_path / "extproc.yaml")
        plugins = PluginSet.load(config, threads, Observe(recorder=recorder))
        sets.append(plugins)

        async def all_exchanges() -> None:
            for req, resp in exchanges:
                await exchange_async(plugins, req, resp)

        asyncio.run(all_exchanges())
        recorder.close()
        return directory

    yield make
    for plugins in sets:
        plugins.close()


def test_each_call_of_a_sampled_exchange_is_one_readable_file(plugin_dir: Path, record: Any) -> None:
    entries = [
        scripted(plugin_dir, "tagger", process_request_headers=set_header("x-tier", "gold")),
        scripted(plugin_dir, "stamper", process_response_headers=set_header("x-stamp", "1")),
    ]
    req = request("POST", "/api", {"x-request-id": "rid-1"}, json_body={"name": "Ada"})
    directory = record(entries, [(req, response(200))])
    (tagged,) = (directory / "tagger").glob("*.json")
    (stamped,) = (directory / "stamper").glob("*.json")
    assert tagged.name.endswith("-request_headers.json") and stamped.name.endswith("-response_headers.json")
    document = json.loads(tagged.read_text())
    assert {key: document[key] for key in ("format", "plugin", "version", "phase", "request_id")} == {
        "format": "extproc-record/1",
        "plugin": "tagger",
        "version": "live",
        "phase": "request_headers",
        "request_id": "rid-1",
    }
    assert document["input"]["request"]["path"] == "/api"
    assert document["output"] == set_header("x-tier", "gold")
    assert isinstance(document["latency_us"], int)


def test_secrets_are_masked_in_input_and_output(plugin_dir: Path, record: Any) -> None:
    output = {
        "headers": {"set": [{"name": "x-token", "value": "minted"}, {"name": "x-plain", "value": "seen"}]},
        "body": {"text": json.dumps({"password": "hunter2", "nested": {"card": "4111"}, "ok": 1})},
    }
    entry = scripted(plugin_dir, "secretive", process_request_body=output)
    body = {"user": "ada", "password": "pw", "items": [{"card": "4242"}]}
    req = request("POST", "/", {"authorization": "Bearer abc", "x-token": "t0", "x-other": "o"}, json_body=body)
    directory = record(
        [entry], [(req, None)], redact_headers=frozenset({"x-token"}), redact_fields=frozenset({"password", "card"})
    )
    (path,) = (directory / "secretive").glob("*.json")
    text = path.read_text()
    for secret in ("Bearer abc", "t0", '"pw"', "4242", "minted", "hunter2", "4111"):
        assert secret not in text
    document = json.loads(text)
    headers = {pair["name"]: pair["value"] for pair in document["input"]["request"]["headers"]}
    assert headers["authorization"] == headers["x-token"] == "***"
    assert headers["x-other"] == "o"
    assert json.loads(document["input"]["request"]["body"]["text"]) == {
        "user": "ada",
        "password": "***",
        "items": [{"card": "***"}],
    }
    assert document["output"]["headers"]["set"] == [
        {"name": "x-token", "value": "***"},
        {"name": "x-plain", "value": "seen"},
    ]
    assert json.loads(document["output"]["body"]["text"]) == {"password": "***", "nested": {"card": "***"}, "ok": 1}
    assert document["redacted"]["body_fields"] == ["card", "password"]


def test_a_body_that_needs_no_masking_keeps_its_bytes() -> None:
    payload = {"request": {"headers": [], "body": {"text": '{ "a" : 1 }'}}}
    assert redact_input(payload, frozenset(), frozenset({"password"}))["request"]["body"] == {"text": '{ "a" : 1 }'}


def test_recording_stops_at_its_size_cap(plugin_dir: Path, record: Any) -> None:
    entry = scripted(plugin_dir, "capped", process_request_headers=set_header("x-a", "1"))
    directory = record([entry], [(request(), None)] * 20, max_bytes=5000)
    files = list((directory / "capped").glob("*.json"))
    assert 0 < len(files) < 20
    assert sum(path.stat().st_size for path in files) <= 5000


def test_only_the_chosen_plugins_and_no_unsampled_exchange_are_recorded(plugin_dir: Path, record: Any) -> None:
    entries = [
        scripted(plugin_dir, "wanted", process_request_headers={}),
        scripted(plugin_dir, "unwanted", process_request_headers={}),
    ]
    directory = record(entries, [(request(), None)] * 3, plugins=frozenset({"wanted"}))
    assert len(list((directory / "wanted").glob("*.json"))) == 3
    assert not (directory / "unwanted").exists()


# --- replay -------------------------------------------------------------------------------------------


def replay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc", "plugin", *args], capture_output=True, text=True, timeout=120, check=False
    )


def scripted_server_config(tmp_path: Path, plugin_dir: Path, name: str, **outputs: Any) -> Path:
    path = tmp_path / f"{name}-server.yaml"
    path.write_text(json.dumps({"plugins": [scripted(plugin_dir, name, **outputs)]}))
    return path


def test_a_replay_against_the_recorded_module_finds_nothing(tmp_path: Path, plugin_dir: Path, record: Any) -> None:
    outputs = {"process_request_headers": set_header("x-tier", "gold")}
    directory = record([scripted(plugin_dir, "tier", **outputs)], [(request(), None)] * 2)
    same = scripted_server_config(tmp_path, plugin_dir, "tier", **outputs)
    done = replay_cli("replay", str(plugin_dir / "scripted.wasm"), str(directory), "--server-config", str(same))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 same, 0 different, 0 failed" in done.stdout


def test_a_replay_against_a_changed_module_reports_exactly_what_changed(
    tmp_path: Path, plugin_dir: Path, record: Any
) -> None:
    before = {"headers": {"set": [{"name": "x-tier", "value": "gold"}], "remove": ["x-debug"]}}
    directory = record([scripted(plugin_dir, "tier", process_request_headers=before)], [(request(), None)])
    after = {"headers": {"set": [{"name": "x-tier", "value": "silver"}], "remove": ["x-debug"]}}
    changed = scripted_server_config(tmp_path, plugin_dir, "tier", process_request_headers=after)
    done = replay_cli(
        "replay", str(plugin_dir / "scripted.wasm"), str(directory / "tier"), "--server-config", str(changed)
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("DIFF tier/") and " request_headers " in lines[0] and "(recorded " in lines[0]
    assert lines[1] == "  headers.set x-tier: expected 'gold', got 'silver'"
    assert "1 same" not in done.stdout and "0 same, 1 different, 0 failed" in done.stdout
    assert lines[-1].startswith("latency  p50 ")


def test_a_replayed_call_that_fails_is_reported_as_a_failure(tmp_path: Path, plugin_dir: Path, record: Any) -> None:
    directory = record([scripted(plugin_dir, "tier", process_request_headers={})], [(request(), None)])
    done = replay_cli("replay", str(plugin_dir / "trap.wasm"), str(directory))
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL tier/")
    assert "failed: expected succeeded, got failed (trap)" in done.stdout


@pytest.mark.parametrize(
    ("layout", "extra", "message"),
    [
        pytest.param("empty", (), "no records", id="no-records"),
        pytest.param("two-plugins", (), "records of several plugins (a, b); choose one with --plugin", id="ambiguous"),
        pytest.param(
            "two-plugins", ("--plugin", "c"), "no records of plugin 'c' (it has records of a, b)", id="unknown"
        ),
        pytest.param("not-a-record", (), "not a record", id="foreign-json"),
        pytest.param("missing", (), "not a directory", id="missing"),
    ],
)
def test_a_replay_with_nothing_to_replay_exits_2(
    tmp_path: Path, plugin_dir: Path, record: Any, layout: str, extra: tuple[str, ...], message: str
) -> None:
    directory = tmp_path / "rec"
    if layout == "two-plugins":
        entries = [
            scripted(plugin_dir, "a", process_request_headers={}),
            scripted(plugin_dir, "b", process_request_headers={}),
        ]
        record(entries, [(request(), None)])
    elif layout == "empty":
        directory.mkdir()
    elif layout == "not-a-record":
        directory.mkdir()
        (directory / "x.json").write_text("{}")
    done = replay_cli("replay", str(plugin_dir / "scripted.wasm"), str(directory), *extra)
    assert done.returncode == 2
    assert message in done.stderr


# --- CASES.yaml -----------------------------------------------------------------------------------


def test_recorded_calls_become_cases_that_pass_on_the_module_and_fail_on_a_changed_one(
    tmp_path: Path, plugin_dir: Path, record: Any
) -> None:
    outputs = {
        "process_request_headers": {
            "headers": {"set": [{"name": "x-tier", "value": "gold"}], "append": [{"name": "x-seen", "value": "2"}]},
            "dynamic_metadata": {"tier": "gold"},
        },
        "process_response_headers": {"headers": {"remove": ["server"]}},
    }
    entry = scripted(plugin_dir, "tier", **outputs)
    req = request("GET", "/shop?page=2", {"x-seen": "1"}, authority="shop.example")
    directory = record([entry], [(req, response(200, {"server": "up"}))])
    cases_file = tmp_path / "CASES.yaml"
    done = replay_cli("cases", str(directory), "-o", str(cases_file))
    assert done.returncode == 0, done.stderr
    document = yaml.safe_load(cases_file.read_text())
    assert document["plugin"] == {"name": "tier", "execution_points": ["request_headers", "response_headers"]}
    request_case, response_case = document["cases"]
    assert request_case["request"]["path"] == "/shop?page=2"
    assert request_case["expect"] == {
        "upstream": {"headers": {"x-tier": "gold", "x-seen": ["1", "2"]}},
        "metadata": {"tier": {"tier": "gold"}},
    }
    assert response_case["expect"] == {"response": {"headers": {"server": None}}}

    # The recorded module's config makes the cases pass; a module that no longer appends fails them.
    document["plugin"]["config"] = entry["config"]
    cases_file.write_text(yaml.safe_dump(document))
    assert run_cases(plugin_dir / "scripted.wasm", cases_file).ok
    changed = dict(
        outputs,
        process_request_headers={
            "headers": {"set": [{"name": "x-tier", "value": "gold"}]},
            "dynamic_metadata": {"tier": "gold"},
        },
    )
    document["plugin"]["config"] = scripted(plugin_dir, "tier", **changed)["config"]
    cases_file.write_text(yaml.safe_dump(document))
    report = run_cases(plugin_dir / "scripted.wasm", cases_file)
    assert [failure.problems for failure in report.failed] == [
        ("upstream.headers.x-seen: expected ['1', '2'], got '1'",)
    ]


def test_an_immediate_response_becomes_an_expected_status_and_body(
    tmp_path: Path, plugin_dir: Path, record: Any
) -> None:
    reply = {"immediate_response": {"status": 403, "details": "denied", "body": {"text": "no\n"}}}
    directory = record([scripted(plugin_dir, "gate", process_request_headers=reply)], [(request(), None)])
    done = replay_cli("cases", str(directory))
    assert done.returncode == 0, done.stderr
    (case,) = yaml.safe_load(done.stdout)["cases"]
    assert case["expect"] == {"immediate": True, "status": 403, "details": "denied", "response": {"body": "no\n"}}


def test_load_records_names_a_malformed_file(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    bad = tmp_path / "p" / "1.json"
    bad.write_text(json.dumps({"format": "extproc-record/1", "plugin": "p"}))
    with pytest.raises(RecordError, match=r"1\.json: malformed record"):
        load_records(tmp_path)


# --- comparison -------------------------------------------------------------------------------------


def test_a_difference_summary_names_headers_and_digests_but_no_values() -> None:
    recorded = PluginOutput(HeaderChanges(set=(("x-secret", "s3cret"),)), b"body one")
    replayed = PluginOutput(HeaderChanges(set=(("x-secret", "other"),)), b"body two")
    found = differences(plain(recorded), plain(replayed))
    assert [difference.part for difference in found] == ["headers", "body"]
    summaries = " ".join(difference.summary for difference in found)
    assert "x-secret" in summaries and "sha256:" in summaries
    for value in ("s3cret", "other", "body one", "body two"):
        assert value not in summaries
    assert "'s3cret'" in found[0].detail


def test_immediate_responses_are_compared_field_by_field() -> None:
    found = differences(
        plain(PluginOutput(immediate=ImmediateReply(status=403, details="a"))),
        plain(PluginOutput(immediate=ImmediateReply(status=429, details="a"))),
    )
    assert found == [
        Difference(
            "immediate_response",
            "immediate response differs: status 403 -> 429",
            "immediate_response.status: expected 403, got 429",
        )
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(["--record-fraction", "0.5"], "--record-fraction: applies only with --record DIR", id="no-dir"),
        pytest.param(
            ["--record", "{tmp}", "--record-plugin", "tiers"],
            "no plugin is called 'tiers'; did you mean 'tier'?",
            id="unknown-plugin",
        ),
        pytest.param(
            ["--record", "{tmp}", "--record-fraction", "0"],
            "must be a number above 0 and at most 1",
            id="zero-fraction",
        ),
        pytest.param(
            ["--record", "{tmp}", "--record-max-mb", "-1"], "must be a positive integer, got '-1'", id="negative-cap"
        ),
    ],
)
def test_bad_record_options_are_refused_before_serving(
    tmp_path: Path, plugin_dir: Path, flags: list[str], message: str
) -> None:
    config = tmp_path / "extproc.yaml"
    config.write_text(json.dumps({"plugins": [scripted(plugin_dir, "tier", process_request_headers={})]}))
    argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--listen", "127.0.0.1:0"]
    done = subprocess.run(
        [*argv, *(flag.format(tmp=tmp_path / "rec") for flag in flags)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert message in done.stderr


def test_workers_split_the_size_cap_between_them(tmp_path: Path, plugin_dir: Path) -> None:
    config = parse_config({"plugins": [scripted(plugin_dir, "tier", process_request_headers={})]}, tmp_path / "c.yaml")
    options = RecordOptions(tmp_path / "rec", max_bytes=100 * 1024 * 1024)
    supervisor = Supervisor(config, ListenAddress("127.0.0.1", 50051), 3, "info", None, options)
    assert supervisor.record == dataclasses.replace(options, max_bytes=100 * 1024 * 1024 // 3)
