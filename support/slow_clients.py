"""Clients that hold server resources without using them: idle ext_proc streams and stalled request bodies.

Used by the end-to-end tests and by the bench (bench/capacity.py), which hold them open while normal
load runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

_loop_lock = threading.Lock()
_client_loop: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop for the process's idle streams, never closed: grpc.aio binds its completion-queue
    poller to the first loop that uses it, and a later loop would get its events sent to a closed one."""
    global _client_loop
    with _loop_lock:
        if _client_loop is None:
            _client_loop = asyncio.new_event_loop()
            threading.Thread(target=_client_loop.run_forever, name="idle-streams", daemon=True).start()
        return _client_loop


@contextlib.contextmanager
def idle_streams(port: int, count: int) -> Iterator[None]:
    """`count` ext_proc streams opened straight at the server that send nothing (a client thread each
    would be the client's limit, not the server's, so they share one event loop)."""
    loop = _loop()
    ready = threading.Event()
    stop = threading.Event()

    async def hold() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ep_grpc.ExternalProcessorStub(channel)
            calls = [stub.Process() for _ in range(count)]
            # Every stream has been sent; the server may take a moment more to start its handlers.
            await asyncio.gather(*(call.wait_for_connection() for call in calls))
            ready.set()
            await loop.run_in_executor(None, stop.wait)
            for call in calls:
                call.cancel()
            # Let each call see its cancellation before the channel closes under it.
            await asyncio.gather(*(call.code() for call in calls), return_exceptions=True)

    held = asyncio.run_coroutine_threadsafe(hold(), loop)
    if not ready.wait(30):
        stop.set()
        why = held.exception() if held.done() else "not within 30 s"
        held.cancel()
        raise AssertionError(f"the idle streams did not open: {why}")
    try:
        yield
    finally:
        stop.set()
        held.result(30)


@contextlib.contextmanager
def stalled_bodies(port: int, count: int, prefix: str = "/stalled") -> Iterator[None]:
    """`count` clients that announce a 1 MB request body to paths under `prefix`, send 10 bytes of it,
    and wait."""
    sockets = []
    try:
        for index in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(client)
            head = f"POST {prefix}/{index} HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n"
            client.sendall(head.encode() + b"0123456789")
        yield
    finally:
        for client in sockets:
            client.close()
