"""`extproc serve --workers 2` behind one Envoy: both workers serve, a killed one is replaced."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from extproc.recording import load_records
from support.metrics import MetricKey, metric, scrape_metrics
from support.processes import ManagedProcess, free_port, wait_for_http_ready, wait_until

from .conftest import StackFactory
from .harness import Stack, request
from .test_operations import HEALTH_CHECKED

pytestmark = pytest.mark.e2e

WORKERS = 2


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free right now."""
    for _ in range(50):
        first = free_port()
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"found no {count} consecutive free ports")


def workers_cluster(first_port: int) -> dict[str, Any]:
    """One endpoint per worker, streams spread round robin, each endpoint health checked."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": first_port + i}}}}
        for i in range(WORKERS)
    ]
    return {
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": "extproc", "endpoints": [{"lb_endpoints": endpoints}]},
        **HEALTH_CHECKED,
    }


def per_worker(samples: dict[MetricKey, float], name: str) -> list[float]:
    return [metric(samples, name, worker=str(i)) for i in range(WORKERS)]


def worker_pids(stack: Stack) -> dict[int, list[int]]:
    """Worker index -> pids it has had, in start order (from the supervisor's log)."""
    pids: dict[int, list[int]] = {}
    for index, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", stack.server_log()):
        pids.setdefault(int(index), []).append(int(pid))
    return pids


def open_held_request(stack: Stack, request_id: str) -> http.client.HTTPConnection:
    """Send a POST's headers but not its body: its ext_proc stream stays open, waiting for the body."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.listen_port, timeout=30)
    conn.putrequest("POST", "/held")
    conn.putheader("content-length", "4")
    conn.putheader("x-request-id", request_id)
    conn.endheaders()
    return conn


def finish(conn: http.client.HTTPConnection) -> int | str:
    """Send the body and read the status; a connection Envoy dropped gives the error's name."""
    try:
        conn.send(b"ping")
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def test_two_workers_share_streams_and_survive_a_killed_worker(plugin_dir: Path, make_stack: StackFactory) -> None:
    first_port, admin = consecutive_free_ports(WORKERS), free_port()
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "config": {"suffix": "+w"}}
    config = json.dumps({"server": {"admin_listen": f"127.0.0.1:{admin}"}, "plugins": [plugin]})

    def server_cmd(config_path: Path, port: int) -> Sequence[str]:
        listen = ["--listen", f"127.0.0.1:{port}", "--workers", str(WORKERS)]
        return [sys.executable, "-m", "extproc", "serve", "--config", str(config_path), *listen]

    admin_url = f"http://127.0.0.1:{admin}"
    with make_stack(
        config, server_cmd=server_cmd, extproc_port=first_port, extproc_cluster=workers_cluster(first_port)
    ) as stack:
        wait_until(lambda: stack.envoy_stat("cluster.extproc.membership_healthy") == WORKERS, 30, "healthy workers")
        statuses = [request("POST", f"{stack.url}/spread", body=b"x").status for _ in range(10)]
        wait_until(lambda: sum(per_worker(scrape_metrics(admin_url), "extproc_active_streams")) == 0, 10, "idle")
        spread = per_worker(scrape_metrics(admin_url), "extproc_streams_total")

        # One held stream on each worker, then worker 1 dies under its stream.
        held = [open_held_request(stack, f"held-{i}") for i in range(WORKERS)]
        wait_until(
            lambda: per_worker(scrape_metrics(admin_url), "extproc_active_streams") == [1.0] * WORKERS,
            10,
            "one held stream per worker",
        )
        [victim] = worker_pids(stack)[1]
        checks_failed = stack.envoy_stat("cluster.extproc.health_check.failure")
        os.kill(victim, signal.SIGKILL)
        held_results = [finish(conn) for conn in held]

        failed_check = lambda: stack.envoy_stat("cluster.extproc.health_check.failure") > checks_failed  # noqa: E731
        wait_until(failed_check, 30, "Envoy's health check to notice the dead worker")
        wait_until(lambda: len(worker_pids(stack)[1]) == 2, 30, "worker 1 to be restarted")
        wait_until(lambda: request("GET", f"{admin_url}/readyz").status == 200, 30, "all workers ready")
        wait_until(lambda: stack.envoy_stat("cluster.extproc.membership_healthy") == WORKERS, 30, "healthy again")
        # Envoy routes to the replacement up to about a second after its health check passes; every request
        # meanwhile must still succeed, served by worker 0.
        after: list[int] = []

        def replacement_served() -> bool:
            after.append(request("POST", f"{stack.url}/after", body=b"x").status)
            return per_worker(scrape_metrics(admin_url), "extproc_streams_total")[1] > 0

        wait_until(replacement_served, 30, "a stream on the replacement worker")
        samples = scrape_metrics(admin_url)
        stack.server.check_running()

    assert statuses == [200] * 10
    # Round robin over two endpoints: the streams alternate between the workers.
    assert spread == [5.0, 5.0]
    # The stream on worker 0 finished normally; only the one on the killed worker failed.
    # (Envoy answers 500 for the broken stream: failure_mode_allow is off.)
    assert sorted(held_results, key=str) == [200, 500]
    assert after == [200] * len(after)
    assert metric(samples, "extproc_worker_restarts_total", worker="supervisor") == 1
    assert per_worker(samples, "extproc_worker_up") == [1.0] * WORKERS
    # The replacement's counters started at zero: the one stream it counts is new.
    assert per_worker(samples, "extproc_streams_total")[1] == 1


