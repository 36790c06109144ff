"""`extproc demo`: every curl command it prints does what it says, and stopping it leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from extproc.config import load_config
from extproc.deploy import envoy_config as ec
from extproc.deploy.demo import ShowcaseRequest, load_showcase
from extproc.deploy.demo_bundle import SHOWCASE_FILE
from support.processes import REPO_ROOT, free_port

from .harness import request

pytestmark = pytest.mark.e2e

DEMO_CONFIG = REPO_ROOT / "envoy" / "demo" / "extproc.yaml"
_STARTUP_TIMEOUT_S = 60.0
_POLL_S = 0.05


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    output: Path
    admin_port: int
    listen_port: int

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = _STARTUP_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text(), re.MULTILINE)
            if found is not None:
                return found
            if self.process.poll() is not None:
                raise AssertionError(f"demo exited with {self.process.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the demo's output after {timeout}s:\n{self.text()}")
            time.sleep(_POLL_S)

    def envoy_pid(self) -> int:
        return int(self.wait_for(r"admin http://127\.0\.0\.1:\d+, pid (\d+)\)").group(1))

    def streams_started(self) -> int:
        query = urllib.parse.urlencode({"format": "json", "filter": f"^{ec.EXT_PROC_STATS}.streams_started$"})
        stats = request("GET", f"http://127.0.0.1:{self.admin_port}/stats?{query}").json()["stats"]
        return sum(int(entry["value"]) for entry in stats)


@contextlib.contextmanager
def running_demo(
    tmp_path: Path,
    command: Sequence[str] = (sys.executable, "-m", "extproc"),
    cwd: Path = REPO_ROOT,
    env: Mapping[str, str] | None = None,
) -> Iterator[Demo]:
    """`extproc demo` on free ports, run as `command` from `cwd`; killed on the way out if still running."""
    ports = {"--port": free_port(), "--admin-port": free_port(), "--server-port": free_port()}
    ports["--upstream-port"] = free_port()
    argv = [*command, "demo", *(str(x) for pair in ports.items() for x in pair)]
    output = tmp_path / "demo.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    demo = Demo(process, output, ports["--admin-port"], ports["--port"])
    try:
        demo.wait_for("^Live counts")
        yield demo
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        print(f"--- demo output ---\n{demo.text()}")


def printed_curls(text: str) -> list[tuple[str, list[str]]]:
    """(title, argv) of each curl command the demo printed, in order."""
    found = re.findall(r"^  # \d+\. (.+?): .*\n  (curl .*)$", text, re.MULTILINE)
    return [(title, shlex.split(command)) for title, command in found]


@dataclass(frozen=True)
class CurlResponse:
    status: int
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)


def run_curl(argv: list[str]) -> CurlResponse:
    result = subprocess.run(argv, capture_output=True, timeout=30, check=True)
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return CurlResponse(int(status_line.split()[1]), headers, body.decode("utf-8", errors="replace"))


def check(request: ShowcaseRequest, response: CurlResponse) -> None:
    expect = request.expect
    assert response.status == expect.status, (request.title, response)
    for name, value in expect.headers:
        assert response.header(name) == value, (request.title, name, response.headers)
    for text in expect.body_contains:
        assert text in response.body, (request.title, text, response.body)
    for text in expect.body_lacks:
        assert text not in response.body, (request.title, text, response.body)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while process_exists(pid):
        assert time.monotonic() < deadline, f"process {pid} still running {timeout}s after the demo stopped"
        time.sleep(_POLL_S)


def test_every_printed_curl_does_what_it_says(tmp_path: Path) -> None:
    config = load_config(DEMO_CONFIG)
    showcase = load_showcase(DEMO_CONFIG.parent / SHOWCASE_FILE, config)
    with running_demo(tmp_path) as demo:
        curls = printed_curls(demo.text())
        assert [title for title, _ in curls] == [r.title for r in showcase]
        for (_, argv), expected in zip(curls, showcase, strict=True):
            before = demo.streams_started()
            check(expected, run_curl(argv))
            # The bypass route must not open an ext_proc stream; the others open exactly one.
            assert demo.streams_started() - before == (1 if expected.expect.reaches_server else 0), expected.title
        plugins = [spec.name for spec in config.plugins if spec.enabled]
        # Every plugin was called, and the live line says so (it is printed within a second of a change).
        counts = r"plugin calls: " + " ".join(rf"{name}=[1-9]\d*" for name in plugins)
        streams = sum(1 for r in showcase if r.expect.reaches_server)
        bypassed = len(showcase) - streams
        demo.wait_for(counts + rf" \| ext_proc streams: {streams} \| bypassed ext_proc: {bypassed}$")
        envoy_pid = demo.envoy_pid()

        demo.process.send_signal(signal.SIGINT)
        assert demo.process.wait(timeout=30) == 0
        assert demo.text().rstrip().endswith("stopped")
        wait_gone(envoy_pid)
        for port in (demo.listen_port, demo.admin_port):
            with pytest.raises(OSError):
                request("GET", f"http://127.0.0.1:{port}/", timeout=2)


def test_envoy_dies_with_a_killed_demo(tmp_path: Path) -> None:
    with running_demo(tmp_path) as demo:
        envoy_pid = demo.envoy_pid()
        demo.process.kill()
        demo.process.wait()
        wait_gone(envoy_pid)


def test_taken_port_is_reported() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "extproc", "demo", "--admin-port", str(port), "--port", str(free_port())],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"port {port} (admin) is taken" in result.stderr
    assert "--admin-port" in result.stderr
