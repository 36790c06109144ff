"""`extproc serve --workers N`: N server processes, so N cores serve streams despite the GIL.

Worker i listens on the listen port + i. One port per worker, rather than one shared SO_REUSEPORT
port, because Envoy multiplexes every stream over one HTTP/2 connection per cluster host and worker
thread: the kernel balances connections, not streams, so a shared port gives all streams to one worker.
With one port per worker, Envoy's cluster lists N endpoints and its load balancer spreads the streams
(docs/operations.md has the cluster settings and the measurements).

The supervisor (this module) starts the workers with the "spawn" method (grpcio must not be forked),
restarts a worker that dies, forwards SIGTERM so all of them drain, and serves the one admin endpoint:
it asks each worker's private admin endpoint (loopback, ephemeral port) and merges the answers, adding
a `worker` label to every metric.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from extproc import logs, metrics
from extproc.admin import AdminServer, auth_headers, registry_text
from extproc.config import Config, ListenAddress, load_config
from extproc.recording import Recorder, RecordOptions
from extproc.reload import ReloadResult

log = logging.getLogger("extproc.workers")

_PR_SET_PDEATHSIG: Final = 1
_PRIVATE_ADMIN: Final = ListenAddress("127.0.0.1", 0)
_ASK_TIMEOUT_S: Final = 5.0
# A worker that dies sooner than this after starting is crash-looping: wait before the next start.
_MIN_LIFETIME_S: Final = 2.0
_RESTART_DELAY_S: Final = 1.0
# Bounds how late the supervisor notices a stop signal while it waits on the workers.
_WAKE_S: Final = 0.5


def _worker_main(
    config_path: str,
    host: str,
    port: int,
    index: int,
    log_level: str,
    report: Connection,
    record: RecordOptions | None,
) -> None:
    """Entry point of a worker process."""
    from extproc.server import Server, serve  # the supervisor itself never starts a gRPC server

    _die_with_parent()
    config = load_config(Path(config_path))
    logs.configure(log_level, config.server.log_format, worker=index)

    def started(server: Server) -> None:
        assert server.admin is not None  # serve() was given an admin address
        report.send(server.admin.port)
        report.close()

    recorder = None if record is None else Recorder(record)
    serve(config, host, port, admin=_PRIVATE_ADMIN, on_started=started, recorder=recorder)


def _die_with_parent() -> None:
    """Have the kernel SIGTERM this worker when the supervisor dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Worker:
    index: int
    port: int
    process: BaseProcess
    report: Connection
    started_at: float
    admin_port: int | None = None

    def admin_url(self, path: str) -> str | None:
        if self.admin_port is None and self.report.poll():
            self.admin_port = self.report.recv()
        return None if self.admin_port is None else f"http://127.0.0.1:{self.admin_port}{path}"