def test_each_worker_records_its_streams_within_its_share_of_the_cap(
    plugin_dir: Path, make_stack: StackFactory, tmp_path: Path
) -> None:
    first_port, recorded = consecutive_free_ports(WORKERS), tmp_path / "recorded"
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "config": {"suffix": "+w"}}
    config = json.dumps({"plugins": [plugin]})

    def server_cmd(config_path: Path, port: int) -> Sequence[str]:
        flags = ["--listen", f"127.0.0.1:{port}", "--workers", str(WORKERS), "--record", str(recorded)]
        return [sys.executable, "-m", "extproc", "serve", "--config", str(config_path), *flags]

    with make_stack(
        config, server_cmd=server_cmd, extproc_port=first_port, extproc_cluster=workers_cluster(first_port)
    ) as stack:
        wait_until(lambda: stack.envoy_stat("cluster.extproc.membership_healthy") == WORKERS, 30, "healthy workers")
        statuses = [
            request("POST", f"{stack.url}/recorded", [("x-request-id", f"r{i}")], body=b"x").status for i in range(10)
        ]
    # The stack has stopped: each worker wrote what it had queued before it exited.
    records = load_records(recorded, "t")
    log = stack.server_log()

    assert statuses == [200] * 10
    # Round robin: each worker served five exchanges and recorded their calls under its own pid.
    pids = {pid for pids in worker_pids(stack).values() for pid in pids}
    assert {int(record.path.name.split("-")[1]) for record in records} == pids, log
    request_ids = {json.loads(record.path.read_text())["request_id"] for record in records}
    assert request_ids == {f"r{i}" for i in range(10)}
    # Each worker wrote out its recording at shutdown.
    assert log.count(f"written to {recorded}") == WORKERS, log


def test_reload_through_the_supervisor_carries_the_admin_token(plugin_dir: Path, tmp_path: Path) -> None:
    token = "c2f0e1d9b8a7c6d5e4f3a2b1"
    (tmp_path / "admin.token").write_text(token + "\n")
    admin = free_port()
    config = tmp_path / "extproc.yaml"
    server = {"listen": f"127.0.0.1:{consecutive_free_ports(WORKERS)}", "admin_listen": f"127.0.0.1:{admin}"}
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm")}
    config.write_text(json.dumps({"server": {**server, "admin_token_file": "admin.token"}, "plugins": [plugin]}))
    argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--workers", str(WORKERS)]
    url = f"http://127.0.0.1:{admin}"
    with ManagedProcess("server", argv, tmp_path / "server.log") as process:
        wait_for_http_ready(f"{url}/readyz", 60, process=process)
        refused = request("POST", f"{url}/reload")
        # The supervisor passes the token on to each worker's own admin endpoint, which wants it too.
        reloaded = request("POST", f"{url}/reload", [("Authorization", f"Bearer {token}")])
    assert refused.status == 401
    assert (reloaded.status, reloaded.json()["message"]) == (200, f"reloaded {WORKERS} worker(s)"), process.log_text()