class Supervisor:
    """Runs the workers and the shared admin endpoint; `run()` returns when all workers have stopped."""

    def __init__(
        self,
        config: Config,
        listen: ListenAddress,
        workers: int,
        log_level: str,
        admin: ListenAddress | None,
        record: RecordOptions | None = None,
    ) -> None:
        if listen.port == 0 or listen.port + workers - 1 > 65535:
            raise ValueError(f"--workers {workers} needs listen ports {listen.port}..{listen.port + workers - 1}")
        self.config = config
        self.listen = listen
        self.count = workers
        self.log_level = log_level
        # Each worker records its own streams into the one directory (file names carry the pid), each
        # up to its share of the size cap, so together they stay within it.
        self.record = (
            None if record is None else dataclasses.replace(record, max_bytes=max(1, record.max_bytes // workers))
        )
        self._spawn = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._stopping = threading.Event()
        token = config.server.admin_token
        self.admin = AdminServer(admin, self, reload=self.reload, token=token) if admin is not None else None

    # --- lifecycle --------------------------------------------------------------------------

    def _start(self, index: int) -> _Worker:
        receive, send = self._spawn.Pipe(duplex=False)
        port = self.listen.port + index
        process = self._spawn.Process(
            target=_worker_main,
            args=(str(self.config.source), self.listen.host, port, index, self.log_level, send, self.record),
            name=f"extproc-worker-{index}",
        )
        process.start()
        send.close()  # the worker holds the only writing end now
        log.info("worker %d started (pid %d) on %s", index, process.pid, ListenAddress(self.listen.host, port))
        return _Worker(index, port, process, receive, time.monotonic())

    def run(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGHUP:
                threading.Thread(target=self.reload, name="extproc-reload", daemon=True).start()
                return
            if self._stopping.is_set():
                self._signal_all(signal.SIGTERM)  # a second signal: workers cut their drain short
            self._stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
        with self._lock:
            self._workers = [self._start(index) for index in range(self.count)]
        if self.admin is not None:
            self.admin.start()
        while not self._stopping.is_set():
            with self._lock:
                sentinels = {worker.process.sentinel: worker for worker in self._workers}
            for sentinel in wait(list(sentinels), timeout=_WAKE_S):
                if not self._stopping.is_set():
                    self._replace(sentinels[sentinel])  # type: ignore[index]
        self._shutdown()

    def _replace(self, dead: _Worker) -> None:
        dead.process.join()
        log.error(
            "worker %d (pid %s) exited with code %s; restarting it",
            dead.index,
            dead.process.pid,
            dead.process.exitcode,
        )
        metrics.worker_restarted()
        if time.monotonic() - dead.started_at < _MIN_LIFETIME_S:
            self._stopping.wait(_RESTART_DELAY_S)
            if self._stopping.is_set():
                return
        fresh = self._start(dead.index)
        with self._lock:
            self._workers[dead.index] = fresh
        dead.report.close()

    def _signal_all(self, signum: int) -> None:
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # it exited since is_alive()
                    os.kill(worker.process.pid, signum)

    def _shutdown(self) -> None:
        log.info("stopping %d worker(s): each drains, then finishes its streams", self.count)
        self._signal_all(signal.SIGTERM)
        server = self.config.server
        deadline = time.monotonic() + (server.drain_ms + server.shutdown_grace_ms) / 1000 + 10
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                worker.process.join()
        if self.admin is not None:
            self.admin.stop()
        log.info("stopped")

    # --- admin backend: ask every worker ------------------------------------------------------

    def _ask(self, path: str, method: str = "GET") -> Iterator[tuple[_Worker, int, bytes]]:
        """(worker, HTTP status, body) of each worker; status 0 when it cannot answer (yet)."""
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            url = worker.admin_url(path)
            if url is None:
                yield worker, 0, b"starting"
                continue
            # The workers load the same config, so their endpoints want the same token.
            request = urllib.request.Request(url, method=method, headers=auth_headers(self.config.server.admin_token))
            try:
                with urllib.request.urlopen(request, timeout=_ASK_TIMEOUT_S) as response:
                    yield worker, response.status, response.read()
            except urllib.error.HTTPError as exc:
                yield worker, exc.code, exc.read()
            except OSError as exc:
                yield worker, 0, str(exc).encode()

    def metrics_text(self) -> bytes:
        merged = _MergedMetrics()
        merged.add("supervisor", registry_text())
        up = Metric("extproc_worker_up", "1 if the worker answered this scrape, 0 if not", "gauge")
        for worker, status, body in self._ask("/metrics"):
            if status == 200:
                merged.add(str(worker.index), body)
            else:
                log.warning("worker %d did not answer /metrics: %s %s", worker.index, status, _text(body))
            up.add_sample("extproc_worker_up", {"worker": str(worker.index)}, 1.0 if status == 200 else 0.0)
        merged.add_family(up)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(merged)
        return generate_latest(registry)

    def readiness(self) -> tuple[bool, str]:
        answers = list(self._ask("/readyz"))
        ready = all(status == 200 for _, status, _ in answers) and not self._stopping.is_set()
        return ready, "; ".join(f"worker {worker.index}: {_text(body)}" for worker, _, body in answers)

    def plugin_report(self) -> list[dict[str, Any]]:
        for _worker, status, body in self._ask("/plugins"):
            if status == 200:
                report: list[dict[str, Any]] = json.loads(body)["plugins"]
                return report
        return []

    def reload(self) -> ReloadResult:
        results = list(self._ask("/reload", method="POST"))
        failed = [f"worker {worker.index}: {_text(body)}" for worker, status, body in results if status != 200]
        hashes = {json.loads(body).get("config_hash", "") for _, status, body in results if status in (200, 422)}
        config_hash = hashes.pop() if len(hashes) == 1 else ""
        if failed:
            return ReloadResult(ok=False, message="; ".join(failed), config_hash=config_hash)
        return ReloadResult(ok=True, message=f"reloaded {len(results)} worker(s)", config_hash=config_hash)


def _text(body: bytes) -> str:
    return body.decode(errors="replace").strip()


class _MergedMetrics(Collector):
    """Families of several processes' exposition text as one, each sample labelled with its source."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, source: str, text: bytes) -> None:
        for family in text_string_to_metric_families(text.decode()):
            merged = self._families.get(family.name)
            if merged is None:
                merged = self._families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, "worker": source}))

    def add_family(self, family: Metric) -> None:
        self._families[family.name] = family

    def collect(self) -> Iterator[Metric]:
        yield from self._families.values()
